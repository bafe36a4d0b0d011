"""Load, validate and resolve an experiment config.

One place decides what a valid config is, so the workflow (at parse time,
before any job) and the command line give the same messages. This module
imports only the standard library, PyYAML and jsonschema: the Snakefile
imports it before any job environment exists.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from conjugacy.systems.shapes import (
    CNN_LAST_LAYER,
    DATASET_FILES,
    recorded_snapshots,
    tensor_shapes,
)

KOOPMAN_KEYS = (
    "observables",
    "delays",
    "rank",
    "window",
    "pca",
    "windows",
    "variant",
    "device",
    "modes",
)


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and what was expected."""


# Bounds of what a config may hold, checked before anything else looks at it:
# a YAML alias bomb expands a few hundred bytes into billions of values.
MAX_BYTES = 1 << 20  # of a config file
MAX_VALUES = 100_000  # values (scalars and containers) after alias expansion
MAX_DEPTH = 32  # nesting of mappings and lists
SHORT = 80  # characters of a value quoted in a message


def _pieces(value: Any) -> Iterator[str]:
    """repr(value) piece by piece, lazily: a consumer that stops early never builds the rest."""
    if isinstance(value, dict):
        yield "{"
        for i, (k, v) in enumerate(value.items()):
            yield from (", " if i else "", *_pieces(k), ": ")
            yield from _pieces(v)
        yield "}"
    elif isinstance(value, list | tuple):
        yield "[" if isinstance(value, list) else "("
        for i, v in enumerate(value):
            yield ", " if i else ""
            yield from _pieces(v)
        yield "]" if isinstance(value, list) else ")"
    elif isinstance(value, str):
        yield repr(value[: SHORT + 1])[: -1 if len(value) > SHORT else None]
    elif isinstance(value, int) and value.bit_length() > 256:
        yield f"<an integer of {value.bit_length()} bits>"
    else:
        yield repr(value)[: SHORT + 1]


def short(value: Any) -> str:
    """repr of a value cut to its first SHORT characters and '...'; never the whole repr."""
    text = ""
    for piece in _pieces(value):
        text += piece
        if len(text) > SHORT:
            return f"{text[:SHORT]}..."
    return text


@functools.cache
def _schema() -> dict[str, Any]:
    text = resources.files("conjugacy").joinpath("config.schema.yaml").read_text()
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def schema() -> dict[str, Any]:
    """The JSON schema (also linked as workflow/schemas/config.schema.yaml); a fresh copy."""
    return copy.deepcopy(_schema())


class _TooBig(yaml.YAMLError):
    """A YAML document that expands to more than MAX_VALUES nodes, or refers to itself."""


def _node_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _expanded_nodes(root: yaml.Node) -> int:
    """Nodes of a composed document with every alias expanded, counted without expanding.

    Each distinct node is visited once (an alias is the same node object), so
    this is linear in the size of the file; a recursive alias counts as too many.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        i = id(node)
        if leaving:
            active.discard(i)
            sizes[i] = 1 + sum(sizes[id(c)] for c in _node_children(node))
            if sizes[i] > MAX_VALUES:
                raise _TooBig(f"more than {MAX_VALUES}")
            continue
        if i in sizes:
            continue
        if i in active:
            raise _TooBig("an alias refers to a node that contains it")
        active.add(i)
        stack.append((node, True))
        stack.extend((c, False) for c in _node_children(node))
    return sizes[id(root)]


def _duplicate_key(node: yaml.Node) -> yaml.Node | None:
    """The first key that a mapping of the document repeats (merge keys '<<' aside)."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, yaml.MappingNode):
            keys = set()
            for k, _ in n.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if (k.tag, k.value) in keys:
                        return k
                    keys.add((k.tag, k.value))
        stack.extend(_node_children(n))
    return None


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses a document expanding to more than MAX_VALUES nodes."""

    def construct_document(self, node: yaml.Node) -> Any:
        _expanded_nodes(node)
        dup = _duplicate_key(node)
        if dup is not None:
            raise yaml.MarkedYAMLError(
                problem=f"key {short(dup.value)} appears twice in one mapping",
                problem_mark=dup.start_mark,
            )
        return super().construct_document(node)


def load(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (bounded: size, nodes after alias expansion) and resolve it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(f"config file {path}: {size} bytes; expected at most {MAX_BYTES}")
    try:
        with path.open(encoding="utf-8") as fh:
            raw = yaml.load(fh, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader)
    except _TooBig as exc:
        raise ConfigError(
            f"config file {path}: too many YAML nodes (alias expansion?): {exc}"
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"config file {path}: not valid YAML{where}: {exc.problem}") from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: a 5000-digit int
        what = "nested too deeply" if isinstance(exc, RecursionError) else short(str(exc))
        raise ConfigError(f"config file {path}: not valid YAML: {what}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(raw).__name__}")
    return resolve(raw)


def _config_label(path: str) -> str:
    return f"config key {path or '<top level>'}"


def check_values(raw: Any, label: Callable[[str], str] = _config_label, what: str = "config"):
    """Bounds every value of a raw config (or option set) before it is validated or copied.

    At most MAX_VALUES values after YAML alias expansion (counted without
    expanding: a shared list is visited once), nested at most MAX_DEPTH deep,
    no container that contains itself, string keys, and no NaN or infinity
    anywhere. `label(dotted path)` names the offending key.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Any, tuple, bool]] = [(raw, (), False)]
    while stack:
        obj, path, leaving = stack.pop()
        if isinstance(obj, float) and not math.isfinite(obj):
            raise ConfigError(f"{label(_dotted(path))}: {obj} is not a finite number")
        if not isinstance(obj, dict | list | tuple):
            continue
        i = id(obj)
        items = list(obj.items()) if isinstance(obj, dict) else list(enumerate(obj))
        if leaving:
            active.discard(i)
            sizes[i] = 1 + sum(sizes.get(id(v), 1) for _, v in items)
            if sizes[i] > MAX_VALUES:
                raise ConfigError(
                    f"{what} holds more than {MAX_VALUES} values (YAML alias expansion?)"
                )
            continue
        if i in sizes:
            continue
        if i in active:
            raise ConfigError(f"{label(_dotted(path))}: the value contains itself")
        if len(path) >= MAX_DEPTH:
            raise ConfigError(f"{label(_dotted(path))}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(obj, dict):
            for k in obj:
                if not isinstance(k, str):
                    raise ConfigError(f"{label(_dotted(path))}: key {short(k)} is not a string")
        active.add(i)
        stack.append((obj, path, True))
        stack.extend((v, (*path, k), False) for k, v in reversed(items))


def _dotted(path: Iterable) -> str:
    return ".".join(str(p) for p in path)


def _plain(value: Any) -> Any:
    """A copy that shares nothing (tuples become lists); call after check_values bounded it."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# Draft 2020-12 counts 10.0 as an integer; the code downstream (range, shapes) does not.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool)
    ),
)


def _schema_message(err: jsonschema.ValidationError) -> str:
    """err.message with the value quoted short (it embeds the whole repr of the value)."""
    message = err.message
    if isinstance(err.instance, dict | list | str | int):
        full = repr(err.instance)  # bounded: check_values ran first
        if len(full) > SHORT:
            message = message.replace(full, short(err.instance))
    return message if len(message) <= 3 * SHORT else f"{message[: 3 * SHORT]}..."


def _validate(
    instance: Any,
    sch: dict[str, Any],
    root: dict[str, Any],
    prefix: list,
    label: Callable[[str], str] = _config_label,
) -> None:
    validator = _Validator({**sch, "$defs": root["$defs"]} if "$defs" not in sch else sch)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = label(_dotted(prefix + list(err.absolute_path)))
        message = _schema_message(err)
        if err.validator in ("oneOf", "anyOf") and "description" in err.schema:
            raise ConfigError(f"{where}: {message}; expected {err.schema['description']}")
        if err.validator == "additionalProperties":
            allowed = sorted(err.schema.get("properties", {}))
            raise ConfigError(f"{where}: {message}; allowed keys: {allowed}")
        raise ConfigError(f"{where}: {message}")


def _deref(sch: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in sch:
        sch = root["$defs"][sch["$ref"].rsplit("/", 1)[-1]]
    return sch


def _fill_defaults(instance: dict[str, Any], sch: dict[str, Any], root: dict[str, Any]) -> None:
    """Insert schema defaults for absent keys, recursing into nested objects."""
    for name, prop in _deref(sch, root).get("properties", {}).items():
        if name not in instance and "default" in prop:
            instance[name] = copy.deepcopy(prop["default"])
        target = _deref(prop, root)
        if isinstance(instance.get(name), dict) and "properties" in target:
            _fill_defaults(instance[name], target, root)


def resolve(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate a raw config and return it with defaults and per-condition settings resolved.

    Every condition in the result carries its own `seeds` and full `koopman`
    block, so a stage needs nothing but its condition's entry.
    """
    check_values(raw)  # before anything copies, dumps or quotes it
    root = _schema()
    cfg = _plain(raw)
    _validate(cfg, root, root, [])
    _fill_defaults(cfg, root, root)
    for name, cond in cfg["conditions"].items():
        sch = root["$defs"][cond["system"]]
        _validate(cond, sch, root, ["conditions", name])
        own_koopman = cond.pop("koopman", {})  # its keys override the experiment's, not defaults
        _fill_defaults(cond, sch, root)
        if cond["system"] == "cnn":  # the default observable: the architecture's last layer
            cond.setdefault("record", [CNN_LAST_LAYER[cond["arch"]]])
        cond.setdefault("seeds", list(cfg["seeds"]))
        cond["koopman"] = {**cfg["koopman"], **own_koopman}
        _check_condition(name, cond)
    check_verdict_options(
        cfg["compare"],
        lambda k: _config_label(f"compare.{k}" if k else "compare"),
        cfg["conditions"],
    )
    if "predict" in cfg:
        _check_predict(cfg)
    if "prune" in cfg:
        _check_prune(cfg)
    if "monitor" in cfg:
        _check_monitor(cfg)
    return cfg


def _section_condition(cfg: dict[str, Any], section: str, i: int, name: str) -> dict[str, Any]:
    """The condition a section (prune, monitor) names at index i, or a ConfigError."""
    cond = cfg["conditions"].get(name)
    if cond is None:
        raise ConfigError(
            f"config key {section}.conditions.{i}: condition {name!r} is not defined; "
            f"expected one of {sorted(cfg['conditions'])}"
        )
    return cond


def _check_prune(cfg: dict[str, Any]) -> None:
    """Pruned conditions are nets that record every parameter through the DMD window."""
    pr = cfg["prune"]
    for i, name in enumerate(pr["conditions"]):
        label = f"config key prune.conditions.{i}"
        cond = _section_condition(cfg, "prune", i, name)
        if cond["system"] != "fcn":
            raise ConfigError(f"{label}: {name!r} is a {cond['system']}; expected an fcn")
        missing = sorted(set(tensor_shapes(cond)) - set(cond["record"]))
        if missing:
            raise ConfigError(
                f"{label}: pruning rebuilds the nets, so {name!r} must record every "
                f"parameter; add {missing} to its record"
            )
        start, stop = pr["window"]
        inside = [s for s in recorded_snapshots(cond) if start <= s < stop]
        if not start < stop or len(inside) < 3:
            raise ConfigError(
                f"config key prune.window: [{start}, {stop}) holds {len(inside)} recorded "
                f"steps of {name!r} ({cond['steps']} steps); expected [start, stop) with at "
                "least 3"
            )
        if stop > cond["steps"]:
            raise ConfigError(
                f"config key prune.window: stop {stop} is past the {cond['steps']} steps of "
                f"{name!r}; the window must end before training does"
            )


def _check_monitor(cfg: dict[str, Any]) -> None:
    """Every monitored condition has a whole window and the DMD settings fit it."""
    mon = cfg["monitor"]
    if mon["window"] < mon["delays"] + 2:
        raise ConfigError(
            f"config key monitor.window: {mon['window']} snapshots; {mon['delays']} delays "
            f"need at least {mon['delays'] + 2}"
        )
    for i, name in enumerate(mon["conditions"]):
        cond = _section_condition(cfg, "monitor", i, name)
        steps = recorded_snapshots(cond)
        if mon["window"] > len(steps):
            raise ConfigError(
                f"config key monitor.window: {mon['window']} snapshots, but {name!r} records "
                f"{len(steps)}; expected at most {len(steps)}"
            )
        shapes = tensor_shapes(cond)
        if "record" in cond:
            shapes = {t: shapes[t] for t in cond["record"]}
        check_koopman(
            {k: mon[k] for k in ("observables", "delays", "rank")},
            shapes,
            steps[: mon["window"]],
            cond_inits(cond),
            label=lambda k, name=name: f"config key monitor.{k} ({name})",
        )


def _check_predict(cfg: dict[str, Any]) -> None:
    """The predict section names net conditions that record what the jumps need."""
    pred = cfg["predict"]
    for i, name in enumerate(pred["conditions"]):
        label = f"config key predict.conditions.{i}"
        cond = cfg["conditions"].get(name)
        if cond is None:
            raise ConfigError(
                f"{label}: condition {name!r} is not defined; expected one of "
                f"{sorted(cfg['conditions'])}"
            )
        if cond["system"] not in ("fcn", "mlp"):
            raise ConfigError(f"{label}: {name!r} is a {cond['system']}; expected fcn or mlp")
        check_predict(pred, cond, lambda k, name=name: f"config key predict.{k} ({name})")
    acc = pred["accelerate"]
    if acc["window"] > acc["k"] + 1:
        raise ConfigError(
            f"config key predict.accelerate.window: {acc['window']} snapshots, but k = "
            f"{acc['k']} optimizer steps between jumps give at most {acc['k'] + 1}"
        )


def check_predict(pred: dict[str, Any], cond: dict[str, Any], label: Callable[[str], str]) -> None:
    """Check a (start, windows, jumps) schedule against what a condition records.

    Shared by the config check and the `predict` command (before any data is read).
    """
    missing = sorted(set(tensor_shapes(cond)) - set(cond["record"]))
    if missing:
        raise ConfigError(
            f"{label('conditions')}: the jumps need every tensor recorded; add {missing} "
            "to its record"
        )
    if cond["record_every"] != 1:
        raise ConfigError(
            f"{label('conditions')}: record_every is {cond['record_every']}; the jumps need 1"
        )
    for key, low in (("windows", 2), ("jumps", 1)):
        bad = [v for v in pred[key] if v < low]
        if bad:
            raise ConfigError(f"{label(key)}: {bad[0]}; expected integers >= {low}")
    if pred["start"] < 0:
        raise ConfigError(f"{label('start')}: {pred['start']}; expected an integer >= 0")
    need = pred["start"] + max(pred["windows"]) - 1 + max(pred["jumps"])
    if need > cond["steps"]:
        raise ConfigError(
            f"{label('jumps')}: start {pred['start']} + window {max(pred['windows'])} - 1 + "
            f"jump {max(pred['jumps'])} = step {need}, past the {cond['steps']} steps trained; "
            f"expected start + window - 1 + jump <= {cond['steps']}"
        )


def condition_pairs(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """The condition pairs to test: the configured ones, or all pairs."""
    pairs = cfg["compare"].get("pairs")
    if pairs is None:
        names = list(cfg["conditions"])
        return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    return [(a, b) for a, b in pairs]


def option_label(key: str) -> str:
    """The command-line option of a verdict setting (alpha: --alpha, pairs.0: --pair)."""
    top = key.split(".", 1)[0]
    if not top:
        return "options"
    return f"option --{'pair' if top == 'pairs' else top.replace('_', '-')}"


def check_verdict_options(
    options: dict[str, Any],
    label: Callable[[str], str],
    conditions: Iterable[str] | None = None,
    defined: str = "defined",
) -> None:
    """Check the settings of a verdict: the config's `compare` section or the same options.

    One check for the config (config key compare.*), the `compare` and
    `windows` commands (option --alpha, ...) and compare.run/windows.run:
    alpha, max_ratio, permutations and correction against the bounds of the
    schema's `compare` section, no NaN or infinity, and each pair two
    different condition names, among `conditions` when given. `label(key)`
    names the offending setting (key is e.g. 'alpha' or 'pairs.0').
    """
    check_values(options, label, what="the verdict options")
    root = _schema()
    opts = _plain(options)
    _validate(opts, root["properties"]["compare"], root, [], label)
    names = None if conditions is None else sorted(set(conditions))
    seen: set[frozenset] = set()
    for i, (a, b) in enumerate(opts.get("pairs") or []):
        where = label(f"pairs.{i}")
        for side in (a, b):
            if names is not None and side not in names:
                raise ConfigError(
                    f"{where}: condition {side!r} is not {defined}; expected one of {names}"
                )
        if a == b:
            raise ConfigError(f"{where}: condition {a!r} is paired with itself")
        if frozenset((a, b)) in seen:
            raise ConfigError(f"{where}: {a!r} and {b!r} are paired twice; expected each pair once")
        seen.add(frozenset((a, b)))


def _check_condition(name: str, cond: dict[str, Any]) -> None:
    """Checks that need more than types: names, domains, and sizes of the DMD problem."""
    key = f"conditions.{name}"
    for grid_key in ("grid", "grid_a", "grid_b"):
        grid = cond.get(grid_key)
        if grid is not None and not grid["low"] < grid["high"]:
            raise ConfigError(
                f"config key {key}.{grid_key}: low ({grid['low']}) must be below high "
                f"({grid['high']})"
            )
    if "domain" in cond:
        low, high = cond["domain"]
        if not low < high:
            raise ConfigError(f"config key {key}.domain: expected [low, high] with low < high")
    if cond.get("device") == "cuda" and cond.get("gpus") == 0:
        raise ConfigError(f"config key {key}.gpus: device cuda needs at least 1 GPU, got 0")
    if cond["system"] in ("fcn", "cnn"):
        _check_data_dir(cond, key)
    if cond["system"] == "transformer":
        _check_transformer(cond, key)
    shapes = tensor_shapes(cond)
    if cond["system"] in ("fcn", "mlp", "transformer", "cnn"):
        for tensor in cond["record"]:
            if tensor not in shapes:
                raise ConfigError(
                    f"config key {key}.record: the model has no tensor {short(tensor)}; "
                    f"available: {sorted(shapes)}"
                )
        recorded = {t: shapes[t] for t in cond["record"]}
    else:
        recorded = shapes
    check_koopman(
        cond["koopman"],
        recorded,
        recorded_snapshots(cond),
        cond_inits(cond),
        label=lambda k: f"config key {key}.koopman.{k}",
    )
    if cond["koopman"].get("windows"):
        cond["koopman"]["windows"] = {"start": 0, **cond["koopman"]["windows"]}
        check_windows(
            cond["koopman"],
            recorded,
            recorded_snapshots(cond),
            cond_inits(cond),
            label=lambda k: f"config key {key}.koopman.{k}",
        )


def window_bounds(windows: dict[str, int]) -> list[tuple[int, int]]:
    """[start, stop) of each of the successive windows of a `koopman.windows` setting."""
    start, length = windows.get("start", 0), windows["length"]
    return [(start + k * length, start + (k + 1) * length) for k in range(windows["count"])]


def check_windows(
    kcfg: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    steps: list[int],
    inits: int,
    label: Callable[[str], str],
) -> None:
    """Every window of `kcfg['windows']` lies in the recorded steps and fits the DMD settings."""
    for k, (start, stop) in enumerate(window_bounds(kcfg["windows"])):
        if stop - 1 > steps[-1]:
            raise ConfigError(
                f"{label('windows')}: window {k} is [{start}, {stop}) but training records "
                f"steps up to {steps[-1]}; expected start + count * length <= {steps[-1] + 1}"
            )
        check_koopman(
            {**kcfg, "window": [start, stop]},
            shapes,
            steps,
            inits,
            label=lambda key, w=f"window {k}: [{start}, {stop})": f"{label(key)} ({w})",
        )


def _check_data_dir(cond: dict[str, Any], key: str) -> None:
    """A dataset read from files needs a data_dir that has them."""
    files = DATASET_FILES.get(cond["dataset"])
    if files is None:
        return
    data_dir = cond.get("data_dir")
    expected = f"expected a folder with {' and '.join(files)} (each may be .gz)"
    if not data_dir:
        raise ConfigError(
            f"config key {key}.data_dir: dataset {cond['dataset']} needs it; {expected}"
        )
    folder = Path(data_dir)
    shown = str(folder) if len(str(folder)) <= 3 * SHORT else short(str(folder))
    for name in files:
        try:
            found = (folder / name).is_file() or (folder / f"{name}.gz").is_file()
        except OSError:  # a name too long for the file system, say
            found = False
        if not found:
            raise ConfigError(f"config key {key}.data_dir: {shown} has no {name}; {expected}")


def _check_transformer(cond: dict[str, Any], key: str) -> None:
    """Head size and the constrained-norm run's settings."""
    if cond["d_model"] % cond["n_heads"]:
        raise ConfigError(
            f"config key {key}.n_heads: {cond['n_heads']} heads do not divide "
            f"d_model {cond['d_model']}; expected a divisor of it"
        )
    if cond["constrain_norm"] and cond["weight_decay"]:
        raise ConfigError(
            f"config key {key}.weight_decay: {cond['weight_decay']} with constrain_norm; "
            "expected 0 (the norm is held fixed, weight decay would fight the rescaling)"
        )


def cond_inits(cond: dict[str, Any]) -> int:
    """Number of trajectories (initial conditions) one seed of a condition records."""
    if cond["system"] in ("fcn", "mlp", "transformer", "cnn"):
        return cond["inits"]
    grid = cond.get("grid") or cond["grid_a"]
    return grid["points"] ** 2


def check_koopman(
    kcfg: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    steps: list[int],
    inits: int,
    label: Callable[[str], str],
) -> None:
    """Check Koopman settings against the recorded tensors, steps and inits.

    Shared by the config check and the `koopman` command, so a bad option
    fails before any data is read; `label(key)` names the offending setting.
    """
    observables = kcfg.get("observables") or sorted(shapes)
    for obs in observables:
        if obs not in shapes:
            raise ConfigError(
                f"{label('observables')}: no recorded tensor {short(obs)}; "
                f"available: {sorted(shapes)}"
            )
    window = kcfg.get("window")
    if window is not None:
        start, stop = window
        if not 0 <= start < stop:
            raise ConfigError(
                f"{label('window')}: [{start}, {stop}); expected [start, stop) with "
                "0 <= start < stop"
            )
        if steps and stop - 1 > steps[-1]:
            raise ConfigError(
                f"{label('window')}: [{start}, {stop}) ends past the last recorded step "
                f"{steps[-1]}; expected stop <= {steps[-1] + 1}"
            )
        steps = [s for s in steps if start <= s < stop]
    n_snap = len(steps)
    delays = kcfg.get("delays", 0)
    if delays + 2 > n_snap:
        raise ConfigError(
            f"{label('delays')}: {delays} delays need at least {delays + 2} snapshots, "
            f"but the window holds {n_snap}; expected delays <= {max(n_snap - 2, 0)}"
        )
    dim = sum(math.prod(shapes[o]) for o in observables)
    pca = kcfg.get("pca")
    if pca is not None and pca < 1:
        raise ConfigError(f"{label('pca')}: {pca} components; expected at least 1")
    if pca is not None:
        limit = min(dim, inits * n_snap)
        if pca > limit:
            raise ConfigError(
                f"{label('pca')}: {pca} components, but the observables have {dim} values "
                f"and {inits * n_snap} snapshots; expected at most {limit}"
            )
        dim = pca
    lifted = dim * (delays + 1)
    pairs = inits * (n_snap - delays - 1)
    rank = kcfg.get("rank", "full")
    if isinstance(rank, float) and not 0.0 < rank < 1.0:
        raise ConfigError(
            f"{label('rank')}: {rank} is not an energy fraction; expected a number in (0, 1) "
            "(e.g. 0.99), a positive integer, 'full' or 'gd'"
        )
    if isinstance(rank, str) and rank not in ("full", "gd"):
        raise ConfigError(
            f"{label('rank')}: unknown rule {rank!r}; expected a positive integer, 'full', "
            "'gd' or an energy fraction in (0, 1)"
        )
    if isinstance(rank, int) and rank > min(lifted, pairs):
        which = (
            f"the lifted dimension {lifted} ({dim} values x (delays {delays} + 1))"
            if lifted <= pairs
            else f"the number of snapshot pairs {pairs}"
        )
        raise ConfigError(
            f"{label('rank')}: {rank} is larger than {which}; "
            f"expected at most {min(lifted, pairs)} or 'full'"
        )


# Condition keys that do not change its trajectories (the seed is a wildcard;
# `gpus` is what the job requests, `device` decides where it computes).
NOT_TRAINING = ("koopman", "seeds", "gpus", "companion")


def training_config(cond: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved condition that decides its trajectories."""
    return {k: v for k, v in cond.items() if k not in NOT_TRAINING}


def training_json(cond: dict[str, Any]) -> str:
    """Canonical JSON of a condition's training settings: the train stage's cache key."""
    return json.dumps(training_config(cond), sort_keys=True, separators=(",", ":"))
