"""Generated text for tests, benchmarks and dry runs; nothing is downloaded.

* :func:`generate_documents`: small pseudo-English documents from a fixed word list.
* :func:`write_text_corpus`: a large ``.txt`` corpus (documents separated by two blank lines)
  of Zipf-distributed words from a generated lexicon, written in blocks (bounded memory).
* :func:`tiny_shard_set`: a shard set (:mod:`gated_attention.data.shards`) built from a small
  generated corpus with its own BPE tokenizer, in about a second: point ``data.path`` at
  ``tiny_shard_set(dir).root`` (with ``data.kind = "files"``) to run anything on sharded data.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np

from gated_attention.data.shards import ShardSet

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


def generate_documents(
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


def _lexicon(size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` distinct pronounceable words built from random syllables."""
    onsets = [
        "",
        "b",
        "c",
        "d",
        "f",
        "g",
        "h",
        "l",
        "m",
        "n",
        "p",
        "r",
        "s",
        "t",
        "v",
        "w",
        "br",
        "ch",
        "cl",
        "dr",
        "gr",
        "pl",
        "sh",
        "st",
        "th",
        "tr",
    ]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io"]
    codas = ["", "", "n", "r", "s", "t", "l", "nd", "st", "ng"]
    words: dict[str, None] = {}
    while len(words) < size:
        syllables = rng.integers(1, 4)
        word = "".join(
            onsets[rng.integers(len(onsets))]
            + vowels[rng.integers(len(vowels))]
            + codas[rng.integers(len(codas))]
            for _ in range(syllables)
        )
        words.setdefault(word, None)
    return np.array(list(words), dtype=object)


def write_text_corpus(
    path: str | os.PathLike[str],
    target_bytes: int,
    seed: int = 0,
    *,
    lexicon_size: int = 30000,
    mean_doc_words: int = 400,
) -> int:
    """Write a ``.txt`` corpus of at least ``target_bytes`` bytes; returns the bytes written.

    Documents (separated by two blank lines, as :mod:`gated_attention.data.documents` reads
    ``.txt`` files) are sentences of about 12 words drawn from a Zipf(1.1) distribution over a
    generated lexicon, in paragraphs of about 5 sentences, about ``mean_doc_words`` words per
    document: a long-tailed vocabulary like real text's for a BPE tokenizer. Deterministic in
    ``seed``; written about a million words at a time (tens of MB/s).
    """
    rng = np.random.default_rng(seed)
    lexicon = _lexicon(lexicon_size, rng).tolist()
    weights = np.arange(1, lexicon_size + 1, dtype=np.float64) ** -1.1
    cdf = np.cumsum(weights) / weights.sum()
    # One string per (word, capitalised?, what follows it): a space, the end of a sentence, of a
    # paragraph, or of a document.
    table = [
        (word.capitalize() if cap else word) + tail
        for tail in (" ", ". ", ".\n\n", ".\n\n\n")
        for cap in (False, True)
        for word in lexicon
    ]
    p_doc_end = 12 * 5 / mean_doc_words  # per paragraph end
    written = 0
    block = 1 << 20
    with open(path, "w", encoding="utf-8") as handle:
        while written < target_bytes:
            words = np.searchsorted(cdf, rng.random(block)).clip(max=lexicon_size - 1)
            tail = (rng.random(block) < 1 / 12).astype(np.int64)  # sentence ends
            para = tail.astype(bool) & (rng.random(block) < 1 / 5)
            tail[para] = 2
            tail[para & (rng.random(block) < p_doc_end)] = 3
            tail[-1] = 3  # every block ends a document
            cap = np.concatenate([[True], tail[:-1] > 0])
            index = (tail * 2 + cap) * lexicon_size + words
            text = "".join(map(table.__getitem__, index.tolist()))
            handle.write(text)
            written += len(text.encode("utf-8"))
    return written


def tiny_shard_set(
    out_dir: str | os.PathLike[str],
    *,
    documents: int = 400,
    vocab_size: int = 512,
    shard_tokens: int = 4096,
    seed: int = 0,
) -> ShardSet:
    """A small shard set in ``out_dir/shards`` (reused when already there).

    Writes ``out_dir/corpus/documents.jsonl`` (:func:`generate_documents`), trains a byte-level
    BPE tokenizer of ``vocab_size`` tokens on it (``out_dir/bpe``) and prepares the shards in
    one process. The defaults give 21,444 tokens (400 documents) in 6 shards, in about 2 s.
    """
    from gated_attention.data.tokenize import prepare_shards
    from gated_attention.data.tokenizer import train_tokenizer

    root = Path(out_dir)
    corpus = root / "corpus" / "documents.jsonl"
    if not corpus.is_file():
        corpus.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"text": t}) for t in generate_documents(documents, seed)]
        tmp = corpus.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, corpus)
    tokenizer = root / "bpe" / "tokenizer.json"
    if not tokenizer.is_file():
        train_tokenizer(generate_documents(documents, seed), vocab_size, out_dir=root / "bpe")
    return prepare_shards(corpus, root / "shards", tokenizer, workers=1, shard_tokens=shard_tokens)
