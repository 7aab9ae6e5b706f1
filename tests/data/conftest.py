"""Shared fixtures: a small synthetic English-like corpus, a tokenizer and a token file.

Everything is generated locally so the default test run never touches the network.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from gated_attention.data import build_token_file, load_tokenizer, train_tokenizer

_WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "it",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
    "had",
    "not",
    "but",
    "king",
    "queen",
    "castle",
    "river",
    "forest",
    "night",
    "morning",
    "light",
    "storm",
    "sea",
    "ship",
    "letter",
    "house",
    "garden",
    "city",
    "road",
    "bridge",
    "tower",
    "music",
    "painting",
    "science",
    "history",
    "language",
    "winter",
    "summer",
    "spring",
    "autumn",
    "bright",
    "quiet",
    "ancient",
    "modern",
    "small",
    "great",
    "old",
    "young",
    "red",
    "green",
]


def make_documents(
    n: int, seed: int = 0, min_sentences: int = 2, max_sentences: int = 8
) -> list[str]:
    """``n`` deterministic pseudo-English documents of a few sentences each."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(min_sentences, max_sentences)):
            words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
            sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?"]))
        docs.append(" ".join(sentences))
    return docs


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
