"""Exceptions raised by :mod:`gated_attention.data`.

All derive from :class:`ValueError` so that callers which already treat bad configuration as a
``ValueError`` (argument parsers, config validation) report data problems the same way.
"""

from __future__ import annotations


class DataError(ValueError):
    """A data input is missing, empty, malformed or too small for the requested use."""


class CorpusError(DataError):
    """A corpus source could not be fetched or extracted."""


class EpochLimitError(DataError):
    """A run would read its training data more often than ``data.max_passes`` allows.

    Study runners let it through instead of recording one failed arm: every arm of the task
    would stop the same way."""
