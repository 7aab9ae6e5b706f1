"""Every plot function writes a non-empty PNG from dataclasses, dict forms and plain lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gated_attention.analysis import (
    Captured,
    analyze_captured,
    attention_probs_from_qk,
    effective_attention,
    first_token_mass_by_layer,
    gate_statistics,
    massive_activations,
    plot_attention_maps,
    plot_first_token_mass,
    plot_gate_histograms,
    plot_gate_mean_per_layer,
    plot_loss_curves,
    plot_max_activation,
)

B, T, H, K, D, d, L = 1, 12, 4, 2, 8, 16, 3


def synthetic(seed: int, gate_scale: float):
    g = torch.Generator().manual_seed(seed)
    q = [torch.randn(B, T, H, D, generator=g) for _ in range(L)]
    k = [torch.randn(B, T, K, D, generator=g) for _ in range(L)]
    gates = [torch.rand(B, T, H, 1, generator=g) * gate_scale + 0.01 for _ in range(L)]
    hidden = [torch.randn(B, T, d, generator=g) * (1 + 50 * i) for i in range(L)]
    cap = Captured(n_layers=L, seq_len=T, hidden=hidden, q=q, k=k, gate_scores=gates)
    return cap, q, k, gates


def assert_png(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_all_plots_write_pngs(tmp_path: Path) -> None:
    base, q, k, gates = synthetic(0, 0.9)
    gated, *_ = synthetic(1, 0.3)
    reports = {"baseline": analyze_captured(base), "gated": analyze_captured(gated)}
    as_json = {arm: json.loads(json.dumps(r.to_dict())) for arm, r in reports.items()}

    assert_png(plot_first_token_mass(reports, tmp_path / "ftm.png"))
    assert_png(plot_first_token_mass(as_json, tmp_path / "ftm_json.png"))
    probs = [attention_probs_from_qk(qi, ki) for qi, ki in zip(q, k)]
    single = first_token_mass_by_layer(probs)
    assert_png(plot_first_token_mass(single, tmp_path / "ftm_single.png"))
    assert_png(plot_first_token_mass({"a": [0.5, 0.4, 0.3]}, tmp_path / "ftm_list.png", floor=0.2))

    assert_png(plot_max_activation(reports, tmp_path / "massive.png"))
    assert_png(plot_max_activation(massive_activations(base.hidden), tmp_path / "massive1.png"))

    assert_png(plot_gate_histograms(reports, tmp_path / "gate_hist.png"))
    assert_png(plot_gate_histograms(gate_statistics(gates), tmp_path / "gate_hist1.png"))
    assert_png(plot_gate_mean_per_layer(as_json, tmp_path / "gate_mean.png"))

    eff = effective_attention(probs[0], gates[0])
    maps = {
        "baseline, layer 0": (probs[0], None),
        "gated, layer 0": {"probs": probs[0][0, 0], "effective": eff[0, 0]},
        "gated, layer 1 (head mean)": (probs[1], effective_attention(probs[1], gates[1])),
    }
    assert_png(plot_attention_maps(maps, tmp_path / "maps" / "grid.png"))

    curves = {
        "baseline": [(s, 5.0 - 0.01 * s + (0.5 if s == 40 else 0.0)) for s in range(100)],
        "gated": [(s, 5.0 - 0.012 * s) for s in range(100)],
    }
    out = plot_loss_curves(curves, tmp_path / "loss.png", smooth=5)
    assert out == tmp_path / "loss.png"
    assert_png(out)
    assert_png(plot_loss_curves(curves, tmp_path / "loss_log.png", log_y=True))


def test_loss_curves_tell_many_arms_apart(tmp_path, monkeypatch):
    """Past the default 10-colour cycle every curve still gets its own colour and line style."""
    import gated_attention.analysis.plots as plots

    seen = {}

    def keep(fig, path):
        seen["lines"] = [
            (line.get_color(), line.get_linestyle())
            for line in fig.axes[0].get_lines()
            if line.get_label() in curves
        ]
        return Path(path)

    monkeypatch.setattr(plots, "save_figure", keep)
    curves = {f"arm{i}": [(s, 1.0 + i + s / 10) for s in range(4)] for i in range(25)}
    plots.plot_loss_curves(curves, tmp_path / "many.png")
    assert len(seen["lines"]) == 25 and len(set(seen["lines"])) == 25
