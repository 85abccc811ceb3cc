"""Error types that carry one clear, user-facing line (file, field, problem)."""


class TournamentError(Exception):
    """Base class: bad input found before any compute starts."""


class ConfigError(TournamentError, ValueError):
    """The tournament configuration is invalid (names the file, key and problem)."""


class DataError(TournamentError, ValueError):
    """The returns/prices input is invalid (names the file, column/date and problem)."""


def unknown_name(kind: str, name: str, valid) -> str:
    return f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}"
