"""Config validation and resolution: shipped configs resolve, bad ones name their key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from conjugacy import config
from conjugacy.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
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
    library = ROOT / "src" / "conjugacy" / "config.schema.yaml"
    assert workflow.resolve() == library.resolve()
