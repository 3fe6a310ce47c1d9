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
