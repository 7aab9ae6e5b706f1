"""Streamed inputs: every format gives the documents it holds, in order, from any record on;
prepared token streams equal a direct ``tokenizer.encode`` of each document; bad input is one
line naming the file."""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import pytest

from gated_attention.data import (
    DataError,
    iter_documents,
    iter_stream,
    load_documents,
    load_tokenizer,
    prepare_shards,
    resolve_inputs,
)
from gated_attention.data.documents import _split_text, iter_records

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard")
datasets = pytest.importorskip("datasets")


def _jsonl(docs: list[str], field: str = "text") -> bytes:
    return ("\n".join(json.dumps({field: d, "id": i}) for i, d in enumerate(docs)) + "\n").encode()


def write_format(root: Path, fmt: str, docs: list[str]) -> Path:
    """``docs`` written as one input of format ``fmt``; returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "txt":
        path = root / "corpus.txt"
        path.write_text("\n\n\n".join(docs) + "\n")
    elif fmt == "jsonl":
        path = root / "corpus.jsonl"
        path.write_bytes(_jsonl(docs))
    elif fmt == "jsonl.gz":
        path = root / "corpus.jsonl.gz"
        path.write_bytes(gzip.compress(_jsonl(docs)))
    elif fmt == "jsonl.zst":
        path = root / "corpus.jsonl.zst"
        path.write_bytes(zstandard.ZstdCompressor().compress(_jsonl(docs)))
    elif fmt == "parquet":
        path = root / "corpus.parquet"
        table = pa.table({"id": list(range(len(docs))), "text": docs})
        pq.write_table(table, path, row_group_size=17)  # many row groups
    elif fmt == "datasets":
        path = root / "saved"
        datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(path))
    else:  # pragma: no cover
        raise ValueError(fmt)
    return path


FORMATS = ["txt", "jsonl", "jsonl.gz", "jsonl.zst", "parquet", "datasets"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_streams_its_documents(
    tmp_path: Path, fmt: str, document_factory: Callable[..., list[str]]
) -> None:
    docs = document_factory(60, seed=3)
    path = write_format(tmp_path, fmt, docs)
    assert load_documents(path) == docs
    inputs = resolve_inputs(path)
    records = list(iter_stream(inputs))
    assert [r.text for r in records] == docs
    # resuming at any record gives the rest of the stream
    for k in (0, 1, 16, 17, 59):
        rest = list(iter_stream(inputs, start=(0, records[k].index)))
        assert [r.text for r in rest] == docs[k:]


@pytest.mark.parametrize("fmt", FORMATS)
def test_token_stream_equals_direct_encoding(
    tmp_path: Path, fmt: str, tokenizer_dir: Path, document_factory: Callable[..., list[str]]
) -> None:
    docs = document_factory(50, seed=11)
    path = write_format(tmp_path / "in", fmt, docs)
    shards = prepare_shards(path, tmp_path / "out", tokenizer_dir, workers=1, shard_tokens=257)
    tok = load_tokenizer(tokenizer_dir)
    expected: list[int] = []
    for doc in docs:
        expected += [*tok.encode(doc, add_special_tokens=False), tok.eos_token_id]
    assert shards.read_range(0, shards.num_tokens).tolist() == expected
    assert shards.info.num_documents == len(docs)
    manifest = shards.manifest
    assert manifest["inputs"][0]["documents"] == len(docs)
    assert manifest["inputs"][0]["tokens"] == len(expected)


def test_multi_frame_zstandard(tmp_path: Path) -> None:
    docs = [f"doc {i} " * (i + 1) for i in range(300)]
    compress = zstandard.ZstdCompressor().compress
    path = tmp_path / "frames.jsonl.zst"
    path.write_bytes(compress(_jsonl(docs[:100])) + compress(_jsonl(docs[100:])))
    assert load_documents(path) == docs


def test_text_splitter_matches_the_regex_rule() -> None:
    """The line-by-line splitter gives the same non-empty documents as the whole-file regex."""
    rng = random.Random(0)
    pieces = ["word", "two words", "", " ", "\t", "x.", "  indented"]
    for _ in range(2000):
        lines = [rng.choice(pieces) for _ in range(rng.randint(0, 12))]
        text = "\n".join(lines) + rng.choice(["", "\n", "\n\n"])
        regex = [d.strip() for d in re.split(r"\n(?:[ \t]*\n){2,}", text)]
        streamed = list(_split_text(iter(text.splitlines(keepends=True))))
        assert [d for d in streamed if d] == [d for d in regex if d], repr(text)


def test_globs_directories_and_mixed_inputs(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.jsonl").write_text('{"text": "two"}\n{"text": "three"}\n')
    (tmp_path / "b" / "1.txt").write_text("one\n\n\nstill one (a .txt in a directory is one doc)")
    (tmp_path / "a.parquet").write_bytes(b"")  # not matched by the glob below
    pq.write_table(pa.table({"text": ["zero"]}), tmp_path / "a.parquet")
    assert load_documents(tmp_path / "b") == [
        "one\n\n\nstill one (a .txt in a directory is one doc)",
        "two",
        "three",
    ]
    inputs = resolve_inputs([str(tmp_path / "*.parquet"), str(tmp_path / "b" / "*")])
    assert [Path(i.path).name for i in inputs] == ["a.parquet", "1.txt", "2.jsonl"]
    assert [r.text[:4] for r in iter_stream(inputs)] == ["zero", "one\n", "two", "thre"]
    recursive = resolve_inputs(str(tmp_path / "**" / "*.jsonl"))
    assert [Path(i.path).name for i in recursive] == ["2.jsonl"]


def test_text_field_and_null_rows(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["a", None, "  ", "b"]}), path)
    assert load_documents(path, text_field="body") == ["a", "b"]
    assert list(iter_records(resolve_inputs(path)[0], text_field="body")) == [
        "a",
        None,
        "  ",
        "b",
    ]


def test_environment_variables_in_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x.jsonl").write_text('{"text": "hello"}\n')
    monkeypatch.setenv("GA_TEST_CORPUS", str(tmp_path))
    assert load_documents("$GA_TEST_CORPUS/x.jsonl") == ["hello"]
    monkeypatch.delenv("GA_TEST_CORPUS")
    with pytest.raises(DataError, match="GA_TEST_CORPUS, which is not set") as exc:
        resolve_inputs("$GA_TEST_CORPUS/x.jsonl")
    assert "\n" not in str(exc.value)


def test_bad_inputs_are_one_line_naming_the_file(tmp_path: Path) -> None:
    no_column = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"content": ["x"]}), no_column)
    not_string = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), not_string)
    payload = _jsonl([random.Random(0).randbytes(3000).hex() for _ in range(4)])
    broken_zst = tmp_path / "broken.jsonl.zst"
    whole = zstandard.ZstdCompressor().compress(payload)
    broken_zst.write_bytes(whole[: len(whole) // 2])  # truncated mid-frame
    broken_gz = tmp_path / "broken.jsonl.gz"
    whole = gzip.compress(payload)
    broken_gz.write_bytes(whole[: len(whole) // 2])
    not_parquet = tmp_path / "fake.parquet"
    not_parquet.write_text("not parquet")
    cases = {
        str(no_column): "nocol.parquet has no column 'text' (columns: content)",
        str(not_string): "ints.parquet column 'text' has type int64, not string",
        str(broken_zst): "broken.jsonl.zst could not be read",
        str(broken_gz): "broken.jsonl.gz could not be read",
        str(not_parquet): "fake.parquet is not a readable parquet file",
        str(tmp_path / "*.nothing"): f"no files match the glob '{tmp_path}/*.nothing'",
        str(tmp_path / "missing.jsonl"): "missing.jsonl does not exist",
    }
    for spec, message in cases.items():
        with pytest.raises(DataError, match=re.escape(message)) as exc:
            list(iter_documents(spec))
        assert "\n" not in str(exc.value), str(exc.value)


def test_iter_records_skips_without_reading_past_the_start(tmp_path: Path) -> None:
    docs = [f"document {i}" for i in range(100)]
    for fmt in ("jsonl.zst", "parquet", "datasets"):
        inp = resolve_inputs(write_format(tmp_path / fmt, fmt, docs))[0]
        assert list(islice(iter_records(inp, start=63), 3)) == docs[63:66]
        assert list(iter_records(inp, start=100)) == []


def test_hub_names_are_inputs_without_touching_the_network() -> None:
    (inp,) = resolve_inputs("hf:HuggingFaceFW/fineweb-edu:sample-10BT")
    assert (inp.kind, inp.path) == ("hub", "hf:HuggingFaceFW/fineweb-edu:sample-10BT")
