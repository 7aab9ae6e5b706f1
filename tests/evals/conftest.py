"""Fixtures for the long-context evaluations: a local text corpus and tiny models."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from gated_attention import GatedLM, ModelConfig

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "ran",
    "far",
    "away",
    "house",
    "green",
    "blue",
    "sky",
    "sun",
    "river",
    "stone",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "old",
    "man",
    "sea",
    "tree",
    "bird",
    "sings",
    "night",
    "day",
    "rain",
    "falls",
    "slowly",
    "into",
    "quiet",
    "water",
]


def write_corpus(path: Path, docs: int = 300, seed: int = 0) -> Path:
    """A deterministic toy English corpus (one file, two blank lines between documents)."""
    rng = random.Random(seed)
    out = []
    for _ in range(docs):
        sentences = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "."
            for _ in range(rng.randint(3, 8))
        ]
        out.append(" ".join(sentences))
    path.write_text("\n\n\n".join(out))
    return path


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (no OpenMP hand-offs on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


def tiny_model(gate: str = "none", **overrides) -> GatedLM:
    """A tiny model whose weights are perturbed away from the near-uniform init."""
    cfg = ModelConfig.from_preset("tiny", gate=gate, **overrides)
    torch.manual_seed(0)
    model = GatedLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model
