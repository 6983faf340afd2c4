"""Errors raised by `rllc.data`.

Every message names the file (or dataset) involved and says how to fix it.
The subclasses also derive from the matching built-in exception so callers
that catch `FileNotFoundError` or `ImportError` keep working.
"""

from __future__ import annotations


class DataError(ValueError):
    """Data that cannot be loaded or used as asked."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file or directory that does not exist."""


class CorpusUnavailableError(DataError, ImportError):
    """A built-in corpus whose source package is not installed."""
