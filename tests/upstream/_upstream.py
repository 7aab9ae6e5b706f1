"""Import ``transformers``' own generic tests (fetched by ``scripts/fetch_upstream_tests.py``).

The upstream files import each other package-relatively (``from .generation.test_utils import
...``), so they are imported as the package ``transformers_tests`` whose search path is the
unpacked ``tests/`` folder followed by ``tests/upstream/stubs/`` (stand-ins for the few modules the
sdist lacks). Nothing is copied or patched: the upstream files run as released.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUBS = Path(__file__).resolve().parent / "stubs"
PACKAGE = "transformers_tests"
VERSION = importlib.metadata.version("transformers")
UPSTREAM = ROOT / ".cache" / "upstream" / f"transformers-{VERSION}" / "tests"
# Set by `make test` (and so CI): a missing upstream tree is then an error, not a skip.
REQUIRE_ENV = "GATED_ATTENTION_REQUIRE_UPSTREAM"

MISSING = (
    f"transformers {VERSION}'s generic model tests are not fetched (looked in {UPSTREAM}); "
    "run `make upstream` or `python scripts/fetch_upstream_tests.py` once (downloads the "
    "transformers sdist from PyPI)"
)


def _register() -> ModuleType:
    """Create (once) the ``transformers_tests`` package over the upstream tree and our stubs."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(
        PACKAGE,
        UPSTREAM / "__init__.py",
        submodule_search_locations=[str(UPSTREAM), str(STUBS)],
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    return package


def import_upstream(name: str) -> ModuleType:
    """``transformers_tests.<name>``; skips the calling test module when the upstream files are
    absent (fails instead under ``GATED_ATTENTION_REQUIRE_UPSTREAM=1``)."""
    if not (UPSTREAM / f"{name}.py").is_file() or not (UPSTREAM / "__init__.py").is_file():
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(MISSING, pytrace=False)
        pytest.skip(MISSING, allow_module_level=True)
    _register()
    return importlib.import_module(f"{PACKAGE}.{name}")
