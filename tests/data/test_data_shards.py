"""Shard sets: exact token streams across shard boundaries, parallel and resumed preparations
byte-identical to a plain one, uint32 for large vocabularies, and one-line errors for damaged
or mismatched sets."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from gated_attention.cli import main
from gated_attention.data import (
    DataError,
    ShardSet,
    load_tokenizer,
    open_sources,
    prepare_shards,
    tiny_shard_set,
    train_tokenizer,
)
from gated_attention.data import tokenize as tokenize_module
from tests.train.conftest import cli_env


def _write_jsonl(path: Path, docs: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def _files(root: Path) -> dict[str, bytes]:
    """Every file of a shard set (hidden lock file excluded) by name."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != ".lock":
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def _expected(tokenizer_dir: Path, docs: list[str]) -> list[int]:
    tok = load_tokenizer(tokenizer_dir)
    out: list[int] = []
    for doc in docs:
        out += [*tok.encode(doc, add_special_tokens=False), tok.eos_token_id]
    return out


@pytest.fixture
def corpus(tmp_path: Path, document_factory: Callable[..., list[str]]) -> tuple[Path, list[str]]:
    docs = document_factory(120, seed=21)
    return _write_jsonl(tmp_path / "in" / "corpus.jsonl", docs), docs


def test_shard_boundaries_never_lose_or_duplicate_a_token(
    tmp_path: Path, corpus: tuple[Path, list[str]], tokenizer_dir: Path
) -> None:
    path, docs = corpus
    shards = prepare_shards(path, tmp_path / "s", tokenizer_dir, workers=1, shard_tokens=211)
    expected = _expected(tokenizer_dir, docs)
    sizes = [
        json.loads((tmp_path / "s" / f"shard-{i:05d}.json").read_text())["num_tokens"]
        for i in range(shards.num_shards)
    ]
    assert sizes[:-1] == [211] * (len(sizes) - 1) and 0 < sizes[-1] <= 211
    assert sum(sizes) == len(expected) == shards.num_tokens
    stream = np.concatenate([np.fromfile(f, dtype="<u2") for f in shards.shard_files]).tolist()
    assert stream == expected
    # windows that cross shard boundaries read the stream exactly
    starts = np.array([0, 200, 210, 211, 400, len(expected) - 50])
    assert shards.read(starts, 50).tolist() == [expected[s : s + 50] for s in starts]
    # document ends: after every end-of-document token, stored per shard
    ends = np.cumsum([len(_expected(tokenizer_dir, [d])) for d in docs])
    assert shards.document_ends(0, shards.num_tokens).tolist() == ends.tolist()
    assert shards.document_ends(150, 700).tolist() == [e for e in ends if 150 < e <= 700]
    # each sidecar starts where the previous one ended
    metas = [
        json.loads((tmp_path / "s" / f"shard-{i:05d}.json").read_text())
        for i in range(shards.num_shards)
    ]
    assert metas[0]["start"] == {"input": 0, "record": 0, "token": 0}
    for a, b in itertools.pairwise(metas):
        assert a["end"] == b["start"]
        assert b["first_token"] == a["first_token"] + a["num_tokens"]


def test_parallel_preparation_is_byte_identical(
    tmp_path: Path, corpus: tuple[Path, list[str]], tokenizer_dir: Path
) -> None:
    path, _ = corpus
    one = prepare_shards(path, tmp_path / "one", tokenizer_dir, workers=1, shard_tokens=500)
    two = prepare_shards(
        path, tmp_path / "two", tokenizer_dir, workers=2, shard_tokens=500, chunk_chars=700
    )
    assert one.num_shards > 3
    assert _files(one.root) == _files(two.root)


def test_interrupted_preparation_resumes_byte_identical(
    tmp_path: Path,
    corpus: tuple[Path, list[str]],
    tokenizer_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, _ = corpus
    reference = prepare_shards(path, tmp_path / "ref", tokenizer_dir, workers=1, shard_tokens=300)
    finish = tokenize_module._ShardWriter._finish
    calls = []

    def crash_after_three(self, end):
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash")
        calls.append(end)
        finish(self, end)

    monkeypatch.setattr(tokenize_module._ShardWriter, "_finish", crash_after_three)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        prepare_shards(path, out, tokenizer_dir, workers=1, shard_tokens=300)
    monkeypatch.undo()
    assert not (out / "manifest.json").exists() and (out / "shard-00002.json").exists()
    # damage the last finished shard as a crash during its write might: it is redone
    (out / "shard-00002.bin").write_bytes(b"\0" * 600)
    resumed = prepare_shards(path, out, tokenizer_dir, workers=2, shard_tokens=300, chunk_chars=900)
    assert _files(resumed.root) == _files(reference.root)


@pytest.mark.slow
def test_sigkilled_preparation_resumes_byte_identical(
    tmp_path: Path, tokenizer_dir: Path, document_factory: Callable[..., list[str]]
) -> None:
    path = _write_jsonl(tmp_path / "big.jsonl", document_factory(8000, seed=4))
    out = tmp_path / "killed"
    script = (
        "import sys; from gated_attention.data import prepare_shards; "
        "prepare_shards(sys.argv[1], sys.argv[2], sys.argv[3], workers=2, shard_tokens=5000, "
        "chunk_chars=20000)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(path), str(out), str(tokenizer_dir)],
        env=cli_env(),
        start_new_session=True,  # its own process group: the kill takes the workers too
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "shard-00003.json").exists():
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "shard-00003.json").exists(), "the preparation never got going"
    assert not (out / "manifest.json").exists(), "the preparation must be killed mid-way"
    resumed = prepare_shards(path, out, tokenizer_dir, workers=2, shard_tokens=5000)
    reference = prepare_shards(path, tmp_path / "ref", tokenizer_dir, workers=1, shard_tokens=5000)
    assert resumed.num_shards > 5
    assert _files(resumed.root) == _files(reference.root)


def _word_tokenizer(out: Path, size: int) -> Path:
    """A word-level tokenizer of ``size`` words plus GPT-2-style specials, made offline."""
    vocab = {"<|endoftext|>": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<|endoftext|>"])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def test_uint32_shards_for_a_large_vocabulary(tmp_path: Path) -> None:
    tok_dir = _word_tokenizer(tmp_path / "tok", 70_000)  # 70,002 ids > 65,535
    rng = np.random.default_rng(0)
    words = [rng.integers(0, 70_000, size=rng.integers(3, 30)) for _ in range(40)]
    docs = [" ".join(f"w{w}" for w in doc) for doc in words]
    path = _write_jsonl(tmp_path / "c.jsonl", docs)
    shards = prepare_shards(path, tmp_path / "s", tok_dir, workers=1, shard_tokens=100)
    assert shards.info.dtype == "uint32" and shards.info.vocab_size == 70_002
    assert shards.info.eod_id == 0  # from the tokenizer's own config
    expected = [i for doc in words for i in [*(doc + 2).tolist(), 0]]
    stream = np.concatenate([np.fromfile(f, dtype="<u4") for f in shards.shard_files])
    assert stream.tolist() == expected and stream.max() > 65_535
    shards.verify()


def test_damaged_sets_fail_in_one_line_naming_the_file(tmp_path: Path) -> None:
    good = tiny_shard_set(tmp_path / "tiny")
    root = good.root
    good.verify()

    def one_line(fn, message):
        with pytest.raises(DataError, match=message) as exc:
            fn()
        assert "\n" not in str(exc.value)
        return str(exc.value)

    # corrupt shard: same size, one flipped byte -> checksum
    shard = root / "shard-00001.bin"
    original = shard.read_bytes()
    shard.write_bytes(bytes([original[0] ^ 1]) + original[1:])
    ShardSet.open(root)  # the cheap checks pass
    msg = one_line(lambda: ShardSet.open(root, verify=True), "is corrupt")
    assert str(shard) in msg
    # token id out of range (with a consistent checksum)
    data = np.frombuffer(original, dtype="<u2").copy()
    data[3] = 60_000
    shard.write_bytes(data.tobytes())
    manifest = json.loads((root / "manifest.json").read_text())
    import hashlib

    manifest["shards"][1]["sha256"] = hashlib.sha256(data.tobytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))
    msg = one_line(lambda: ShardSet.open(root, verify=True), "token id 60000, out of range")
    assert str(shard) in msg
    manifest["shards"][1]["max_token_id"] = 60_000  # recorded: caught without reading
    (root / "manifest.json").write_text(json.dumps(manifest))
    one_line(lambda: ShardSet.open(root), "shard-00001.bin holds token id 60000, out of range")
    # truncated shard
    shard.write_bytes(original[:-2])
    one_line(lambda: ShardSet.open(root), "shard-00001.bin has .* bytes but the manifest")
    # missing manifest of an unfinished preparation, also when named as a source
    (root / "manifest.json").unlink()
    one_line(lambda: ShardSet.open(root), "rerun the same `data prepare` command")
    one_line(lambda: open_sources([str(root)]), "is not a finished shard set")


def test_tokenizer_that_differs_from_the_shards(tmp_path: Path, documents: list[str]) -> None:
    shards = tiny_shard_set(tmp_path / "tiny")
    other = train_tokenizer(documents, 420, out_dir=tmp_path / "other")
    with pytest.raises(DataError, match="tokenized with a different tokenizer") as exc:
        open_sources([str(shards.root)], tokenizer=other)
    assert str(shards.root) in str(exc.value) and "\n" not in str(exc.value)
    # its own tokenizer is fine
    (same,) = open_sources([str(shards.root)], tokenizer=shards.tokenizer_path)
    assert same.num_tokens == shards.num_tokens


def test_reuse_and_a_different_plan_in_the_same_directory(
    tmp_path: Path, corpus: tuple[Path, list[str]], tokenizer_dir: Path
) -> None:
    path, _ = corpus
    first = prepare_shards(path, tmp_path / "s", tokenizer_dir, workers=1, shard_tokens=400)
    start = time.perf_counter()
    again = prepare_shards(path, tmp_path / "s", tokenizer_dir, workers=1, shard_tokens=400)
    assert time.perf_counter() - start < 2.0 and again.num_tokens == first.num_tokens
    with pytest.raises(DataError, match="holds shards prepared from other inputs"):
        prepare_shards(path, tmp_path / "s", tokenizer_dir, workers=1, shard_tokens=300)
    forced = prepare_shards(
        path, tmp_path / "s", tokenizer_dir, workers=1, shard_tokens=300, force=True
    )
    assert forced.num_tokens == first.num_tokens and forced.num_shards > first.num_shards


def test_open_sources_caches_by_input(
    tmp_path: Path, corpus: tuple[Path, list[str]], tokenizer_dir: Path
) -> None:
    path, docs = corpus
    (a,) = open_sources([str(path)], tokenizer=tokenizer_dir, cache_dir=tmp_path / "cache")
    assert a.root.parent == tmp_path / "cache" / "shards"
    (b,) = open_sources([str(path)], tokenizer=tokenizer_dir, cache_dir=tmp_path / "cache")
    assert b.root == a.root
    _write_jsonl(path, docs[:-1])  # the input changed: a new entry
    (c,) = open_sources([str(path)], tokenizer=tokenizer_dir, cache_dir=tmp_path / "cache")
    assert c.root != a.root and c.info.num_documents == len(docs) - 1
    # without a tokenizer, ours is trained on the input (cached too)
    (d,) = open_sources([str(path)], vocab_size=300, cache_dir=tmp_path / "cache")
    assert d.info.vocab_size == 300 and load_tokenizer(d.tokenizer_path).eos_token == "<|eos|>"


def test_cli_prepare_and_verify(
    tmp_path: Path, corpus: tuple[Path, list[str]], tokenizer_dir: Path, capsys
) -> None:
    path, docs = corpus
    out = tmp_path / "s"
    args = [
        "data",
        "prepare",
        "--input",
        str(path),
        "--out",
        str(out),
        "--tokenizer",
        str(tokenizer_dir),
        "--workers",
        "2",
        "--shard-tokens",
        "1000",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["documents"] == len(docs) and summary["root"] == str(out)
    assert main(["data", "verify", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    shard = out / "shard-00000.bin"
    shard.write_bytes(bytes([shard.read_bytes()[0] ^ 1]) + shard.read_bytes()[1:])
    assert main(["data", "verify", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shard-00000.bin" in err and "corrupt" in err
    assert main(["data", "prepare", "--input", str(tmp_path / "none*.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no files match the glob" in err
