"""Configuration: the schema, the checks and the resolution of an experiment config.

`load` and `resolve` turn a YAML config into one where every condition
carries all its settings; the checks are shared with the commands, which
validate their options the same way. Standard library, PyYAML and
jsonschema only: the Snakefile imports this before any job environment exists.
"""

from conjugacy.config.checks import (
    KOOPMAN_KEYS,
    check_koopman,
    check_predict,
    check_verdict_options,
    check_windows,
    cond_inits,
    condition_pairs,
    external_paths,
    option_label,
    window_bounds,
)
from conjugacy.config.resolve import load, resolve, training_config, training_json
from conjugacy.config.validation import ConfigError, check_values, schema, short

__all__ = [
    "KOOPMAN_KEYS",
    "ConfigError",
    "check_koopman",
    "check_predict",
    "check_values",
    "check_verdict_options",
    "check_windows",
    "cond_inits",
    "condition_pairs",
    "external_paths",
    "load",
    "option_label",
    "resolve",
    "schema",
    "short",
    "training_config",
    "training_json",
    "window_bounds",
]
