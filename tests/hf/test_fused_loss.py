"""The ``transformers`` class computes its training loss chunk by chunk (``ops.loss``): same
value and gradients as ``transformers``' ``ForCausalLMLoss`` on the logits (which computes in
float32 even for float64 logits, hence float32 tolerances)."""

import torch

from gated_attention import GatedLM
from gated_attention.hf.modeling import GatedAttentionForCausalLM
from tests.conftest import small_cfg


def _pair():
    model = GatedAttentionForCausalLM.from_gated_lm(
        GatedLM(small_cfg(gate="sdpa-elementwise")).double()
    )
    ids = torch.randint(0, 97, (2, 33))
    labels = ids.clone()
    labels[1, :4] = -100
    return model, ids, labels


def test_training_mode_fuses_the_loss_and_skips_the_logits():
    model, ids, labels = _pair()
    model.train()
    fused = model(ids, labels=labels)
    assert fused.logits is None
    plain = model(ids, labels=labels, return_logits=True)
    assert plain.logits.shape == (2, 33, 97)
    torch.testing.assert_close(fused.loss, plain.loss, rtol=1e-6, atol=1e-7, check_dtype=False)
    g_fused = torch.autograd.grad(fused.loss, model.lm_head.weight)[0]
    g_plain = torch.autograd.grad(plain.loss, model.lm_head.weight)[0]
    torch.testing.assert_close(g_fused, g_plain, rtol=1e-5, atol=1e-8)
    model.eval()  # evaluation keeps transformers' behaviour: logits and loss
    out = model(ids, labels=labels)
    assert out.logits is not None
    torch.testing.assert_close(out.loss, plain.loss, rtol=1e-6, atol=1e-7, check_dtype=False)


def test_loss_keywords_of_transformers_are_honoured():
    model, ids, labels = _pair()
    model.train()
    kwargs = {"num_items_in_batch": torch.tensor(40), "shift_labels": labels.roll(-1, 1)}
    fused = model(ids, labels=labels, **kwargs).loss
    plain = model(ids, labels=labels, return_logits=True, **kwargs).loss
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-7, check_dtype=False)
