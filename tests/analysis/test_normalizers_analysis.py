"""Analysis under non-softmax normalisers: real-token weights recomputed through the op's own
normaliser, first-token mass, sink rate and null attention (the sink's / "+1"'s share)."""

import pytest
import torch

from gated_attention import GatedLM
from gated_attention.analysis import (
    Captured,
    analyze_captured,
    attention_probs_from_qk,
    first_token_mass,
    key_and_row_mass_from_qk,
    null_attention,
)
from gated_attention.analysis.probe import capture_hooks, capture_model
from gated_attention.analysis.sinks import null_attention_from_rows
from gated_attention.ops.attention import attention_probabilities
from gated_attention.ops.normalizers import KINDS, Normalizer
from tests.conftest import small_cfg

KIND_NAMES = list(KINDS)
NORMALIZERS = [{"kind": k, "length": 16} if k == "sigmoid" else k for k in KIND_NAMES]


def _normalizer(kind, H=6, K=2, D=10, dtype=torch.float64):
    kind_obj = KINDS[kind]
    cfg = small_cfg(
        num_attention_heads=H,
        num_key_value_heads=K,
        head_dim=D,
        normalizer={"kind": kind, "length": 16} if kind == "sigmoid" else kind,
    )
    params = {
        n: torch.randn(shape, dtype=dtype)
        for n, shape in cfg.normalizer.parameter_shapes(cfg).items()
    }
    return Normalizer(kind_obj, kind_obj.resolve(cfg.normalizer.options, cfg), params)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_recomputed_weights_are_the_ops_weights(kind):
    q = torch.randn(2, 13, 6, 10, dtype=torch.float64)
    k = torch.randn(2, 17, 2, 10, dtype=torch.float64)  # a cached prefix of 4 keys
    norm = _normalizer(kind)
    want = attention_probabilities(q, k, None, True, None, norm)
    for chunk in (None, 5):
        got = attention_probs_from_qk(q, k, query_chunk=chunk, dtype=torch.float64, normalizer=norm)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    col, row = key_and_row_mass_from_qk(
        q, k, 0, query_chunk=4, dtype=torch.float64, normalizer=norm
    )
    torch.testing.assert_close(col, want[..., 0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(row, want.sum(-1), rtol=1e-12, atol=1e-12)


def test_padding_rows_stay_zero_under_a_normalizer():
    q, k = torch.randn(1, 5, 6, 10), torch.randn(1, 5, 2, 10)
    keep = torch.tensor([[False, False, True, True, True]])
    probs = attention_probs_from_qk(
        q, k, attention_mask=keep, normalizer=_normalizer("sink", dtype=torch.float32)
    )
    assert (probs[0, :, :2] == 0).all() and (probs[..., :2] == 0).all()


def _model(normalizer, sink_value=None):
    model = GatedLM(small_cfg(normalizer=normalizer, gate="sdpa-headwise")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for layer in model.layers:
            for name in layer.self_attn.normalizer_params:
                p = getattr(layer.self_attn, name)
                p.normal_(0, 1) if sink_value is None else p.fill_(sink_value)
    return model


@pytest.mark.parametrize("normalizer", NORMALIZERS, ids=KIND_NAMES)
def test_report_reads_real_token_weights_and_null_attention(normalizer):
    model = _model(normalizer)
    ids = torch.randint(0, 97, (3, 21))
    report = analyze_captured(capture_model(model, ids), query_chunk=8)
    with capture_hooks(model, ["self_attn.hook_q", "self_attn.hook_k"]) as store, torch.no_grad():
        model(ids)
    with torch.no_grad():
        maps = [
            attention_probabilities(q, k, None, True, attn.scaling, attn.normalizer())
            for q, k, attn in zip(
                store["self_attn.hook_q"],
                store["self_attn.hook_k"],
                [layer.self_attn for layer in model.layers],
            )
        ]
    f_attn = sum(first_token_mass(m).mean for m in maps) / len(maps)
    assert report.first_token_mass.mean == pytest.approx(f_attn, rel=1e-5)
    summary = report.summary()
    if model.cfg.normalizer.is_softmax:
        assert report.null_attention is None and "null_mass" not in summary
        assert "normalizer" not in report.meta
        return
    row = sum(float(m.sum(-1).double().mean()) for m in maps) / len(maps)
    null = report.null_attention
    assert summary["normalizer"] == null.kind == model.cfg.normalizer.kind
    assert null.row_mass == pytest.approx(row, rel=1e-5)
    if KINDS[null.kind].null_attention:
        assert null.null_mass == pytest.approx(1 - row, rel=1e-4) and 0 < null.null_mass < 1
    else:
        assert null.null_mass is None and summary["null_mass"] is None
    for name in model.layers[0].self_attn.normalizer_params:
        values = [getattr(layer.self_attn, name).detach() for layer in model.layers]
        assert len(null.parameters[name]) == len(values)
        if values[0].dim() == 1:
            mean = float(torch.stack(values).double().mean())
            assert summary[f"{name}_mean"] == pytest.approx(mean, rel=1e-6)
    # the same numbers from captured maps (what a transformers probe with output_attentions gives)
    captured = capture_model(model, ids)
    from_maps = analyze_captured(
        Captured(
            n_layers=captured.n_layers,
            seq_len=captured.seq_len,
            hidden=captured.hidden,
            probs=[m.float() for m in maps],
            normalizers=captured.normalizers,
        )
    )
    assert from_maps.null_attention.row_mass == pytest.approx(null.row_mass, rel=1e-5)
    assert from_maps.sink.rate == report.sink.rate


def test_sink_limits_recover_softmax_and_full_null_attention():
    """A very negative sink is softmax (same F-Attn, no null attention); a very large one takes
    every query's attention (null mass 1, F-Attn 0)."""
    ids = torch.randint(0, 97, (2, 15))
    softmax = _model("softmax")
    low = _model("sink", sink_value=-1e4)
    high = _model("sink", sink_value=1e4)
    state = {k: v for k, v in softmax.state_dict().items()}
    for m in (low, high):
        m.load_state_dict(state, strict=False)
    base = analyze_captured(capture_model(softmax, ids))
    r_low = analyze_captured(capture_model(low, ids))
    assert r_low.first_token_mass.mean == pytest.approx(base.first_token_mass.mean, rel=1e-6)
    assert r_low.null_attention.null_mass == pytest.approx(0.0, abs=1e-6)
    assert r_low.null_attention.first_token_share == pytest.approx(
        base.first_token_mass.mean, rel=1e-5
    )
    r_high = analyze_captured(capture_model(high, ids))
    assert r_high.null_attention.null_mass == pytest.approx(1.0, abs=1e-6)
    assert r_high.first_token_mass.mean == pytest.approx(0.0, abs=1e-6)
    assert r_high.null_attention.parameter_means["sinks"] == 1e4


def test_null_attention_from_rows():
    p0 = torch.tensor([[[0.5, 0.0, 0.2]]])
    rows = torch.tensor([[[0.5, 0.0, 0.8]]])  # the middle row attends to nothing
    r = null_attention_from_rows(p0, rows)
    assert r.row_mass == pytest.approx(1.3 / 3)
    assert r.null_mass == pytest.approx(1 - 1.3 / 3)
    assert r.first_token_share == pytest.approx((1.0 + 0.25) / 2)  # rows with weight only
    sig = null_attention(torch.full((1, 2, 3, 3), 0.6), null_defined=False)
    assert sig.null_mass is None and sig.per_head_null_mass is None
    assert sig.row_mass == pytest.approx(1.8)
