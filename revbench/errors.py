"""Typed errors that the CLI turns into one-line messages (exit code 2)."""

from __future__ import annotations


class RevbenchError(Exception):
    """Base class: a fault in user input that deserves a one-line message, not a traceback."""


class ConfigError(RevbenchError, ValueError):
    """An impossible or unknown configuration (model, data, measurement)."""


class SuiteError(RevbenchError):
    """A suite file that cannot be loaded or validated."""


class ResultsError(RevbenchError):
    """A results folder or parquet file that cannot be read or written."""


class OutputError(RevbenchError):
    """Results could not be saved (disk full, folder gone or unwritable, in use by another
    run); rows written before it are intact and ``--resume`` finishes the suite."""


def failure_line(exc: BaseException) -> str:
    """The one line a failure leaves in a results row or a report: ``Type: message``'s last
    line, except for a pydantic validation error, whose last line is a help URL: its first
    error then, as ``field: message`` (the ConfigError a validator raised, when there is one)."""
    import traceback

    errors = getattr(exc, "errors", None)
    if type(exc).__module__.startswith("pydantic") and callable(errors):
        try:
            first = errors()[0]
        except Exception:  # not pydantic's errors() after all: the general rule below
            first = None
        if first:
            cause = (first.get("ctx") or {}).get("error")
            msg = str(cause) if isinstance(cause, Exception) else str(first.get("msg", ""))
            loc = ".".join(str(p) for p in first.get("loc", ()))
            return f"{type(exc).__name__}: {loc + ': ' if loc else ''}{msg}"
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
