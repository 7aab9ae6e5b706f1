"""int8 W8A8 fake quantisation (analysis.quantization) against a plain float64 reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gated_attention import GatedLM
from gated_attention.analysis.quantization import fake_quant_int8, linear_input_peaks, w8a8_copy
from tests.conftest import small_cfg


def _reference(x: torch.Tensor) -> torch.Tensor:
    """Element by element in float64: scale = max|x| / 127, q = round(clamp(x / s)) * s."""
    flat = x.double().flatten().tolist()
    s = max(abs(v) for v in flat) / 127.0
    out = [round(min(max(v / s, -127.0), 127.0)) * s for v in flat]
    return torch.tensor(out, dtype=torch.float64).view(x.shape)


def test_fake_quant_matches_float64_reference_on_odd_shapes():
    torch.manual_seed(0)
    for shape in [(63,), (3, 7, 5), (2, 63, 11)]:
        x = torch.randn(shape, dtype=torch.float64) * 3 + 0.1
        got = fake_quant_int8(x)
        assert got.dtype == x.dtype and got.shape == x.shape
        torch.testing.assert_close(got, _reference(x), rtol=0, atol=1e-12)
        # at most 255 levels, error at most half a step
        step = x.abs().max() / 127
        assert got.unique().numel() <= 255
        assert (got - x).abs().max() <= step / 2 + 1e-12
        x32 = x.float()
        torch.testing.assert_close(
            fake_quant_int8(x32).double(), _reference(x32), atol=1e-6, rtol=0
        )


def test_one_huge_value_crushes_the_rest():
    torch.manual_seed(1)
    x = torch.randn(1, 63, 17)
    spiked = x.clone()
    spiked[0, 0, 0] = 1000.0
    err = (fake_quant_int8(x) - x)[0, 1:].abs().mean()
    err_spiked = (fake_quant_int8(spiked) - spiked)[0, 1:].abs().mean()
    assert err_spiked > 20 * err


def test_w8a8_copy_quantises_weights_and_inputs_and_leaves_the_model():
    torch.manual_seed(2)
    lin = nn.Linear(13, 7)
    q = w8a8_copy(lin)
    x = torch.randn(5, 13) * 2
    expected = fake_quant_int8(x) @ fake_quant_int8(lin.weight).T + lin.bias
    torch.testing.assert_close(q(x), expected)
    assert not torch.equal(q.weight, lin.weight)
    torch.testing.assert_close(lin(x), x @ lin.weight.T + lin.bias)  # the original is untouched


def _tiny_lm() -> GatedLM:
    # initialised wide: the logits, hence the loss, depend on every layer
    torch.manual_seed(3)
    return GatedLM(small_cfg(vocab_size=64, initializer_range=0.3)).eval()


def _spike(_module: nn.Module, args: tuple) -> tuple:
    x = args[0].clone()
    x[:, 0, 3] += 500.0  # token 0, one channel: the massive-activation pattern
    return (x, *args[1:])


@torch.no_grad()
def _w8a8_loss_increase(model: GatedLM, ids: torch.Tensor, labels: torch.Tensor) -> float:
    base = float(model(ids, labels=labels).loss)
    return float(w8a8_copy(model)(ids, labels=labels).loss) - base


def _own_predictions(model: GatedLM, ids: torch.Tensor) -> torch.Tensor:
    """Labels the float model predicts best (its greedy next tokens), so that a random model
    has a loss that any perturbation raises."""
    with torch.no_grad():
        pred = model(ids).logits.argmax(-1)
    return torch.cat([ids[:, :1], pred[:, :-1]], dim=1)


def test_a_massive_activation_makes_w8a8_lose_more():
    """The same model with one huge FFN activation (token 0, one channel, as the paper's massive
    activations, docs/paper.md section 5) loses more under W8A8 than without it: per-tensor
    scales crush every other token's activations to a few levels."""
    torch.manual_seed(4)
    ids = torch.randint(0, 64, (4, 33))
    calm, spiky = _tiny_lm(), _tiny_lm()
    spiky.layers[0].mlp.down_proj.register_forward_pre_hook(_spike)
    d_calm = _w8a8_loss_increase(calm, ids, _own_predictions(calm, ids))
    d_spiky = _w8a8_loss_increase(spiky, ids, _own_predictions(spiky, ids))
    assert abs(d_calm) < 0.05
    assert d_spiky > d_calm + 0.1, (d_calm, d_spiky)


def test_linear_input_peaks_find_the_spiked_input():
    """max|x| / mean|x| per Linear input, against the ratio computed here from a captured input;
    the spiked down_proj stands out, and the hooks are removed afterwards."""
    torch.manual_seed(5)
    ids = torch.randint(0, 64, (2, 21))
    model = _tiny_lm()
    model.layers[0].mlp.down_proj.register_forward_pre_hook(_spike)
    seen = {}

    def capture(_module: nn.Module, args: tuple) -> None:
        seen["x"] = args[0].detach().double()

    model.layers[1].self_attn.o_proj.register_forward_pre_hook(capture)
    peaks = linear_input_peaks(model, ids)
    x = seen["x"].abs()
    assert peaks["layers.1.self_attn.o_proj"] == pytest.approx(float(x.max() / x.mean()), rel=1e-5)
    assert max(peaks, key=peaks.get) == "layers.0.mlp.down_proj"
    assert peaks["layers.0.mlp.down_proj"] > 10 * peaks["layers.1.self_attn.o_proj"]
    assert len(peaks) == sum(isinstance(m, nn.Linear) for m in model.modules())
    n_hooks = sum(len(m._forward_pre_hooks) for m in model.modules())
    linear_input_peaks(model, ids)
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == n_hooks
