"""Analyse one trained run of a study: sinks, massive activations, gates, backcopy splits,
small attention maps and the loss curve, as a JSON-ready dict."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from gated_attention.analysis import (
    analyze_captured,
    attention_probs_from_qk,
    effective_attention,
    head_averaged_map,
    key_and_row_mass_from_qk,
)
from gated_attention.analysis.probe import capture_model
from gated_attention.analysis.training import emergence, read_probes
from gated_attention.train import load_model, read_metrics
from gated_attention.train.config import RunConfig
from gated_attention.train.datasets import build_data


def _max_attention_logit(q: list[torch.Tensor], k: list[torch.Tensor], scale: float) -> float:
    """Largest |q.k| * scale over layers (an instability indicator, paper section 4.4)."""
    best = 0.0
    for ql, kl in zip(q, k):
        g = ql.shape[2] // kl.shape[2]
        kk = kl.repeat_interleave(g, dim=2)
        logits = torch.einsum("bthd,bshd->bhts", ql, kk) * scale
        best = max(best, float(logits.abs().max()))
    return best


def analyze_run(
    run_dir: str | Path,
    cfg: RunConfig,
    batches: int = 1,
    batch_size: int = 16,
    map_tokens: int = 48,
    keep_maps: bool = True,
) -> dict[str, Any]:
    """Metrics of the trained model in ``run_dir`` on its validation data."""
    run_dir = Path(run_dir)
    model = load_model(run_dir).eval()
    data = build_data(cfg.data)
    ids = torch.cat([x for x, _ in data.val.iter_eval_batches(batch_size, batches)], dim=0)[
        : batches * batch_size
    ]
    trigger = data.task.trigger_mask(ids) if data.task is not None else None
    captured = capture_model(model, ids, query_mask=trigger)
    report = analyze_captured(captured)
    out: dict[str, Any] = {
        "summary": report.summary(),
        "report": report.to_dict(),
        "max_attention_logit": _max_attention_logit(captured.q, captured.k, captured.scale),
        "analysis_tokens": int(ids.numel()),
    }
    out.update(run_history(run_dir))
    if trigger is not None:
        out["backcopy"] = _backcopy_split(captured, trigger, data.task)
    if keep_maps:
        out["maps"] = _attention_maps(captured, map_tokens)
    return out


def run_history(run_dir: str | Path) -> dict[str, Any]:
    """What a run logged while training: the last validation loss and perplexity, the loss
    curve and, when a :class:`~gated_attention.analysis.training.SinkProbe` ran, its probe
    records and their :func:`~gated_attention.analysis.training.emergence` summary."""
    path = Path(run_dir) / "metrics.jsonl"
    out: dict[str, Any] = {}
    evals = read_metrics(path, "eval")
    if evals:
        out["val_loss"] = evals[-1]["val_loss"]
        out["val_ppl"] = math.exp(min(evals[-1]["val_loss"], 50))
    out["loss_curve"] = [(r["step"], r["loss"]) for r in read_metrics(path)]
    probes = read_probes(run_dir)
    if probes:
        out["probes"] = probes
        out["emergence"] = emergence(probes)
    return out


def _backcopy_split(captured: Any, trigger: torch.Tensor, task: Any) -> dict[str, Any]:
    """BOS attention and gate scores on trigger vs non-trigger queries, per layer.

    On trigger queries the model must copy (an active head); elsewhere the head should be
    dormant: a softmax head parks its attention on BOS, a gated head can close its gate, and a
    normaliser with null attention (``docs/normalizers.md``) can give the row to its sink column.
    Weights are the layer's own normaliser's weights on the real tokens; ``null_*`` is the mean
    ``1 - row mass`` (present only for kinds whose rows never exceed 1).
    """
    query = torch.ones_like(trigger)
    query[:, 0] = False  # position 0 is BOS itself
    trig, other = trigger & query, ~trigger & query
    norms = captured.normalizers or [None] * captured.n_layers
    per_layer = []
    for layer, (q, k) in enumerate(zip(captured.q, captured.k)):
        norm = norms[layer]
        bos, rows = key_and_row_mass_from_qk(
            q, k, key_index=0, scale=captured.scale, normalizer=norm
        )  # (B, H, T) each
        head_mean = bos.mean(dim=1)
        entry = {
            "layer": layer,
            "bos_attention_trigger": float(head_mean[trig].mean()) if trig.any() else None,
            "bos_attention_other": float(head_mean[other].mean()) if other.any() else None,
            # per head on non-trigger queries: the most sink-like head of the layer
            "bos_attention_other_max_head": float(bos.permute(0, 2, 1)[other].mean(0).max())
            if other.any()
            else None,
        }
        if norm is not None:
            row_mean = rows.mean(dim=1)  # (B, T)
            entry["row_mass_trigger"] = float(row_mean[trig].mean()) if trig.any() else None
            entry["row_mass_other"] = float(row_mean[other].mean()) if other.any() else None
            if norm.kind.null_attention:
                for key in ("trigger", "other"):
                    row = entry[f"row_mass_{key}"]
                    entry[f"null_{key}"] = None if row is None else 1.0 - row
        if captured.gate_scores is not None:
            g = captured.gate_scores[layer].mean(dim=-1)  # (B, T, H)
            entry["gate_trigger"] = float(g[trig].mean()) if trig.any() else None
            entry["gate_other"] = float(g[other].mean()) if other.any() else None
            entry["gate_other_min_head"] = float(g[other].mean(0).min()) if other.any() else None
            # what actually reaches the output: BOS attention times the head's mean gate
            eff = (bos * g.permute(0, 2, 1)).mean(dim=1)  # (B, T)
            entry["effective_bos_trigger"] = float(eff[trig].mean()) if trig.any() else None
            entry["effective_bos_other"] = float(eff[other].mean()) if other.any() else None
        per_layer.append(entry)
    return {
        "per_layer": per_layer,
        "trigger_share": float(trig.float().sum() / query.float().sum()),
        "optimal_loss": float(task.optimal_loss()),
        "no_copy_loss": float(task.bigram_loss_floor()),
    }


def _attention_maps(captured: Any, tokens: int) -> dict[str, Any]:
    """Head-averaged attention of the first sequence (first ``tokens`` tokens) per layer (the
    layer's normaliser's weights on the real tokens), and the gate-weighted "effective" map when
    the model has a G1 gate."""
    maps = {}
    norms = captured.normalizers or [None] * captured.n_layers
    for layer, (q, k) in enumerate(zip(captured.q, captured.k)):
        q1, k1 = q[:1, :tokens], k[:1, :tokens]
        probs = attention_probs_from_qk(q1, k1, scale=captured.scale, normalizer=norms[layer])
        entry = {"probs": head_averaged_map(probs)[0].tolist()}
        if captured.gate_scores is not None and captured.z_before is not None:
            gate = captured.gate_scores[layer][:1, :tokens]
            entry["effective"] = head_averaged_map(effective_attention(probs, gate))[0].tolist()
        maps[str(layer)] = entry
    return maps
