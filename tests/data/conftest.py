"""Shared fixtures: a small synthetic English-like corpus, a tokenizer and a token file.

Everything is generated locally so the default test run never touches the network.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gated_attention.data import (
    build_token_file,
    generate_documents,
    load_tokenizer,
    train_tokenizer,
)

make_documents = generate_documents
"""``n`` deterministic pseudo-English documents (:func:`gated_attention.data.generate_documents`)."""


@pytest.fixture(scope="session")
def document_factory() -> Callable[..., list[str]]:
    """:func:`make_documents`, for tests that need corpora of their own."""
    return make_documents


@pytest.fixture(scope="session")
def documents() -> list[str]:
    return make_documents(300)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, documents: list[str]) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(documents, 400, out_dir=out)
    return out


@pytest.fixture(scope="session")
def token_file(
    tmp_path_factory: pytest.TempPathFactory, documents: list[str], tokenizer_dir: Path
) -> Path:
    out = tmp_path_factory.mktemp("tokens") / "tokens.bin"
    build_token_file(documents, load_tokenizer(tokenizer_dir), out)
    return out
