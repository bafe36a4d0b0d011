# Settings of the compare stage (rules in ../compare.smk); windows use the same.


def compare_settings():
    """The `compare` section, pairs resolved, for `conjugacy compare --settings` (one JSON word)."""
    pairs = [list(pair) for pair in condition_pairs(CONFIG)]
    return shell_json({**CONFIG["compare"], "pairs": pairs})


def windows_settings():
    """The `compare` section's test settings for `conjugacy windows --settings` (no pairs)."""
    return shell_json({k: v for k, v in CONFIG["compare"].items() if k != "pairs"})
