from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gated_attention.data import (
    DataError,
    PackedTokenDataset,
    build_token_file,
    load_tokenizer,
    read_token_file_info,
    tokenizer_fingerprint,
    verify_token_file,
)
from gated_attention.data.packed import token_dtype


def test_token_file_layout_and_sidecar(
    token_file: Path, tokenizer_dir: Path, documents: list[str]
) -> None:
    tok = load_tokenizer(tokenizer_dir)
    info = read_token_file_info(token_file)
    meta = json.loads(Path(str(token_file) + ".json").read_text())
    assert meta["sha256"] == hashlib.sha256(token_file.read_bytes()).hexdigest() == info.sha256
    assert meta["tokenizer_sha256"] == tokenizer_fingerprint(tok)
    assert (info.dtype, info.vocab_size, info.eod_id, info.bos_id) == ("uint16", 400, 1, 0)
    assert info.num_documents == len(documents)

    tokens = np.fromfile(token_file, dtype="<u2")
    assert len(tokens) == info.num_tokens
    # documents are encoded without specials and each is followed by one end-of-document token
    expected = []
    for doc in documents:
        expected += [*tok.encode(doc, add_special_tokens=False), tok.eos_token_id]
    assert tokens.tolist() == expected
    assert verify_token_file(token_file) == info


def test_dtype_choice() -> None:
    assert token_dtype(8192) == np.dtype("<u2")
    assert token_dtype(65536) == np.dtype("<u2")
    assert token_dtype(65537) == np.dtype("<u4")


def test_corruption_is_detected(tmp_path: Path, tokenizer_dir: Path, documents: list[str]) -> None:
    path = tmp_path / "tokens.bin"
    build_token_file(documents[:20], tokenizer_dir, path)
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt or stale"):
        verify_token_file(path)
    path.write_bytes(bytes(data[:-2]))
    with pytest.raises(DataError, match="truncated or stale"):
        read_token_file_info(path)


@pytest.mark.parametrize("bos", [False, True])
def test_labels_are_inputs_shifted(token_file: Path, bos: bool) -> None:
    ds = PackedTokenDataset(token_file, 32, bos_id=0 if bos else None)
    x, y = ds.batch(3, 8, seed=1)
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    stream = torch.from_numpy(np.fromfile(token_file, dtype="<u2").astype(np.int64))
    for w in ds.window_indices(3, 8, seed=1).tolist():
        inputs, labels = ds[w]
        if bos:
            assert inputs[0] == 0
            assert torch.equal(labels, stream[w * 32 : w * 32 + 32])
        else:
            assert torch.equal(inputs, stream[w * 32 : w * 32 + 32])
            assert torch.equal(labels, stream[w * 32 + 1 : w * 32 + 33])
    if bos:
        assert (x[:, 0] == 0).all()


def test_batch_is_a_pure_function_of_seed_and_step(token_file: Path) -> None:
    a = PackedTokenDataset(token_file, 16)
    b = PackedTokenDataset(token_file, 16)  # a fresh object, as after a restart
    for step in (0, 5, 1000):
        xa, ya = a.batch(step, 8, seed=7)
        xb, yb = b.batch(step, 8, seed=7)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.batch(0, 8, seed=7)[0], a.batch(1, 8, seed=7)[0])
    assert not torch.equal(a.batch(0, 8, seed=7)[0], a.batch(0, 8, seed=8)[0])


def test_ranks_concatenate_to_the_global_batch(token_file: Path) -> None:
    ds = PackedTokenDataset(token_file, 16, bos_id=0)
    for step in (0, 9):
        x, y = ds.batch(step, 8, seed=3)
        parts = [ds.batch(step, 8, seed=3, rank=r, world_size=2) for r in range(2)]
        assert parts[0][0].shape == (4, 16)
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
    with pytest.raises(DataError, match="divisible by world_size"):
        ds.batch(0, 6, seed=0, world_size=4)
    with pytest.raises(DataError, match="rank"):
        ds.batch(0, 8, seed=0, rank=2, world_size=2)


def test_each_epoch_visits_every_window_once(token_file: Path) -> None:
    ds = PackedTokenDataset(token_file, 16)
    W = ds.num_windows
    batch_size = 5
    steps = -(-2 * W // batch_size)  # enough steps to cover two epochs
    seen = np.concatenate([ds.window_indices(s, batch_size, seed=0) for s in range(steps)])
    assert sorted(seen[:W].tolist()) == list(range(W))
    assert sorted(seen[W : 2 * W].tolist()) == list(range(W))
    assert not np.array_equal(seen[:W], seen[W : 2 * W])  # a new order each epoch


def test_train_and_val_are_disjoint(token_file: Path) -> None:
    info = read_token_file_info(token_file)
    train = PackedTokenDataset(token_file, 16, "train", val_fraction=0.1)
    val = PackedTokenDataset(token_file, 16, "val", val_fraction=0.1)
    assert train.split_point == val.split_point
    assert train.num_tokens + val.num_tokens == info.num_tokens
    assert val.num_tokens >= round(0.1 * info.num_tokens)
    tokens = np.fromfile(token_file, dtype="<u2")
    assert tokens[train.split_point - 1] == info.eod_id  # the split falls between documents
    last_train = max(int(w) * 16 + 17 for w in range(train.num_windows))
    assert last_train <= train.split_point
    first_val_start = val.split_point  # val window 0 starts at the split point
    x, _ = val[0]
    assert torch.equal(
        x, torch.from_numpy(tokens[first_val_start : first_val_start + 16].astype(np.int64))
    )


def test_val_tokens_override(token_file: Path) -> None:
    val = PackedTokenDataset(token_file, 16, "val", val_tokens=500)
    assert val.num_tokens >= 500


def test_eval_batches_in_fixed_order(token_file: Path) -> None:
    val = PackedTokenDataset(token_file, 16, "val", val_fraction=0.2)
    batches = list(val.iter_eval_batches(4))
    assert sum(len(x) for x, _ in batches) == val.num_windows
    assert all(len(x) == 4 for x, _ in batches[:-1])
    assert torch.equal(batches[0][0][1], val[1][0])
    again = list(val.iter_eval_batches(4, max_batches=2))
    assert len(again) == 2 and torch.equal(again[1][0], batches[1][0])


def test_corpus_shorter_than_one_window(tmp_path: Path, tokenizer_dir: Path) -> None:
    path = tmp_path / "tiny.bin"
    info = build_token_file(["The king."], tokenizer_dir, path)
    n = info.num_tokens
    with pytest.raises(DataError) as exc:
        PackedTokenDataset(path, 64, val_fraction=0.0)
    assert str(exc.value) == (
        f"corpus has {n} tokens in the train split but seq_len+1 = 65 are needed for one "
        "window; use a smaller seq_len or a larger corpus"
    )
    # exactly one window fits when seq_len + 1 == n (or seq_len == n with BOS)
    assert PackedTokenDataset(path, n - 1, val_fraction=0.0).num_windows == 1
    assert PackedTokenDataset(path, n, val_fraction=0.0, bos_id=0).num_windows == 1


def test_empty_and_missing_token_files(tmp_path: Path, tokenizer_dir: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        PackedTokenDataset(tmp_path / "nope.bin", 16)
    with pytest.raises(DataError, match="zero documents"):
        build_token_file([], tokenizer_dir, tmp_path / "empty.bin")
    # a hand-made empty file with a matching sidecar
    (tmp_path / "zero.bin").write_bytes(b"")
    good = tmp_path / "good.bin"
    build_token_file(["hello"], tokenizer_dir, good)
    meta = json.loads(Path(str(good) + ".json").read_text())
    meta["num_tokens"] = 0
    Path(str(tmp_path / "zero.bin") + ".json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="holds no tokens"):
        PackedTokenDataset(tmp_path / "zero.bin", 16)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seq_len": 1}, "seq_len"),
        ({"seq_len": 16, "split": "test"}, "split"),
        ({"seq_len": 16, "val_fraction": 1.0}, "val_fraction"),
        ({"seq_len": 16, "val_tokens": -1}, "val_tokens"),
        ({"seq_len": 16, "bos_id": 10**6}, "bos_id"),
    ],
)
def test_argument_validation(token_file: Path, kwargs: dict, field: str) -> None:
    with pytest.raises(DataError, match=field):
        PackedTokenDataset(token_file, **kwargs)


def test_long_last_document_does_not_swallow_the_train_split(
    tmp_path: Path, tokenizer_dir: Path, documents: list[str]
) -> None:
    path = tmp_path / "tokens.bin"
    info = build_token_file([*documents[:50], " ".join(documents[50:])], tokenizer_dir, path)
    val = PackedTokenDataset(path, 16, "val", val_fraction=0.05)
    assert val.num_tokens == round(0.05 * info.num_tokens)  # no boundary within reach: kept
