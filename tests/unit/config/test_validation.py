"""Bad input is rejected in one line, before any work: YAML bombs, and the verdict options.

The verdict options (alpha, max_ratio, permutations, correction, pairs) have
one check, config.check_verdict_options, driven by the schema's `compare`
section: the config, the `compare` and `windows` commands and compare.run /
windows.run all call it.
"""

from __future__ import annotations

import inspect
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from conjugacy import cli, config
from conjugacy.cli import main
from conjugacy.config import ConfigError
from conjugacy.verdict import compare, windows

# --- YAML alias bombs and other unbounded input ---------------------------------------------


def bomb(levels: int = 9, width: int = 9) -> str:
    """A flow list of `levels` nested anchors, each `width` aliases of the one below."""
    expr = "&a0 [" + ", ".join(["1"] * width) + "]"
    for k in range(1, levels):
        expr = f"&a{k} [{expr}, " + ", ".join([f"*a{k - 1}"] * (width - 1)) + "]"
    return expr


def laughs(levels: int = 9, width: int = 9) -> str:
    """The classic form: one top-level anchor per level, the last used as a string value."""
    lines = ["a0: &a0 [" + ",".join(["1"] * width) + "]"]
    for k in range(1, levels):
        lines.append(f"a{k}: &a{k} [" + ",".join([f"*a{k - 1}"] * width) + "]")
    return "\n".join([*lines, f"experiment: *a{levels - 1}", "conditions: {x: {system: omd}}", ""])


BOMBS = {
    "experiment": f"experiment: {bomb()}\nconditions: {{x: {{system: omd}}}}\n",
    "lr": f"experiment: e\nconditions:\n  x:\n    system: omd\n    lr: {bomb()}\n",
    "top-level anchors": laughs(),
}


def measured(fn):
    """(exception raised by fn, seconds, peak traced bytes)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 (the test asserts on it)
        raised = exc
    else:
        raised = None
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return raised, seconds, peak


@pytest.mark.parametrize("where", list(BOMBS))
def test_alias_bomb_file_is_rejected_fast_and_small(tmp_path, where):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMBS[where])
    assert path.stat().st_size < 600  # a few hundred bytes ...
    config.schema()  # (parsed once, outside the measurement)
    raised, seconds, peak = measured(lambda: config.load(path))
    assert isinstance(raised, ConfigError), raised
    assert str(raised) == (
        f"config file {path}: too many YAML nodes (alias expansion?): more than 100000"
    )
    assert seconds < 2 and peak < 50e6 and len(str(raised)) < 300, (seconds, peak)


@pytest.mark.parametrize("where", list(BOMBS))
def test_alias_bomb_already_loaded_is_rejected_by_resolve(where):
    """The workflow hands resolve() what Snakemake loaded: resolve bounds it on its own."""
    raw = yaml.safe_load(BOMBS[where])  # shared lists: cheap until someone walks them
    config.schema()
    raised, seconds, peak = measured(lambda: config.resolve(raw))
    assert isinstance(raised, ConfigError), raised
    assert str(raised) == "config holds more than 100000 values (YAML alias expansion?)"
    assert seconds < 2 and peak < 50e6, (seconds, peak)


def test_a_bomb_below_the_limit_is_quoted_short():
    """9**4 values: under the node limit, rejected by the schema with an 80-character quote."""
    raw = yaml.safe_load(f"experiment: e\nconditions:\n  x:\n    system: omd\n    lr: {bomb(4)}\n")
    with pytest.raises(ConfigError) as err:
        config.resolve(raw)
    message = str(err.value)
    assert message.startswith("config key conditions.x.lr: [[[[1, 1, 1, 1, 1, 1,")
    assert message.endswith("... is not of type 'number'") and len(message) < 200, message


def test_recursive_alias_is_rejected(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("experiment: &e [*e]\nconditions: {x: {system: omd}}\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(err.value) == (
        f"config file {path}: too many YAML nodes (alias expansion?): "
        "an alias refers to a node that contains it"
    )


def test_self_containing_value_is_rejected():
    raw = {"experiment": "e", "conditions": {"x": {"system": "omd"}}}
    loop: list = []
    loop.append(loop)
    raw["conditions"]["x"]["domain"] = loop
    with pytest.raises(ConfigError) as err:
        config.resolve(raw)
    assert str(err.value) == "config key conditions.x.domain.0: the value contains itself"


def test_deep_nesting_is_rejected():
    value: list = [1]
    for _ in range(40):
        value = [value]
    with pytest.raises(ConfigError, match=r"^config key conditions\.x\.lr(\.0)+: nested more"):
        config.resolve({"experiment": "e", "conditions": {"x": {"system": "omd", "lr": value}}})


def test_long_string_is_quoted_short(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(f"experiment: {'x' * 100_000}\nconditions: {{x: {{system: omd}}}}\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(err.value) == f"config key experiment: '{'x' * 79}... is too long"


def test_duplicate_key_is_rejected(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("experiment: e\nconditions:\n  a: {system: omd}\n  a: {system: ogd}\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(err.value) == (
        f"config file {path}: not valid YAML (line 4, column 3): "
        "key 'a' appears twice in one mapping"
    )


def test_merge_keys_still_override(tmp_path):
    """'<<' merges are not duplicate keys: the mapping's own keys override the merged ones."""
    path = tmp_path / "merge.yaml"
    path.write_text(
        "experiment: e\nconditions:\n  c: &b {system: omd, steps: 30}\n  a: {<<: *b, steps: 40}\n"
    )
    cfg = config.load(path)
    assert cfg["conditions"]["a"]["steps"] == 40 and cfg["conditions"]["c"]["steps"] == 30


def test_invalid_yaml_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("experiment: e\nconditions: [\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"config file {path}: not valid YAML (line 3, column 1): ")


def test_oversized_file_is_rejected_unread(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * config.validation.MAX_BYTES + "\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    limit = config.validation.MAX_BYTES
    assert str(err.value) == f"config file {path}: {limit + 3} bytes; expected at most {limit}"


# --- the verdict options: one check -----------------------------------------------------------

COMPARE = config.schema()["properties"]["compare"]["properties"]
KEYS = ("alpha", "max_ratio", "permutations", "correction", "bootstrap", "bootstrap_seed")
DEFAULTS = {k: COMPARE[k]["default"] for k in KEYS}

# (argv after the command, the error after "option ")
BAD_OPTIONS = [
    (
        ["--alpha", "2", "--max-ratio", "0"],
        "--alpha: 2.0 is greater than or equal to the maximum of 1",
    ),
    (["--max-ratio", "0"], "--max-ratio: 0.0 is less than the minimum of 1"),
    (["--max-ratio", "inf"], "--max-ratio: inf is not a finite number"),
    (["--alpha", "nan"], "--alpha: nan is not a finite number"),
    (["--alpha", "0"], "--alpha: 0.0 is less than or equal to the minimum of 0"),
    (["--permutations", "0"], "--permutations: 0 is less than the minimum of 99"),
    (
        ["--correction", "sidak"],
        "--correction: 'sidak' is not one of ['holm', 'bonferroni', 'none']",
    ),
    (["--bootstrap", "10"], "--bootstrap: 10 is less than the minimum of 99"),
    (["--bootstrap-seed", "-1"], "--bootstrap-seed: -1 is less than the minimum of 0"),
]
BAD_PAIRS = [
    (["--pair", "omd:omd"], "--pair: condition 'omd' is paired with itself"),
    (["--pair", "..:omd"], "--pair: '..' does not match '^[A-Za-z0-9][A-Za-z0-9_-]*$'"),
    (["--pair", "omd:-x"], "--pair: '-x' does not match '^[A-Za-z0-9][A-Za-z0-9_-]*$'"),
    (["--pair", "omd:"], "--pair: '' does not match '^[A-Za-z0-9][A-Za-z0-9_-]*$'"),
    (["--pair", "a:b:c"], "--pair: ['a', 'b', 'c'] is too long"),
    (
        ["--pair", "a:b", "--pair", "b:a"],
        "--pair: 'b' and 'a' are paired twice; expected each pair once",
    ),
]


def run_cli(capsys, argv):
    code = main(argv)
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(("extra", "message"), BAD_OPTIONS + BAD_PAIRS)
def test_compare_rejects_options_before_reading_stores(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    # the spectrum does not exist: the options are checked before any store is opened
    code, err = run_cli(capsys, ["compare", str(tmp_path / "none.zarr"), "-o", str(out), *extra])
    assert code == 2
    assert err == f"conjugacy compare: error: option {message}"
    assert not out.exists()


@pytest.mark.parametrize(("extra", "message"), BAD_OPTIONS)
def test_windows_rejects_options_before_reading_stores(tmp_path, capsys, extra, message):
    out, figs = tmp_path / "out", tmp_path / "figs"
    argv = ["windows", str(tmp_path / "none.zarr"), "-o", str(out), "--figures", str(figs)]
    code, err = run_cli(capsys, [*argv, *extra])
    assert code == 2
    assert err == f"conjugacy windows: error: option {message}"
    assert not out.exists() and not figs.exists()


@pytest.mark.parametrize("command", ["compare", "windows"])
def test_cli_defaults_are_the_schema_defaults(command):
    args = cli.parser().parse_args([command, "s.zarr", "-o", "out"])
    assert all(getattr(args, k) is None for k in DEFAULTS)  # nothing typed: the schema decides
    resolved = {**config.validation.defaults("compare"), **cli._verdict_settings(args)}
    assert {k: resolved[k] for k in DEFAULTS} == DEFAULTS
    # defaults live in the schema only
    source = inspect.getsource(cli._verdict_options)
    for literal in ("0.05", "1.5", "9999", '"holm"', "'holm'", "2000"):
        assert literal not in source


@pytest.mark.parametrize(("extra", "message"), BAD_OPTIONS + BAD_PAIRS)
def test_config_compare_section_gives_the_same_verdict(extra, message):
    """The config's compare section fails on the same values, named as config keys."""
    args = cli.parser().parse_args(["compare", "s.zarr", "-o", "out", *extra])
    section = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None}
    if args.pair:
        section["pairs"] = [list(p) for p in args.pair]
    raw = {
        "experiment": "e",
        "conditions": {n: {"system": "omd"} for n in ("omd", "a", "b")},
        "compare": section,
    }
    option = message.split(":")[0].removeprefix("--")
    key = "pairs" if option == "pair" else option.replace("-", "_")
    with pytest.raises(ConfigError) as err:
        config.resolve(raw)
    text = str(err.value)
    assert text.startswith(f"config key compare.{key}")
    assert text.split(": ", 1)[1] == message.split(": ", 1)[1]


def test_check_verdict_options_accepts_the_defaults_and_defined_pairs():
    config.check_verdict_options(DEFAULTS, config.option_label)
    config.check_verdict_options(
        {**DEFAULTS, "pairs": [("a", "b"), ("b", "c")]}, config.option_label, ["a", "b", "c"]
    )


def test_check_verdict_options_pair_not_among_conditions():
    with pytest.raises(ConfigError) as err:
        config.check_verdict_options({"pairs": [("a", "z")]}, config.option_label, ["a", "b"])
    assert str(err.value) == (
        "option --pair: condition 'z' is not defined; expected one of ['a', 'b']"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": 1.0}, "compare.alpha: 1.0 is greater than or equal to the maximum of 1"),
        ({"max_ratio": 0.5}, "compare.max_ratio: 0.5 is less than the minimum of 1"),
        ({"permutations": 0}, "compare.permutations: 0 is less than the minimum of 99"),
        ({"permutations": 999.0}, "compare.permutations: 999.0 is not of type 'integer'"),
        ({"correction": "sidak"}, "compare.correction: 'sidak' is not one of"),
        ({"bootstrap": 98}, "compare.bootstrap: 98 is less than the minimum of 99"),
        ({"bootstrap_seed": 0.5}, "compare.bootstrap_seed: 0.5 is not of type 'integer'"),
        ({"alpha": float("nan")}, "compare.alpha: nan is not a finite number"),
        ({"pairs": [("x", "x")]}, "compare.pairs.0: condition 'x' is paired with itself"),
    ],
)
def test_compare_run_checks_before_reading(tmp_path, options, message):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        compare.write_verdicts([tmp_path / "none.zarr"], out, **options)
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": 0}, "compare.alpha: 0 is less than or equal to the minimum of 0"),
        ({"max_ratio": float("inf")}, "compare.max_ratio: inf is not a finite number"),
        ({"permutations": 10}, "compare.permutations: 10 is less than the minimum of 99"),
        ({"bootstrap": 0}, "compare.bootstrap: 0 is less than the minimum of 99"),
    ],
)
def test_windows_run_checks_before_reading(tmp_path, options, message):
    out, figs = tmp_path / "out", tmp_path / "figs"
    with pytest.raises(ConfigError) as err:
        windows.write_windows([tmp_path / "none.zarr"], out, **options)
    assert str(err.value) == message
    assert not out.exists() and not figs.exists()


def spectrum(path: Path, condition: str, seed: int) -> None:
    eig = np.array([0.9, 0.5 + 0.3j, 0.5 - 0.3j]) + 0.01 * seed
    xr.Dataset(
        {"eigenvalues": ("mode", eig)}, attrs={"condition": condition, "seed": seed}
    ).to_zarr(path, zarr_format=3, consolidated=False)


def test_compare_pair_without_spectra_fails_before_w(tmp_path, capsys):
    paths = []
    for cond in ("a", "b"):
        for seed in range(2):
            paths.append(tmp_path / f"{cond}{seed}.zarr")
            spectrum(paths[-1], cond, seed)
    out = tmp_path / "out"
    code, err = run_cli(capsys, ["compare", *map(str, paths), "-o", str(out), "--pair", "a:c"])
    assert code == 2
    assert err == (
        "conjugacy compare: error: compare.pairs.0: condition 'c' is not among the spectra; "
        "expected one of ['a', 'b']"
    )
    assert not out.exists()
