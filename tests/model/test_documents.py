"""Packed documents: attention stays within each document, equal to running each one alone."""

import pytest
import torch

from gated_attention import GateConfig, GatedLM, MoEConfig
from gated_attention.config import NormalizerConfig
from gated_attention.ops.attention import (
    attention,
    causal_mask,
    document_causal_mask,
    document_positions,
    packed_document_ids,
    separated_document_ids,
)
from tests.conftest import small_cfg

TOL = 1e-5
# Two packed rows of 23 tokens: odd document lengths, a one-token document, different splits.
SPLITS = ((5, 11, 7), (1, 9, 13))


def _model(**overrides) -> GatedLM:
    model = GatedLM(small_cfg(**overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _packed(vocab: int = 97) -> tuple[torch.Tensor, list[list[torch.Tensor]], torch.Tensor]:
    """Token rows ``(2, 23)``, each row's documents, and positions restarting per document."""
    docs = [[torch.randint(0, vocab, (n,)) for n in split] for split in SPLITS]
    ids = torch.stack([torch.cat(row) for row in docs])
    positions = torch.stack([torch.cat([torch.arange(len(d)) for d in row]) for row in docs])
    return ids, docs, positions


def _alone(model, docs: list[list[torch.Tensor]]) -> torch.Tensor:
    """Logits of every document run on its own, concatenated back into packed rows."""
    with torch.no_grad():
        rows = [torch.cat([model(d[None]).logits[0] for d in row]) for row in docs]
    return torch.stack(rows)


def test_document_ids_and_positions_from_restarting_positions():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    docs = packed_document_ids(positions)
    assert docs.tolist() == [[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 0, 0]]
    assert torch.equal(document_positions(docs), positions)
    mask = document_causal_mask(docs)[:, 0]
    expected = (docs[:, :, None] == docs[:, None, :]) & torch.ones(6, 6, dtype=bool).tril()
    assert torch.equal(mask, expected)
    assert torch.equal(document_causal_mask(docs[1:])[0, 0], torch.ones(6, 6, dtype=bool).tril())


def test_document_ids_from_end_of_document_tokens():
    eos = 1
    ids = torch.tensor([[0, 5, 6, 1, 7, 1, 8, 9], [5, 5, 5, 5, 5, 5, 5, 1]])
    docs = separated_document_ids(ids, eos)
    assert docs.tolist() == [[0, 0, 0, 0, 1, 1, 2, 2], [0] * 8]
    assert document_positions(docs)[0].tolist() == [0, 1, 2, 3, 0, 1, 0, 1]


@pytest.mark.parametrize("gate", GateConfig.names())
def test_packed_rows_equal_each_document_alone_for_every_gate(gate):
    model = _model(gate=gate)  # GQA: 4 query heads over 2 KV heads
    ids, docs, positions = _packed()
    want = _alone(model, docs)
    with torch.no_grad():
        by_positions = model(ids, position_ids=positions).logits
        by_documents = model(ids, document_ids=packed_document_ids(positions)).logits
    torch.testing.assert_close(by_positions, want, rtol=0, atol=TOL)
    torch.testing.assert_close(by_documents, want, rtol=0, atol=TOL)


@pytest.mark.parametrize("kind", NormalizerConfig.kinds())
def test_packed_rows_equal_each_document_alone_for_every_normalizer(kind):
    model = _model(gate="sdpa-elementwise", normalizer=kind)
    ids, docs, positions = _packed()
    want = _alone(model, docs)
    with torch.no_grad():
        got = model(ids, position_ids=positions).logits
    torch.testing.assert_close(got, want, rtol=0, atol=TOL)


@pytest.mark.parametrize("backend", ["sdpa", "sdpa_fp32", "matmul", "eager"])
def test_packed_rows_equal_each_document_alone_on_every_backend(backend):
    model = _model(gate="sdpa-elementwise", num_key_value_heads=1)  # GQA g = 4
    for layer in model.layers:
        layer.self_attn.attn_backend = backend
    ids, docs, positions = _packed()
    want = _alone(model, docs)
    with torch.no_grad():
        got = model(ids, position_ids=positions).logits
    torch.testing.assert_close(got, want, rtol=0, atol=TOL)


@pytest.mark.slow
def test_packed_moe_and_loss_and_gradients_equal_each_document_alone():
    moe = MoEConfig(num_experts=4, top_k=2, expert_intermediate_size=8)
    model = _model(gate="sdpa-headwise", moe=moe)
    ids, docs, positions = _packed()
    torch.testing.assert_close(
        model(ids, position_ids=positions).logits.detach(), _alone(model, docs), rtol=0, atol=TOL
    )
    # The gradient of a packed row's loss is the gradient of its documents' summed token losses.
    model.train()
    logits = model(ids, document_ids=packed_document_ids(positions)).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="sum")
    (grad,) = torch.autograd.grad(loss, model.layers[0].self_attn.qkv_proj.weight)
    total = 0
    for row in docs:
        for d in row:
            out = model(d[None]).logits[0]
            total = total + torch.nn.functional.cross_entropy(out, d, reduction="sum")
    (want,) = torch.autograd.grad(total, model.layers[0].self_attn.qkv_proj.weight)
    torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "matmul", "eager"])
def test_document_mask_matches_a_float64_loop_reference(backend):
    B, T, H, K, D = 2, 23, 4, 2, 6
    q, k, v = (torch.randn(B, T, n, D, dtype=torch.float64, requires_grad=True) for n in (H, K, K))
    _, _, positions = _packed()
    mask = document_causal_mask(packed_document_ids(positions))
    out = attention(q, k, v, mask, True, None, backend)
    # Reference: each query attends to the earlier keys of its own document, from SPLITS alone.
    want = torch.zeros(B, T, H, D, dtype=torch.float64)
    for b, split in enumerate(SPLITS):
        start = 0
        for n in split:
            for t in range(start, start + n):
                for h in range(H):
                    keys = slice(start, t + 1)
                    scores = k[b, keys, h // (H // K)] @ q[b, t, h] / D**0.5
                    want[b, t, h] = torch.softmax(scores, 0) @ v[b, keys, h // (H // K)]
            start += n
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    wants = torch.autograd.grad(want.square().sum(), (q, k, v))
    for got, ref in zip(grads, wants):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)


def test_one_document_per_row_keeps_the_plain_causal_path():
    model = _model(gate="sdpa-elementwise")
    ids = torch.randint(0, 97, (2, 9))
    positions = torch.arange(9)[None].expand(2, 9)
    with torch.no_grad():
        assert torch.equal(model(ids, position_ids=positions).logits, model(ids).logits)
    assert causal_mask(9, 9) is None


def test_documents_need_a_call_without_cached_tokens():
    model = _model()
    ids, _, _ = _packed()
    out = model(ids[:, :4], use_cache=True)
    with pytest.raises(ValueError, match="without cached tokens"):
        model(
            ids[:, 4:],
            past_key_values=out.past_key_values,
            document_ids=torch.zeros_like(ids[:, 4:]),
        )
    with pytest.raises(ValueError, match="shape"):
        model(ids, document_ids=torch.zeros(1, 3, dtype=torch.long))
