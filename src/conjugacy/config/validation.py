"""The config schema, and the bounds and validation every config and option set goes through.

One place decides what a valid config is, so the workflow (at parse time,
before any job) and the command line give the same messages. The config
package imports only the standard library, PyYAML and jsonschema: the
Snakefile imports it before any job environment exists.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml


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
def cached_schema() -> dict[str, Any]:
    text = resources.files("conjugacy.config").joinpath("schema.yaml").read_text()
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def schema() -> dict[str, Any]:
    """The JSON schema (also linked as workflow/schemas/config.schema.yaml); a fresh copy."""
    return copy.deepcopy(cached_schema())


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


def config_label(path: str) -> str:
    return f"config key {path or '<top level>'}"


def check_values(raw: Any, label: Callable[[str], str] = config_label, what: str = "config"):
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


def plain(value: Any) -> Any:
    """A copy that shares nothing (tuples become lists); call after check_values bounded it."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
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


def validate(
    instance: Any,
    sch: dict[str, Any],
    root: dict[str, Any],
    prefix: list,
    label: Callable[[str], str] = config_label,
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


def deref(sch: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in sch:
        sch = root["$defs"][sch["$ref"].rsplit("/", 1)[-1]]
    return sch


def fill_defaults(instance: dict[str, Any], sch: dict[str, Any], root: dict[str, Any]) -> None:
    """Insert schema defaults for absent keys, recursing into nested objects."""
    for name, prop in deref(sch, root).get("properties", {}).items():
        if name not in instance and "default" in prop:
            instance[name] = copy.deepcopy(prop["default"])
        target = deref(prop, root)
        if isinstance(instance.get(name), dict) and "properties" in target:
            fill_defaults(instance[name], target, root)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping, read within bounds (size, nodes after alias expansion)."""
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
    return raw


# Where each stage's settings live in the schema: the one place of their defaults.
SECTIONS: dict[str, tuple[str, ...]] = {
    "koopman": ("$defs", "koopman"),
    "compare": ("properties", "compare"),
    "prune": ("properties", "prune"),
    "monitor": ("properties", "monitor"),
    "sensitivity": ("properties", "sensitivity"),
    "predict": ("properties", "predict"),
    "accelerate": ("properties", "predict", "properties", "accelerate"),
}


def section_schema(section: str) -> dict[str, Any]:
    """The schema of a stage's settings (a config section)."""
    sch = cached_schema()
    for key in SECTIONS[section]:
        sch = sch[key]
    return sch


def defaults(section: str) -> dict[str, Any]:
    """The schema's default of every setting of a section that has one (a fresh copy)."""
    props = section_schema(section)["properties"]
    return {k: copy.deepcopy(v["default"]) for k, v in props.items() if "default" in v}


def settings(
    section: str, given: dict[str, Any], label: Callable[[str], str] = config_label
) -> dict[str, Any]:
    """A stage's settings: the schema defaults overridden by `given`, checked against the schema.

    What a command builds its options from, whether `given` is the section the
    workflow passes (--settings) or the flags typed on the command line.
    """
    check_values(given, label, what="the settings")
    merged = {**defaults(section), **plain(given)}
    sch = {k: v for k, v in section_schema(section).items() if k != "required"}
    validate(merged, sch, cached_schema(), [], label)
    return merged
