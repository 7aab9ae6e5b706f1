"""Training windows over shard sets: the same batches as a single token file of the same
stream, document ids, a held-out split disjoint at document level, and weighted mixtures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from gated_attention.data import (
    DataError,
    MixtureDataset,
    PackedTokenDataset,
    ShardSet,
    build_token_file,
    prepare_shards,
)
from gated_attention.data.mixture import _MIX_STREAM
from gated_attention.ops.attention import separated_document_ids


@pytest.fixture(scope="module")
def same_stream(
    tmp_path_factory: pytest.TempPathFactory,
    tokenizer_dir: Path,
    document_factory: Callable[..., list[str]],
) -> tuple[ShardSet, Path]:
    """One corpus as a shard set of 512-token shards and as a legacy token file."""
    root = tmp_path_factory.mktemp("stream")
    docs = document_factory(200, seed=8)
    path = root / "c.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    shards = prepare_shards(path, root / "shards", tokenizer_dir, workers=1, shard_tokens=512)
    single = build_token_file(docs, tokenizer_dir, root / "tokens.bin")
    return shards, single.path


@pytest.mark.parametrize("bos", [None, 0])
def test_shards_give_the_batches_of_one_token_file(same_stream, bos) -> None:
    shards, single = same_stream
    assert shards.num_shards > 10
    for split in ("train", "val"):
        a = PackedTokenDataset(shards, 48, split, bos_id=bos)
        b = PackedTokenDataset(single, 48, split, bos_id=bos)
        assert (a.split_point, a.num_windows) == (b.split_point, b.num_windows)
        for step in (0, 3, 250):
            for rank in (0, 1):
                xa, ya = a.batch(step, 8, seed=5, rank=rank, world_size=2)
                xb, yb = b.batch(step, 8, seed=5, rank=rank, world_size=2)
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert all(
            torch.equal(p[0], q[0])
            for p, q in zip(a.iter_eval_batches(16, 3), b.iter_eval_batches(16, 3))
        )
        assert np.array_equal(a.split_tokens(), b.split_tokens())


@pytest.mark.parametrize("bos", [None, 0])
def test_document_ids_follow_end_of_document_tokens(same_stream, bos) -> None:
    shards, _ = same_stream
    ds = PackedTokenDataset(shards, 64, bos_id=bos)
    eod = ds.eod_id
    windows = ds.window_indices(2, 16, seed=1)
    x, _ = ds.batch(2, 16, seed=1)
    ids = ds.document_ids(windows)
    assert torch.equal(ids, ds.batch_document_ids(2, 16, seed=1))
    for row, doc in zip(x.tolist(), ids.tolist()):
        first = 1 if bos is not None else 0
        expected = [0] * len(row)
        for i in range(first + 1, len(row)):  # a new document after every EOD input token
            expected[i] = expected[i - 1] + (row[i - 1] == eod)
        assert doc == expected
    # the model-side rule for packed rows agrees (the text never encodes to the EOD id here)
    assert torch.equal(ids, separated_document_ids(x, eod))
    assert ids.max() > 0  # windows do cross documents


def test_held_out_split_is_disjoint_at_document_level(tmp_path: Path, tokenizer_dir: Path) -> None:
    # one long final document: a shard set still cuts at a document end (the validation split
    # grows), where a legacy token file would cut inside it
    docs = [f"short document number {i}." for i in range(30)] + [" ".join(["word"] * 400)]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    shards = prepare_shards(path, tmp_path / "s", tokenizer_dir, workers=1, shard_tokens=64)
    val = PackedTokenDataset(shards, 16, "val", val_fraction=0.05)
    ends = shards.document_ends(0, shards.num_tokens).tolist()
    assert val.split_point in ends and val.split_point == ends[-2]
    assert val.num_tokens > 0.05 * shards.num_tokens
    train = PackedTokenDataset(shards, 16, "train", val_fraction=0.05)
    assert train.num_tokens + val.num_tokens == shards.num_tokens
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": docs[-1]}) + "\n")
    single = prepare_shards(one, tmp_path / "one", tokenizer_dir, workers=1)
    with pytest.raises(DataError, match="no document end before its last"):
        PackedTokenDataset(single, 16, "val")


@pytest.fixture(scope="module")
def mixture_parts(
    tmp_path_factory: pytest.TempPathFactory,
    tokenizer_dir: Path,
    document_factory: Callable[..., list[str]],
) -> list[ShardSet]:
    root = tmp_path_factory.mktemp("mix")
    parts = []
    for i, n in enumerate((40, 120, 80)):
        path = root / f"{i}.jsonl"
        docs = document_factory(n, seed=100 + i)
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        parts.append(prepare_shards(path, root / f"s{i}", tokenizer_dir, workers=1))
    return parts


def test_mixture_follows_its_weights(mixture_parts) -> None:
    weights = [0.2, 0.5, 0.3]
    parts = [PackedTokenDataset(p, 32) for p in mixture_parts]
    mix = MixtureDataset(parts, weights, ["a", "b", "c"], block=1000)
    n = 10_000
    counts = np.bincount(
        np.concatenate([mix.sources(s, 100, seed=3) for s in range(n // 100)]), minlength=3
    )
    for count, w in zip(counts, weights):  # within 3 binomial standard deviations
        assert abs(count - n * w) <= 3 * np.sqrt(n * w * (1 - w))
    # any window of 1000 consecutive samples holds exactly the rounded shares
    one_block = np.concatenate([mix.sources(s, 100, seed=3) for s in range(10, 20)])
    assert np.bincount(one_block, minlength=3).tolist() == [200, 500, 300]
    # provenance: each row is a window of the part it is attributed to, and every part is
    # read without replacement within a pass
    x, _ = mix.batch(4, 64, seed=3)
    src = mix.sources(4, 64, seed=3)
    for row, s in zip(x.tolist(), src.tolist()):
        part = parts[s]
        assert any(part[w][0].tolist() == row for w in range(part.num_windows))
    samples = np.arange(20_000)
    owner, within = mix._assign(samples, 3)
    for s, part in enumerate(parts):
        mine = np.sort(within[owner == s])
        assert np.array_equal(mine, np.arange(len(mine)))  # consecutive per-part indices
        first_pass = part.sample_windows(mine[: part.num_windows], 3, salt=(_MIX_STREAM, s))
        assert sorted(first_pass.tolist()) == list(range(part.num_windows))
    account = mix.data_account(n)
    assert [a["name"] for a in account] == ["a", "b", "c"]
    assert account[0]["passes"] == pytest.approx(n * 0.2 / parts[0].num_windows)


def test_mixture_is_deterministic_and_rank_sharded(mixture_parts) -> None:
    parts = [PackedTokenDataset(p, 32, bos_id=0) for p in mixture_parts]
    mix = MixtureDataset(parts, [1, 1, 2])
    again = MixtureDataset([PackedTokenDataset(p, 32, bos_id=0) for p in mixture_parts], [1, 1, 2])
    for step in (0, 7, 5000):
        x, y = mix.batch(step, 8, seed=2)
        assert torch.equal(x, again.batch(step, 8, seed=2)[0])
        halves = [mix.batch(step, 8, seed=2, rank=r, world_size=2) for r in range(2)]
        assert torch.equal(torch.cat([h[0] for h in halves]), x)
        assert torch.equal(x[:, 1:], y[:, :-1]) and (x[:, 0] == 0).all()
    val = MixtureDataset([PackedTokenDataset(p, 32, "val") for p in mixture_parts], [1, 1, 2])
    batches = list(val.iter_eval_batches(8, 3))
    assert len(batches) == 3 and all(b[0].shape == (8, 32) for b in batches)


def test_mixture_errors(mixture_parts, tmp_path: Path, document_factory) -> None:
    parts = [PackedTokenDataset(p, 32) for p in mixture_parts]
    with pytest.raises(DataError, match="weights must be > 0"):
        MixtureDataset(parts, [1, 0, 1])
    with pytest.raises(DataError, match="differ in seq_len"):
        MixtureDataset([parts[0], PackedTokenDataset(mixture_parts[1], 16)], [1, 1])
    with pytest.raises(DataError, match="give a part no sample"):
        MixtureDataset(parts, [1, 1e-6, 1], block=100)
