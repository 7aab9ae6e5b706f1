from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gated_attention.data import BigramBackcopyTask, DataError


@pytest.fixture(scope="module")
def task() -> BigramBackcopyTask:
    return BigramBackcopyTask(vocab_size=16, num_triggers=3, seq_len=64, bos_id=0, seed=1)


def test_structure(task: BigramBackcopyTask) -> None:
    assert task.trigger_ids == (13, 14, 15)
    assert 0 not in task.plain_ids and len(task.plain_ids) == 12
    P = task.transition_matrix
    assert np.allclose(P[[0, *task.plain_ids]].sum(axis=1), 1.0)
    assert (P[0, list(task.trigger_ids)] == 0).all()  # first token after BOS is plain


def test_backcopy_rule_and_bos(task: BigramBackcopyTask) -> None:
    x, y = task.batch(0, 64, seed=0)
    assert x.shape == y.shape == (64, 64) and x.dtype == torch.int64
    assert (x[:, 0] == task.bos_id).all()
    assert torch.equal(x[:, 1:], y[:, :-1])
    seq = torch.cat([x, y[:, -1:]], dim=1)  # the full T + 1 tokens
    is_trigger = task.trigger_mask(seq)
    b, t = torch.nonzero(is_trigger[:, :-1], as_tuple=True)
    assert len(t) > 100  # triggers are common enough to learn from
    assert (t >= 2).all()  # a trigger never follows BOS directly
    assert torch.equal(seq[b, t + 1], seq[b, t - 1])  # the copy
    assert not task.trigger_mask(seq[b, t - 1]).any()  # the copied token is plain
    assert (seq[:, 1:] != task.bos_id).all()


def test_trigger_mask_marks_copy_positions(task: BigramBackcopyTask) -> None:
    x, y = task.batch(2, 8, seed=0)
    mask = task.trigger_mask(x)
    assert mask.dtype == torch.bool and mask.shape == x.shape
    expected = torch.isin(x, torch.tensor(task.trigger_ids))
    assert torch.equal(mask, expected)
    # wherever the mask is set, the label is the input one position back
    b, t = torch.nonzero(mask, as_tuple=True)
    assert torch.equal(y[b, t], x[b, t - 1])


def test_determinism(task: BigramBackcopyTask) -> None:
    same = BigramBackcopyTask(vocab_size=16, num_triggers=3, seq_len=64, bos_id=0, seed=1)
    assert np.array_equal(same.transition_matrix, task.transition_matrix)
    assert torch.equal(task.batch(5, 4, seed=3)[0], same.batch(5, 4, seed=3)[0])
    assert not torch.equal(task.batch(5, 4, seed=3)[0], task.batch(6, 4, seed=3)[0])
    assert not torch.equal(task.batch(5, 4, seed=3)[0], task.batch(5, 4, seed=4)[0])
    other = BigramBackcopyTask(vocab_size=16, num_triggers=3, seq_len=64, bos_id=0, seed=2)
    assert not np.array_equal(other.transition_matrix, task.transition_matrix)


def test_ranks_concatenate(task: BigramBackcopyTask) -> None:
    x, y = task.batch(4, 6, seed=0)
    parts = [task.batch(4, 6, seed=0, rank=r, world_size=3) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    assert torch.equal(torch.cat([p[1] for p in parts]), y)
    with pytest.raises(DataError, match="divisible"):
        task.batch(0, 5, seed=0, world_size=2)


def test_eval_batches_are_fixed_and_separate_from_training(task: BigramBackcopyTask) -> None:
    a = list(task.eval_batches(4, 3))
    b = list(task.eval_batches(4, 3))
    assert len(a) == 3 and all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not torch.equal(a[0][0], task.batch(0, 4, seed=0)[0])


def test_loss_floors_match_monte_carlo(task: BigramBackcopyTask) -> None:
    optimal, bigram = task.optimal_loss(), task.bigram_loss_floor()
    assert 0 < optimal < bigram < math.log(task.vocab_size)
    # Monte Carlo estimate of the Bayes-optimal loss: -log P(label | rule) per position.
    P = torch.from_numpy(task.transition_matrix)
    x, y = task.batch(0, 512, seed=11)
    mask = task.trigger_mask(x)
    nll = -torch.log(P[x, y].clamp_min(1e-300))
    nll[mask] = 0.0
    assert abs(nll.mean().item() - optimal) < 0.03


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"vocab_size": 5}, "vocab_size"),
        ({"num_triggers": 0}, "num_triggers"),
        ({"seq_len": 1}, "seq_len"),
        ({"bos_id": 64}, "bos_id"),
        ({"trigger_prob": 1.0}, "trigger_prob"),
        ({"concentration": 0.0}, "concentration"),
        ({"seed": -1}, "seed"),
    ],
)
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        BigramBackcopyTask(**kwargs)


def test_bos_in_the_middle_of_the_vocabulary() -> None:
    task = BigramBackcopyTask(vocab_size=10, num_triggers=2, seq_len=32, bos_id=9, seed=0)
    assert task.trigger_ids == (7, 8)
    x, y = task.batch(0, 16, seed=0)
    assert (x[:, 0] == 9).all() and (y != 9).all()
