"""Our model's probe (hook points) against the Hugging Face path on the same weights."""

from __future__ import annotations

import pytest
import torch

from gated_attention import GatedLM
from gated_attention.analysis import analyze_captured, collect_hf
from gated_attention.analysis.probe import capture_hooks, capture_model
from tests.conftest import small_cfg


@pytest.mark.parametrize("gate", ["none", "sdpa-elementwise", "sdpa-headwise"])
def test_own_probe_and_hf_probe_agree(gate):
    from gated_attention.hf import GatedAttentionForCausalLM

    torch.manual_seed(1)
    model = GatedLM(small_cfg(gate=gate)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    hf = GatedAttentionForCausalLM.from_gated_lm(model).eval()
    hf.set_attn_implementation("eager")
    ids = torch.randint(0, 97, (3, 19))
    ours = analyze_captured(capture_model(model, ids)).summary()
    theirs = analyze_captured(collect_hf(hf, ids)).summary()
    for key in ("f_attn", "causal_floor", "sink_rate", "m_act"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-7), key


def test_probe_leaves_no_hooks_and_captures_every_layer():
    model = GatedLM(small_cfg(gate="sdpa-elementwise"))
    ids = torch.randint(0, 97, (2, 9))
    before = model(ids).logits
    captured = capture_model(model, ids)
    assert captured.n_layers == 2 and len(captured.q) == 2 and len(captured.gate_scores) == 2
    assert captured.q[0].shape == (2, 9, 4, 6) and captured.k[0].shape == (2, 9, 2, 6)
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    assert hooks == 0
    torch.testing.assert_close(model(ids).logits, before)
    # the residual taps equal the model's own hidden states (final norm not applied)
    with capture_hooks(model, ["hook_resid_post"]) as store:
        model(ids)
    torch.testing.assert_close(store["hook_resid_post"][-1], captured.hidden[-1])
