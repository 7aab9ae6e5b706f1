"""Training-time sink probes: sinks, residual spikes and gates measured while a model trains.

:class:`SinkProbe` is a trainer callback (``gated_attention.train.callbacks``). Every ``every``
steps (and before the first step of a fresh run) it runs :func:`probe_metrics` on one fixed
held-out batch and appends the result to ``metrics.jsonl`` as a ``"kind": "probe"`` record, so
the emergence of a sink can be plotted against tokens seen. The probe is a ``no_grad`` forward
through the model's hook points in float32 outside autocast; it draws no random numbers, so the
training run is the same with or without it.

:func:`probe_metrics` is also what offline analysis of a checkpoint computes on the same batch
(``tests/analysis/test_training_probe.py`` checks the two agree), and both read the metrics from
:func:`~gated_attention.analysis.report.analyze_captured` (definitions in ``docs/sinks.md``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gated_attention.analysis.probe import capture_hooks, capture_model
from gated_attention.analysis.report import analyze_captured
from gated_attention.train.callbacks import TrainerCallback

if TYPE_CHECKING:
    from gated_attention.train.trainer import Trainer

GU_SEQ_LEN = 64
"""Gu et al. measure the sink rate on sequences of T = 64 tokens."""


def _argmax_where(h: torch.Tensor) -> tuple[float, int, int]:
    """Largest ``|h|`` of a ``(B, T, d)`` tensor and its ``(token, channel)``."""
    a = h.detach().abs().double()
    flat = int(a.flatten().argmax())
    _, T, d = a.shape
    token, channel = divmod(flat % (T * d), d)
    return float(a.flatten()[flat]), token, channel


@torch.no_grad()
def probe_metrics(
    model: nn.Module, input_ids: torch.Tensor, eps: float = 0.3, short_len: int = GU_SEQ_LEN
) -> dict[str, Any]:
    """Sink, residual and gate metrics of ``model`` on ``input_ids`` ``(B, T)`` as a flat dict.

    Keys (per-layer lists have one entry per decoder block):

    - ``f_attn``, ``f_attn_layers``: first-token mass (attention on position 0, mean over
      queries and heads), its mean over layers; ``causal_floor`` (``H_T / T``) and ``f_attn_ratio``.
    - ``sink_rate``, ``sink_rate_layers``: share of heads with ``alpha_1 > eps`` at length ``T``;
      ``sink_rate_short``, ``sink_rate_short_layers`` the same on the first ``short_len`` tokens
      (Gu et al.'s ``T = 64``; absent when ``T <= short_len``); ``alpha_max`` the largest
      per-head ``alpha_1``.
    - ``resid_max_layers``, ``resid_max_where`` (``[token, channel]``): the largest ``|h|`` of each
      block's residual output and where it sits; ``m_act`` their mean (the paper's M-Act).
    - ``embed_max``, ``embed_max_where``: the same for the token embeddings (the residual stream
      before the first block), reported apart because large embeddings are not the spikes the
      paper means; ``spike_max_layers`` the largest ``|h_l - h_embed|`` per layer (what the blocks
      wrote) and ``m_act_blocks`` its mean.
    - ``gate_mean``, ``gate_mean_layers``: mean gate score (only for gated models).
    """
    with capture_hooks(model, ["layers.0.hook_resid_pre"]) as store:
        captured = capture_model(model, input_ids)
    report = analyze_captured(captured, eps=eps)
    ftm, sink, massive = report.first_token_mass, report.sink, report.massive
    embed = store["layers.0.hook_resid_pre"][0].float().cpu()
    e_max, e_tok, e_ch = _argmax_where(embed)
    where, spikes = [], []
    for h in captured.hidden:
        _, tok, ch = _argmax_where(h)
        where.append([tok, ch])
        spikes.append(float((h - embed).abs().max()))
    out: dict[str, Any] = {
        "f_attn": ftm.mean,
        "f_attn_layers": ftm.per_layer_mean,
        "causal_floor": ftm.floor,
        "f_attn_ratio": ftm.ratio_to_floor,
        "sink_rate": sink.rate,
        "sink_rate_layers": sink.per_layer_rate,
        "alpha_max": max(max(row) for row in sink.per_layer_head_alpha),
        "resid_max_layers": massive.max_abs_per_layer,
        "resid_max_where": where,
        "m_act": massive.m_act,
        "embed_max": e_max,
        "embed_max_where": [e_tok, e_ch],
        "spike_max_layers": spikes,
        "m_act_blocks": sum(spikes) / len(spikes),
    }
    if input_ids.shape[1] > short_len:
        short = analyze_captured(capture_model(model, input_ids[:, :short_len]), eps=eps).sink
        out["sink_rate_short"] = short.rate
        out["sink_rate_short_layers"] = short.per_layer_rate
    if report.gates is not None:
        out["gate_mean"] = report.gates.mean
        out["gate_mean_layers"] = report.gates.per_layer_mean
    return out


def held_out_batch(trainer: Trainer, batch_size: int) -> torch.Tensor:
    """The first ``batch_size`` validation windows of the run ``(B, T)``: fixed for the whole
    run (and the same ones offline analysis of the run reads first)."""
    batches = trainer.data.val.iter_eval_batches(batch_size, 1)
    return torch.cat([ids for ids, _ in batches], dim=0)[:batch_size]


class SinkProbe(TrainerCallback):
    """Every ``every`` steps, :func:`probe_metrics` on a fixed held-out batch of ``batch_size``
    sequences, written to ``metrics.jsonl`` as ``{"kind": "probe", "step", "tokens", ...,
    "probe_seconds"}``. A fresh run is also probed before its first step (step 0).

    Runs on every rank (all ranks take part in an FSDP forward); rank 0 writes. Its own cost is
    ``probe_seconds`` per record (``benchmarks/probe_cost.py`` relates it to the step time).
    """

    def __init__(self, every: int = 50, batch_size: int = 8, eps: float = 0.3) -> None:
        if every < 1 or batch_size < 1:
            raise ValueError(
                f"SinkProbe needs every >= 1 and batch_size >= 1, got {every} and {batch_size}"
            )
        self.every, self.batch_size, self.eps = every, batch_size, eps
        self.input_ids: torch.Tensor | None = None
        self.pending: list[dict[str, Any]] = []

    def measure(self, trainer: Trainer) -> dict[str, Any]:
        """One probe record at the trainer's current step."""
        start = time.perf_counter()
        model = trainer.model
        was_training = model.training
        try:
            metrics = probe_metrics(model, self.input_ids.to(trainer.device), self.eps)
        finally:
            model.train(was_training)
        record = {"kind": "probe", "step": trainer.step, "tokens": trainer.tokens_seen}
        return record | metrics | {"probe_seconds": time.perf_counter() - start}

    def on_train_start(self, trainer: Trainer) -> None:
        self.input_ids = held_out_batch(trainer, self.batch_size)
        if trainer.step == 0:
            # The metrics log opens after this callback starts: hold the record until then.
            self.pending.append(self.measure(trainer))

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if trainer.step % self.every == 0 or trainer.step == trainer.cfg.train.steps:
            self.pending.append(self.measure(trainer))
        if trainer.metrics is not None:
            for probe in self.pending:
                trainer.metrics.write(probe)
        self.pending.clear()
