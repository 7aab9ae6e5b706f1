"""Passkey / associative recall generators, exact-match scoring and the training mix."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from gated_attention.data import (
    AssociativeRecallTask,
    BigramBackcopyTask,
    PasskeyTask,
    RetrievalMixSource,
    RetrievalVocab,
    make_batch,
    pattern_filler,
    train_tokenizer,
)
from gated_attention.evals import evaluate_retrieval, score_batch
from gated_attention.train.config import DataConfig
from gated_attention.train.datasets import build_data
from tests.evals.conftest import tiny_model

VOCAB = RetrievalVocab.reserved_ids(64, bos_id=0)


def _filler(n: int = 2000) -> torch.Tensor:
    return torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(1))


class OracleModel(torch.nn.Module):
    """A fake causal LM that solves the tasks by reading its input (or answers wrongly)."""

    def __init__(self, vocab: RetrievalVocab, key_len: int, wrong: bool = False) -> None:
        super().__init__()
        self.vocab, self.key_len, self.wrong = vocab, key_len, wrong

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.vocab.vocab_size)
        km, qm = self.vocab.key_marker, self.vocab.query_marker
        for b in range(B):
            row = input_ids[b].tolist()
            memory: dict[int | None, list[int]] = {}
            for t in range(T - len(km)):
                if tuple(row[t : t + len(km)]) == km:
                    s = t + len(km)
                    if self.key_len:  # passkey: digits follow the marker
                        memory[None] = row[s : s + self.key_len]
                    else:  # recall: key, then its value digits
                        memory[row[s]] = row[s + 1 : s + 3]
            for t in range(T):
                for start in range(max(0, t - 12), t + 1):
                    if tuple(row[start : start + len(qm)]) != qm:
                        continue
                    s = start + len(qm)
                    key = None if self.key_len else row[s]
                    first = s if self.key_len else s + 1
                    answer = memory.get(key, [])
                    j = t + 1 - first
                    if 0 <= j < len(answer):
                        tok = answer[j]
                        if self.wrong:
                            tok = self.vocab.values[(self.vocab.values.index(tok) + 1) % 10]
                        logits[b, t, tok] = 1.0
        return SimpleNamespace(logits=logits)


def test_passkey_layout_and_determinism():
    task = PasskeyTask(VOCAB, key_len=4)
    a = make_batch(task, _filler(), 48, 0.5, 6, seed=3, bos_id=0)
    b = make_batch(task, _filler(), 48, 0.5, 6, seed=3, bos_id=0)
    c = make_batch(task, _filler(), 48, 0.5, 6, seed=4, bos_id=0)
    assert torch.equal(a.tokens, b.tokens) and a.spans == b.spans
    assert not torch.equal(a.tokens, c.tokens)
    assert a.tokens.shape == (6, 48)
    for row, spans in zip(a.tokens, a.spans):
        assert row[0] == 0 and spans == [(44, 48)]
        km = (row == VOCAB.key_marker[0]).nonzero().flatten().tolist()
        qm = (row == VOCAB.query_marker[0]).nonzero().flatten().tolist()
        assert len(km) == 1 and qm == [43]  # markers never occur in the (sanitised) filler
        assert torch.equal(row[km[0] + 1 : km[0] + 5], row[44:48])
        assert set(row[44:48].tolist()) <= set(VOCAB.values)
    # depth 0 puts the needle right after BOS, depth 1 right before the question
    first = make_batch(task, _filler(), 48, 0.0, 1, bos_id=0).tokens[0]
    last = make_batch(task, _filler(), 48, 1.0, 1, bos_id=0).tokens[0]
    assert first[1] == VOCAB.key_marker[0] and last[38] == VOCAB.key_marker[0]


def test_recall_layout_and_determinism():
    task = AssociativeRecallTask(VOCAB, num_pairs=4, num_queries=3, value_len=2)
    a = make_batch(task, _filler(), 64, 0.25, 5, seed=0, bos_id=None)
    assert torch.equal(a.tokens, make_batch(task, _filler(), 64, 0.25, 5, seed=0).tokens)
    for row, spans in zip(a.tokens, a.spans):
        assert len(spans) == 3 and spans[-1][1] == 64
        pairs = {}
        for t in (row == VOCAB.key_marker[0]).nonzero().flatten().tolist():
            pairs[int(row[t + 1])] = row[t + 2 : t + 4].tolist()
        assert len(pairs) == 4
        for s, e in spans:
            assert row[s - 2] == VOCAB.query_marker[0]
            assert row[s:e].tolist() == pairs[int(row[s - 1])]


@pytest.mark.parametrize("task_name", ["passkey", "recall"])
def test_scorer_on_known_answers(task_name):
    if task_name == "passkey":
        task, key_len = PasskeyTask(VOCAB, key_len=3), 3
    else:
        task, key_len = AssociativeRecallTask(VOCAB, num_pairs=3, num_queries=2), 0
    batch = make_batch(task, _filler(), 40, 0.5, 5, seed=0, bos_id=0)
    right = score_batch(OracleModel(VOCAB, key_len), batch)
    wrong = score_batch(OracleModel(VOCAB, key_len, wrong=True), batch)
    assert right.shape == wrong.shape == (5, 1 if task_name == "passkey" else 2)
    assert right.all() and not wrong.any()
    res = evaluate_retrieval(OracleModel(VOCAB, key_len), task, _filler(), [40, 80], [0.0, 1.0], 3)
    assert res["accuracy"][80] == {
        "mean": 1.0,
        "depths": {0.0: 1.0, 1.0: 1.0},
        "token_accuracy": 1.0,
    }
    assert score_batch(OracleModel(VOCAB, key_len, wrong=True), batch, per_token=True).sum() == 0


def test_teacher_forced_score_equals_greedy_generation():
    model = tiny_model()
    vocab = RetrievalVocab.reserved_ids(128, bos_id=0)
    task = PasskeyTask(vocab, key_len=2)
    batch = make_batch(task, pattern_filler(vocab, 500), 24, 0.5, 8, seed=0, bos_id=0)
    # make the random model right some of the time: bias its head toward digit tokens
    with torch.no_grad():
        model.lm_head.weight[list(vocab.values[:2])] += 0.3
    flags = score_batch(model, batch)[:, 0]
    gen = model.generate(batch.tokens[:, :-2], max_new_tokens=2)
    assert torch.equal(flags, (gen[:, -2:] == batch.tokens[:, -2:]).all(-1))


def test_vocab_from_tokenizer_and_errors(tmp_path, corpus_file):
    tok_path = train_tokenizer([corpus_file.read_text()], 300, out_dir=tmp_path / "tok")
    vocab = RetrievalVocab.from_tokenizer(tok_path)
    assert len(vocab.values) == 10 and vocab.kind == "tokenizer" and not vocab.reserved
    filler = pattern_filler(vocab, 100, tok_path)
    assert filler.shape == (100,)
    with pytest.raises(ValueError, match="too small"):
        RetrievalVocab.reserved_ids(20)
    with pytest.raises(ValueError, match="too short"):
        make_batch(PasskeyTask(VOCAB), _filler(), 8, 0.5, 1)
    with pytest.raises(ValueError, match="num_queries"):
        AssociativeRecallTask(VOCAB, num_pairs=2, num_queries=3)
    assert VOCAB.sanitize(torch.tensor(list(VOCAB.reserved))).tolist() != list(VOCAB.reserved)
    assert not set(VOCAB.sanitize(torch.arange(64)).tolist()) & set(VOCAB.reserved)


def _backcopy():
    return BigramBackcopyTask(vocab_size=64, num_triggers=3, seq_len=32, seed=5)


@pytest.mark.parametrize("prob", [0.0, 0.5, 1.0])
def test_mix_source_is_deterministic_and_shards(prob):
    base = _backcopy()
    mix = RetrievalMixSource(base, PasskeyTask(VOCAB), prob, bos_id=0)
    ids, labels = mix.batch(3, 8, seed=7)
    again, _ = mix.batch(3, 8, seed=7)
    assert torch.equal(ids, again)
    assert torch.equal(ids[:, 1:], labels[:, :-1])  # labels are the next tokens
    assert (ids[:, 0] == 0).all()  # BOS kept
    shards = [mix.batch(3, 8, seed=7, rank=r, world_size=2)[0] for r in range(2)]
    assert torch.equal(torch.cat(shards), ids)
    base_ids, _ = base.batch(3, 8, seed=7)
    replaced = (ids != base_ids).any(-1)
    # a replaced row ends with QUERY + the 4-digit key; the others are the base rows
    assert (labels[replaced, -5] == VOCAB.query_marker[0]).all()
    if prob == 0.0:
        assert not replaced.any()
    if prob == 1.0:
        assert replaced.all()


def test_build_data_wraps_only_the_training_source():
    cfg = DataConfig(kind="backcopy", seq_len=32, vocab_size=64, retrieval_mix=0.5)
    data = build_data(cfg)
    assert isinstance(data.train, RetrievalMixSource) and data.info["retrieval_mix"]["prob"] == 0.5
    assert not isinstance(data.val, RetrievalMixSource)
    ids, _ = data.train.batch(0, 16, seed=0)
    assert (ids == VOCAB.key_marker[0]).any()
    with pytest.raises(ValueError, match="retrieval_mix"):
        DataConfig(retrieval_mix=1.5)
    with pytest.raises(ValueError, match="retrieval_task"):
        DataConfig(retrieval_task="needle")
    with pytest.raises(ValueError, match="too short"):
        build_data(DataConfig(kind="backcopy", seq_len=8, vocab_size=64, retrieval_mix=0.5))
