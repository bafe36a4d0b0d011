"""Config validation and resolution: shipped configs resolve, bad ones name their key."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from conftest import REPO

from conjugacy import config
from conjugacy.config import ConfigError
from conjugacy.config.shapes import tensor_shapes

ROOT = REPO
CONFIGS = [
    ROOT / "config" / "config.yaml",
    *sorted((ROOT / "config" / "experiments").glob("*.yaml")),
]
KOOPMAN_DEFAULTS = {
    "observables": None,
    "delays": 0,
    "rank": "full",
    "window": None,
    "pca": None,
    "windows": None,
    "variant": "exact",
    "device": "cpu",
    "keep": None,
    "modes": False,
}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_resolve(path):
    try:
        cfg = config.load(path)
    except config.ConfigError as exc:
        if "data_dir" not in str(exc):
            raise
        # resnet_cifar.yaml needs CIFAR-10 on disk; tests/test_cifar.py resolves it on fake batches
        pytest.skip(f"{path.name} needs a dataset on disk: {exc}")
    assert cfg["conditions"]
    for name, cond in cfg["conditions"].items():
        assert set(cond["koopman"]) == set(config.KOOPMAN_KEYS), name
        assert cond["seeds"], name
        assert cond["steps"] >= 1, name
    for a, b in config.condition_pairs(cfg):
        assert a in cfg["conditions"] and b in cfg["conditions"]


def test_default_config_defaults_filled():
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg = config.load(ROOT / "config" / "config.yaml")
    conds = cfg["conditions"]
    # seeds inherited from the top level
    for cond in conds.values():
        assert cond["seeds"] == raw["seeds"]
    # per-condition koopman overrides merged over the top-level block
    assert conds["omd"]["koopman"] == {**KOOPMAN_DEFAULTS, "delays": 4}
    assert conds["fcn_h5"]["koopman"] == {**KOOPMAN_DEFAULTS, "delays": 64, "rank": 10}
    assert conds["fcn_h5"]["record_every"] == 1
    assert conds["fcn_h5"]["optimizer"] == "sgd"
    assert conds["omd"]["domain"] == [0.01, 1.0]
    assert conds["omd"]["grid"] == {"low": 0.1, "high": 0.9, "points": 5}
    assert conds["bisection"]["grid_a"]["points"] == 5
    assert cfg["compare"]["permutations"] == 9999
    # the raw dict is not modified in place
    assert "seeds" not in raw["conditions"]["omd"]


def test_minimal_config_defaults():
    cfg = config.resolve(
        {"experiment": "e", "conditions": {"n": {"system": "fcn"}, "m": {"system": "omd"}}}
    )
    n, m = cfg["conditions"]["n"], cfg["conditions"]["m"]
    assert n["record"] == ["fc2.weight"]
    assert n["hidden"] == 10 and n["inits"] == 10 and n["dataset"] == "digits"
    assert n["init_perturbation"] == 0.001 and n["device"] == "cpu" and n["bias"] is False
    assert n["koopman"] == KOOPMAN_DEFAULTS
    assert n["seeds"] == [0, 1, 2] == m["seeds"]
    assert m["lr"] == 0.01 and m["steps"] == 99 and m["jitter"] == 0.5
    assert cfg["compare"] == {
        "alpha": 0.05,
        "max_ratio": 1.5,
        "permutations": 9999,
        "correction": "holm",
        "bootstrap": 2000,
        "bootstrap_seed": 0,
    }
    assert config.condition_pairs(cfg) == [("n", "m")]


def test_condition_seeds_override_top_level():
    cfg = config.resolve(
        {
            "experiment": "e",
            "seeds": [4, 5],
            "conditions": {"a": {"system": "omd", "seeds": [7]}, "b": {"system": "ogd"}},
        }
    )
    assert cfg["conditions"]["a"]["seeds"] == [7]
    assert cfg["conditions"]["b"]["seeds"] == [4, 5]


def test_condition_koopman_overrides_only_its_own_keys():
    """A condition's koopman block overrides the keys it sets, and inherits the others."""
    cfg = config.resolve(
        {
            "experiment": "e",
            "koopman": {"rank": 3, "delays": 2},
            "conditions": {
                "a": {"system": "omd", "koopman": {"delays": 4}},
                "b": {"system": "omd"},
            },
        }
    )
    assert cfg["conditions"]["b"]["koopman"]["rank"] == 3
    assert cfg["conditions"]["b"]["koopman"]["delays"] == 2
    assert cfg["conditions"]["a"]["koopman"]["delays"] == 4
    assert cfg["conditions"]["a"]["koopman"]["rank"] == 3  # inherited, not reset to "full"


def base() -> dict:
    return {
        "experiment": "e",
        "seeds": [0, 1],
        "conditions": {
            "omd": {"system": "omd", "steps": 20, "koopman": {"delays": 4}},
            "fcn": {"system": "fcn", "hidden": 5, "steps": 20, "inits": 2},
        },
    }


def mutate(path: str, value) -> dict:
    """base() with the dotted path set to value (a missing leaf is created)."""
    cfg = base()
    *parents, leaf = path.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return cfg


def renamed(name) -> dict:
    """base() with condition omd renamed (names with dots do not fit mutate's paths)."""
    cfg = base()
    cfg["conditions"][name] = cfg["conditions"].pop("omd")
    return cfg


BAD = [
    # (id, config, substrings the message must contain)
    ("unknown top-level key", mutate("colour", 1), ["colour", "allowed keys", "experiment"]),
    (
        "unknown condition key",
        mutate("conditions.omd.learning_rate", 0.1),
        ["conditions.omd", "learning_rate", "allowed keys", "lr"],
    ),
    (
        "steps wrong type",
        mutate("conditions.omd.steps", "ten"),
        ["conditions.omd.steps", "integer"],
    ),
    ("negative lr", mutate("conditions.omd.lr", -0.1), ["conditions.omd.lr", "minimum of 0"]),
    ("zero lr", mutate("conditions.fcn.lr", 0), ["conditions.fcn.lr", "minimum of 0"]),
    ("unknown system", mutate("conditions.omd.system", "sgd"), ["conditions.omd.system", "omd"]),
    (
        "rank above lifted dim",
        mutate("conditions.omd.koopman", {"delays": 4, "rank": 11}),
        ["conditions.omd.koopman.rank", "lifted dimension 10", "at most 10"],
    ),
    (
        "rank above pairs",
        mutate("conditions.fcn.koopman", {"rank": 50}),
        # 2 inits x 20 pairs = 40 pairs < 50 values of fc2.weight (10 x 5)
        ["conditions.fcn.koopman.rank", "snapshot pairs 40", "at most 40"],
    ),
    (
        "delays not shorter than window",
        mutate("conditions.omd.koopman", {"delays": 4, "window": [0, 5]}),
        ["conditions.omd.koopman.delays", "holds 5", "delays <= 3"],
    ),
    (
        "window start >= stop",
        mutate("conditions.omd.koopman", {"window": [5, 5]}),
        ["conditions.omd.koopman.window", "start < stop"],
    ),
    (
        "window not two integers",
        mutate("conditions.omd.koopman", {"window": [5]}),
        ["conditions.omd.koopman.window"],
    ),
    (
        "record unknown tensor",
        mutate("conditions.fcn.record", ["fc3.weight"]),
        ["conditions.fcn.record", "fc3.weight", "fc1.weight", "fc2.weight"],
    ),
    (
        "bias tensor without bias",
        mutate("conditions.fcn.record", ["fc1.bias"]),
        ["conditions.fcn.record", "fc1.bias", "available"],
    ),
    (
        "observable not recorded",
        mutate("conditions.fcn.koopman", {"observables": ["fc1.weight"]}),
        ["conditions.fcn.koopman.observables", "fc1.weight", "available: ['fc2.weight']"],
    ),
    (
        "compare pair missing condition",
        mutate("compare", {"pairs": [["omd", "ogd"]]}),
        ["compare.pairs.0", "'ogd'", "expected one of ['fcn', 'omd']"],
    ),
    (
        "compare pair with itself",
        mutate("compare", {"pairs": [["omd", "omd"]]}),
        ["compare.pairs.0", "itself"],
    ),
    (
        "pca above observable dim",
        mutate("conditions.omd.koopman", {"delays": 0, "pca": 3}),
        ["conditions.omd.koopman.pca", "2 values", "at most 2"],
    ),
    (
        "grid low >= high",
        mutate("conditions.omd.grid", {"low": 0.9, "high": 0.1}),
        ["conditions.omd.grid", "low (0.9) must be below high (0.1)"],
    ),
    (
        "bisection grid_b low >= high",
        mutate("conditions.omd", {"system": "bisection", "grid_b": {"low": 1, "high": 1}}),
        ["conditions.omd.grid_b", "must be below high"],
    ),
    (
        "domain reversed",
        mutate("conditions.omd.domain", [0.9, 0.1]),
        ["conditions.omd.domain", "low < high"],
    ),
    (
        "cuda without a GPU",
        mutate("conditions.fcn", {"system": "fcn", "device": "cuda", "gpus": 0}),
        ["conditions.fcn.gpus", "device cuda needs at least 1"],
    ),
    ("negative gpus", mutate("conditions.fcn.gpus", -1), ["conditions.fcn.gpus", "minimum of 0"]),
    ("gpus on a toy", mutate("conditions.omd.gpus", 1), ["conditions.omd", "gpus", "allowed keys"]),
    ("negative seed", mutate("seeds", [0, -1]), ["seeds.1", "minimum of 0"]),
    (
        "negative condition seed",
        mutate("conditions.omd.seeds", [-2]),
        ["conditions.omd.seeds.0", "minimum of 0"],
    ),
    ("rank zero", mutate("koopman", {"rank": 0}), ["koopman.rank"]),
    ("alpha out of range", mutate("compare", {"alpha": 1.5}), ["compare.alpha", "maximum"]),
    ("missing system", mutate("conditions.omd", {"steps": 3}), ["conditions.omd", "system"]),
    ("missing experiment", {"conditions": {"a": {"system": "omd"}}}, ["'experiment'", "required"]),
    ("bad experiment name", mutate("experiment", "a b"), ["experiment", "does not match"]),
    # names are folder names: no '.', '..', leading '-', '/', or 65+ characters
    ("experiment ..", mutate("experiment", ".."), ["config key experiment: '..' does not match"]),
    ("experiment .", mutate("experiment", "."), ["config key experiment: '.' does not match"]),
    ("experiment /", mutate("experiment", "a/b"), ["config key experiment: 'a/b' does not match"]),
    ("experiment -x", mutate("experiment", "-x"), ["config key experiment: '-x' does not match"]),
    ("experiment long", mutate("experiment", "e" * 65), ["config key experiment:", "too long"]),
    ("condition ..", renamed(".."), ["config key conditions: '..' does not match"]),
    ("condition .", renamed("."), ["config key conditions: '.' does not match"]),
    ("condition a.b", renamed("a.b"), ["config key conditions: 'a.b' does not match"]),
    ("condition -x", renamed("-x"), ["config key conditions: '-x' does not match"]),
    ("condition empty", renamed(""), ["config key conditions: '' does not match"]),
    (
        "pair side ..",
        mutate("compare", {"pairs": [["omd", ".."]]}),
        ["config key compare.pairs.0.1: '..' does not match"],
    ),
    (
        "prune condition ..",
        mutate("prune", {"conditions": [".."]}),
        ["config key prune.conditions.0: '..' does not match"],
    ),
    (
        "pair repeated reversed",
        mutate("compare", {"pairs": [["omd", "fcn"], ["fcn", "omd"]]}),
        ["config key compare.pairs.1: 'fcn' and 'omd' are paired twice"],
    ),
    # seeds: 0 <= seed < 2**32 wherever a seed is set
    (
        "seed 2**32",
        mutate("seeds", [0, 2**32]),
        ["config key seeds.1: 4294967296 is greater than the maximum of 4294967295"],
    ),
    (
        "huge condition seed",
        mutate("conditions.fcn.seeds", [99999999999999999999999]),
        ["config key conditions.fcn.seeds.0: 99999999999999999999999 is greater than the max"],
    ),
    (
        "huge data seed",
        mutate("conditions.omd", {"system": "transformer", "data_seed": 2**40}),
        ["config key conditions.omd.data_seed", "maximum of 4294967295"],
    ),
    (
        "huge companion seed",
        mutate("conditions.omd", {"system": "transformer", "companion": {"seed": 2**32}}),
        ["config key conditions.omd.companion.seed", "maximum of 4294967295"],
    ),
    # integers are ints: 10.0 steps would reach range() and fail with a TypeError
    (
        "float steps",
        mutate("conditions.omd.steps", 10.0),
        ["config key conditions.omd.steps: 10.0 is not of type 'integer'"],
    ),
    ("non-string key", renamed(1), ["config key conditions: key 1 is not a string"]),
    # a koopman window past the recorded steps (omd records steps 0..20)
    (
        "koopman window past the steps",
        mutate("conditions.omd.koopman", {"window": [0, 500]}),
        [
            "config key conditions.omd.koopman.window: [0, 500) ends past the last recorded "
            "step 20; expected stop <= 21"
        ],
    ),
    (
        "koopman window past the steps, top level",
        mutate("koopman", {"window": [30, 40]}),
        ["conditions.omd.koopman.window: [30, 40) ends past the last recorded step 20"],
    ),
]


@pytest.mark.parametrize(("raw", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_names_key(raw, expected):
    before = copy.deepcopy(raw)
    with pytest.raises(ConfigError) as err:
        config.resolve(raw)
    message = str(err.value)
    for part in expected:
        assert part in message, (part, message)
    assert raw == before


def test_base_of_bad_configs_is_valid():
    """The table above fails because of each mutation, not because of the base."""
    cfg = config.resolve(base())
    assert set(cfg["conditions"]) == {"omd", "fcn"}


def test_load_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "none.yaml")


def test_load_non_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        config.load(path)


def test_workflow_schema_is_library_schema():
    workflow = ROOT / "workflow" / "schemas" / "config.schema.yaml"
    assert workflow.exists()
    assert yaml.safe_load(workflow.read_text()) == config.schema()
    library = ROOT / "src" / "conjugacy" / "config" / "schema.yaml"
    assert workflow.resolve() == library.resolve()


# --- values the schema's bounds cannot see --------------------------------------------------

NAN, INF = float("nan"), float("inf")
NON_FINITE = [
    ("conditions.fcn.lr", NAN, "config key conditions.fcn.lr: nan is not a finite number"),
    ("conditions.fcn.lr", INF, "config key conditions.fcn.lr: inf is not a finite number"),
    ("conditions.omd.jitter", NAN, "config key conditions.omd.jitter: nan is not a finite number"),
    ("compare.alpha", NAN, "config key compare.alpha: nan is not a finite number"),
    ("compare.max_ratio", INF, "config key compare.max_ratio: inf is not a finite number"),
    (
        "conditions.omd.domain",
        [0.01, -INF],
        "config key conditions.omd.domain.1: -inf is not a finite number",
    ),
    (
        "conditions.omd.grid",
        {"low": NAN, "high": 0.5},
        "config key conditions.omd.grid.low: nan is not a finite number",
    ),
    # found before the schema would complain about the unknown key
    ("conditions.omd.colour", NAN, "config key conditions.omd.colour: nan is not a finite number"),
]


@pytest.mark.parametrize(("path", "value", "message"), NON_FINITE, ids=lambda v: str(v))
def test_non_finite_values_are_rejected(path, value, message):
    with pytest.raises(ConfigError) as err:
        config.resolve(mutate(path, value))
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("yaml_value", "shown"), [(".nan", "nan"), (".NaN", "nan"), (".inf", "inf"), ("-.Inf", "-inf")]
)
def test_non_finite_yaml_floats_are_rejected(tmp_path, yaml_value, shown):
    path = tmp_path / "c.yaml"
    path.write_text(f"experiment: e\nconditions:\n  sgd:\n    system: fcn\n    lr: {yaml_value}\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(err.value) == f"config key conditions.sgd.lr: {shown} is not a finite number"


def test_seed_bounds_are_inclusive_below_2_to_the_32():
    cfg = config.resolve(mutate("seeds", [0, 2**32 - 1]))
    assert cfg["conditions"]["omd"]["seeds"] == [0, 2**32 - 1]


def test_huge_seed_in_a_yaml_file_names_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "experiment: e\nseeds: [99999999999999999999999]\nconditions: {a: {system: omd}}\n"
    )
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(err.value) == (
        "config key seeds.0: 99999999999999999999999 is greater than the maximum of 4294967295"
    )


def test_koopman_window_up_to_the_last_recorded_step_is_accepted():
    cfg = config.resolve(mutate("conditions.omd.koopman", {"delays": 4, "window": [0, 21]}))
    assert cfg["conditions"]["omd"]["koopman"]["window"] == [0, 21]


def test_koopman_window_past_the_last_recorded_step_with_record_every():
    """Steps 0, 5, ..., 20 are recorded: a window to 22 asks for steps that are not there."""
    raw = mutate("conditions.omd.record_every", 5)
    raw["conditions"]["omd"]["koopman"] = {"delays": 1, "window": [0, 22]}
    with pytest.raises(ConfigError) as err:
        config.resolve(raw)
    assert str(err.value) == (
        "config key conditions.omd.koopman.window: [0, 22) ends past the last recorded step 20; "
        "expected stop <= 21"
    )


def test_check_koopman_window_past_the_store_names_the_option():
    """The `koopman` command shares the check: its label names the option and the store."""
    with pytest.raises(ConfigError) as err:
        config.check_koopman(
            {"window": (5, 40)}, {"x": (2,)}, list(range(0, 30, 3)), 4, lambda k: f"option --{k}"
        )
    assert str(err.value) == (
        "option --window: [5, 40) ends past the last recorded step 27; expected stop <= 28"
    )


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate_apart_from_data_on_disk(path, monkeypatch):
    """Every shipped config passes the new name, seed, finiteness and window checks."""
    monkeypatch.setattr(config.checks, "_check_data_dir", lambda cond, key: None)
    cfg = config.load(path)
    names = [cfg["experiment"], *cfg["conditions"]]
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", n) for n in names)


# The data, and how seeds are grouped into jobs (scheduling, tuned to each data set's costs).
NOT_DESIGN = ("dataset", "data_dir", "seeds_per_job")


def test_fcn_width_fashion_is_the_width_design_on_fashion_mnist(monkeypatch):
    """The same design as fcn_width (784 -> h -> 10 on 28x28 images); validates without the data."""
    monkeypatch.setattr(config.checks, "_check_data_dir", lambda cond, key: None)
    fashion = config.load(ROOT / "config" / "experiments" / "fcn_width_fashion.yaml")
    digits = config.load(ROOT / "config" / "experiments" / "fcn_width.yaml")
    assert fashion["compare"] == digits["compare"]
    assert list(fashion["conditions"]) == ["fcn_h5", "fcn_h10", "fcn_h40"]
    for name, cond in fashion["conditions"].items():
        assert cond["dataset"] == "fashion_mnist"
        assert cond["data_dir"] == "/usr/share/datasets/fashion-mnist"
        assert len(cond["seeds"]) == 25 and cond["inits"] == 10 and cond["steps"] == 1000
        assert (cond["lr"], cond["batch_size"], cond["bias"]) == (0.1, 60, False)
        assert tensor_shapes(cond)["fc1.weight"] == (cond["hidden"], 784)
        assert cond["koopman"]["delays"] == 320 // cond["hidden"]  # 64 / 32 / 8
        assert cond["koopman"]["rank"] == 10
        assert cond["koopman"]["observables"] == ["fc2.weight"]
        same = {k: v for k, v in digits["conditions"][name].items() if k not in NOT_DESIGN}
        assert {k: cond[k] for k in same} == same
