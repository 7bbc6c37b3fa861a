"""User-facing errors: the CLI prints these as one paragraph and exits non-zero, without a traceback."""


class BenchError(Exception):
    """A problem the user can fix (bad config, missing data, unknown name)."""


class ConfigError(BenchError):
    pass


class DataError(BenchError):
    pass


def did_you_mean(name: str, allowed) -> str:
    import difflib

    allowed = sorted(allowed)
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"Allowed: {', '.join(allowed) or '(none)'}.{hint}"
