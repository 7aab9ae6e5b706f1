"""``data.document_mask``: the trainer attends only within each packed document."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from gated_attention.train import load_run_config
from gated_attention.train.config import DataConfig
from gated_attention.train.datasets import RunData
from gated_attention.train.trainer import Trainer

EOD, VOCAB, T = 1, 64, 32


class _PackedRows:
    """Fixed random rows ``(B, T)`` with end-of-document tokens at uneven places."""

    def __init__(self, rows: int = 4) -> None:
        g = torch.Generator().manual_seed(7)
        self.ids = torch.randint(2, VOCAB, (rows, T), generator=g)
        for r, ends in enumerate([(5, 17), (11,), (2, 3, 30), ()][:rows]):
            self.ids[r, list(ends)] = EOD
        self.labels = torch.randint(2, VOCAB, (rows, T), generator=g)

    def batch(self, step, batch_size, seed, rank=0, world_size=1):
        return self.ids[:batch_size], self.labels[:batch_size]

    def iter_eval_batches(self, batch_size, max_batches=None):
        yield self.ids[:batch_size], self.labels[:batch_size]


def _trainer(write_config, document_mask: bool) -> Trainer:
    cfg = load_run_config(write_config(steps=2, ckpt_every=2, eval_every=2))
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, kind="corpus", document_mask=document_mask)
    )
    source = _PackedRows()
    data = RunData(train=source, val=source, vocab_size=VOCAB, info={"kind": "test"}, eod_id=EOD)
    return Trainer(cfg, data=data)


def _separate_documents_loss(model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss with every document of every row run alone."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    for row, target in zip(ids, labels):
        ends = (row == EOD).nonzero().flatten().tolist()
        starts = [0] + [e + 1 for e in ends if e + 1 < T]
        for a, b in zip(starts, [*starts[1:], T]):
            logits = model(row[None, a:b]).logits[0].double()
            total += F.cross_entropy(logits, target[a:b], reduction="sum")
            count += b - a
    return total / count


def test_document_mask_equals_running_each_document_alone(write_config):
    trainer = _trainer(write_config, document_mask=True)
    model = trainer.model.float().eval()
    source = trainer.data.train
    with torch.no_grad():
        masked = trainer._loss(source.ids, source.labels)
        separate = _separate_documents_loss(model, source.ids, source.labels)
        unmasked = _trainer(write_config, document_mask=False)._loss(source.ids, source.labels)
    assert float(masked) == pytest.approx(float(separate), abs=1e-5)
    assert abs(float(unmasked) - float(separate)) > 1e-4  # the mask changes the loss


def test_document_mask_trains_and_evaluates(write_config):
    trainer = _trainer(write_config, document_mask=True)
    result = trainer.fit()
    assert result.final_val_loss == pytest.approx(trainer.evaluate(), abs=1e-6)


def test_document_mask_is_refused_without_documents(write_config):
    with pytest.raises(ValueError, match=r"data\.document_mask"):
        DataConfig(kind="backcopy", document_mask=True)
    with pytest.raises(ValueError, match="true or false"):
        DataConfig(document_mask="yes")
    cfg = load_run_config(write_config(steps=2))
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, kind="corpus", document_mask=True)
    )
    source = _PackedRows()
    data = RunData(train=source, val=source, vocab_size=VOCAB, info={"kind": "test"})
    with pytest.raises(ValueError, match="end-of-document"):
        Trainer(cfg, data=data)
