"""Exceptions raised by :mod:`gated_attention.data`.

Both derive from :class:`ValueError` so that callers which already treat bad configuration as a
``ValueError`` (argument parsers, config validation) report data problems the same way.
"""

from __future__ import annotations


class DataError(ValueError):
    """A data input is missing, empty, malformed or too small for the requested use."""


class CorpusError(DataError):
    """A corpus source could not be fetched or extracted."""
