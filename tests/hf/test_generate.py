"""transformers' ``generate`` on our wrapper equals ``GatedLM.generate`` (greedy)."""

import pytest
import torch

from gated_attention.hf import GatedAttentionForCausalLM
from tests.hf.helpers import VOCAB, gated_lm


@pytest.mark.parametrize("gate", ["none", "sdpa-elementwise", "sdpa-headwise", "value-elementwise"])
def test_greedy_generate_equals_gated_lm(gate):
    lm = gated_lm(gate=gate)
    model = GatedAttentionForCausalLM.from_gated_lm(lm).eval()
    ids = torch.randint(0, VOCAB, (3, 5))
    expected = lm.generate(ids, max_new_tokens=20)
    out = model.generate(ids, max_new_tokens=20, do_sample=False)
    assert torch.equal(out, expected)
    with_mask = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False
    )
    assert torch.equal(with_mask, expected)


def test_left_padded_batch_generates_what_each_prompt_generates_alone():
    lm = gated_lm(gate="sdpa-elementwise")
    model = GatedAttentionForCausalLM.from_gated_lm(lm, pad_token_id=0).eval()
    a, b = torch.randint(1, VOCAB, (1, 7)), torch.randint(1, VOCAB, (1, 4))
    batch = torch.cat((a, torch.cat((torch.zeros(1, 3, dtype=torch.long), b), dim=1)))
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    out = model.generate(batch, attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert torch.equal(out[0, 7:], lm.generate(a, 12)[0, 7:])
    assert torch.equal(out[1, 7:], lm.generate(b, 12)[0, 4:])


def test_generate_returns_transformers_cache_and_stops_at_eos():
    lm = gated_lm(gate="sdpa-headwise")
    ids = torch.randint(0, VOCAB, (1, 4))
    greedy = lm.generate(ids, 8)
    new = greedy[0, 4:]
    eos = int(new[2])
    stop = 4 + int((new == eos).nonzero()[0]) + 1  # generation ends with the first eos
    model = GatedAttentionForCausalLM.from_gated_lm(lm, eos_token_id=eos).eval()
    out = model.generate(ids, max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
    assert torch.equal(out.sequences, greedy[:, :stop])
    assert type(out.cache).__name__ == "DynamicCache"
    assert out.cache.get_seq_length() == stop - 1  # the last token is never fed back
