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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gated_attention.analysis.attention import key_mass_from_qk
from gated_attention.analysis.probe import capture_hooks, capture_model
from gated_attention.analysis.report import analyze_captured
from gated_attention.train.callbacks import TrainerCallback, read_metrics

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
    - ``gate_mean``, ``gate_mean_layers``: mean gate score (only for gated models);
      ``f_attn_gated``, ``f_attn_gated_layers``: with a G1 gate, the first-token mass weighted by
      the head's mean gate score for each query (how much of token 0 reaches the output).
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
        if captured.z_before is not None:  # a G1 gate: what reaches the output from token 0
            out["f_attn_gated_layers"] = _gated_first_token_mass(captured)
            out["f_attn_gated"] = sum(out["f_attn_gated_layers"]) / captured.n_layers
    return out


def _gated_first_token_mass(captured: Any) -> list[float]:
    """Per layer, the attention on token 0 times the head's mean G1 gate score for that query,
    averaged over queries and heads: the share of token 0 that reaches the output."""
    norms = captured.normalizers or [None] * captured.n_layers
    out = []
    for q, k, gate, norm in zip(captured.q, captured.k, captured.gate_scores, norms):
        p0 = key_mass_from_qk(q, k, 0, captured.scale, normalizer=norm)  # (B, H, T)
        g = gate.mean(dim=-1).permute(0, 2, 1)  # (B, T, H) -> (B, H, T)
        out.append(float((p0 * g).mean()))
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


def read_probes(run_dir: str | Path) -> list[dict[str, Any]]:
    """The probe records a :class:`SinkProbe` wrote to ``run_dir/metrics.jsonl`` (may be [])."""
    path = Path(run_dir) / "metrics.jsonl"
    return read_metrics(path, "probe") if path.exists() else []


def emergence(probes: list[dict[str, Any]], target: float = 2.0) -> dict[str, Any]:
    """How far and how fast a run's first-token mass rose above its causal floor.

    From the probe records (in step order): the last probe's ``f_attn_ratio``, its largest
    per-layer ratio (``ratio_max_layer``), ``sink_rate``, ``sink_rate_short``, ``alpha_max``,
    ``m_act``, ``m_act_blocks`` and ``embed_max``; ``slope``, the least-squares slope of the ratio
    against tokens over the second half of the run (per million tokens); and ``tokens_to_target``:
    the first tokens seen at which the ratio reached ``target``, else a linear extrapolation of
    that slope (``None`` when the ratio is not rising). The extrapolation is a rough guide: sinks
    need not grow linearly.
    """
    if not probes:
        return {}
    last = probes[-1]
    floor = last["causal_floor"]
    out = {k: last.get(k) for k in _EMERGENCE_KEYS}
    out["tokens"] = last["tokens"]
    out["ratio_max_layer"] = max(last["f_attn_layers"]) / floor
    tail = probes[len(probes) // 2 :]
    x = [p["tokens"] / 1e6 for p in tail]
    y = [p["f_attn_ratio"] for p in tail]
    slope = None
    if len(tail) >= 2 and max(x) > min(x):
        mx, my = sum(x) / len(x), sum(y) / len(y)
        slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
    out["slope"] = slope
    reached = next((p["tokens"] for p in probes if p["f_attn_ratio"] >= target), None)
    if reached is None and slope is not None and slope > 0:
        reached = last["tokens"] + (target - last["f_attn_ratio"]) / slope * 1e6
    out["tokens_to_target"] = reached
    out["target"] = target
    return out


_EMERGENCE_KEYS = (
    "f_attn_ratio",
    "sink_rate",
    "sink_rate_short",
    "alpha_max",
    "m_act",
    "m_act_blocks",
    "embed_max",
    "gate_mean",
    "f_attn_gated",
)
