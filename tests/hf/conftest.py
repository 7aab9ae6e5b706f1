"""Fixtures for the Hugging Face tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The models here are tiny: intra-op threads only add synchronisation (on a busy machine a
    two-thread matmul of a (2, 24) input took milliseconds instead of microseconds)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
