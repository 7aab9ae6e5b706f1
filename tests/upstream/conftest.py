"""Collection rules for the upstream ``transformers`` suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

# Stand-ins imported by the upstream files, not tests (their names start with `test_` because
# the upstream modules they replace do).
collect_ignore = ["stubs"]

# Upstream guard that only makes sense in suites that also include upstream's
# GenerationTesterMixin (tests/generation/test_utils.py, not in the sdist): it asserts that every
# tester of a model that can `generate` inherits that mixin. We cannot run the mixin, and
# inheriting our empty stand-in would only fake the check, so the guard is deselected (reported
# as "deselected" in the summary). Nothing else is deselected.
DESELECTED = ("test_generation_tester_mixin_inheritance",)

# Markers the upstream files (and `transformers.testing_utils`) put on tests; upstream registers
# them in its own conftest, which the sdist does not ship, and we run with --strict-markers.
UPSTREAM_MARKERS = {
    "accelerate_tests": "upstream: needs accelerate (and usually an accelerator)",
    "flash_attn_test": "upstream: FlashAttention 2",
    "flash_attn_3_test": "upstream: FlashAttention 3",
    "flash_attn_4_test": "upstream: FlashAttention 4",
    "torch_compile_test": "upstream: torch.compile",
    "order": "upstream: run order (pytest-order)",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, description in UPSTREAM_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = "tests/upstream/"
    dropped = [
        item
        for item in items
        if item.nodeid.startswith(here) and item.nodeid.rsplit("::", 1)[-1] in DESELECTED
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]
    # Hundreds of generic checks: the full run (the README's test command) keeps them, the
    # edit-test loop (`-m "not slow"`) leaves them out.
    for item in items:
        if item.nodeid.startswith(here):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The tester models are tiny: on a busy two-core machine intra-op threads turn microsecond
    matmuls into millisecond waits (as in ``tests/hf/conftest.py``)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
