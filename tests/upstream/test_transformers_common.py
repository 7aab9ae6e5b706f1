"""``transformers``' own generic model tests (``ModelTesterMixin``, ``ConfigTester``) on our classes.

The mixins come from the ``transformers`` release installed here (``make upstream`` fetches them
from its PyPI sdist, see ``scripts/fetch_upstream_tests.py``) and run unchanged on
:class:`GatedAttentionModel` and :class:`GatedAttentionForCausalLM`, with the small tester sizes
upstream uses (batch 13, sequence 7, vocabulary 99, hidden 32, 2 layers), once per gate:
``none`` (the baseline), ``sdpa-elementwise`` and ``sdpa-headwise`` (the paper's G1 gates).

Every skip reported here is one of upstream's own ``skipTest`` reasons; the one deselected test is
explained in ``conftest.py``. The module skips (with how to fetch) when the upstream files are
absent, and fails instead under ``make test``.
"""

from __future__ import annotations

import unittest
from collections.abc import Iterator
from unittest import mock

import pytest
import torch
from transformers import PreTrainedConfig
from transformers.models.auto import modeling_auto

from gated_attention.hf import GatedAttentionConfig, GatedAttentionForCausalLM, GatedAttentionModel
from tests.upstream._upstream import import_upstream

_modeling_common = import_upstream("test_modeling_common")
_configuration_common = import_upstream("test_configuration_common")
ModelTesterMixin = _modeling_common.ModelTesterMixin
ids_tensor = _modeling_common.ids_tensor
ConfigTester = _configuration_common.ConfigTester


@pytest.fixture(autouse=True, scope="module")
def _auto_mapping_names() -> Iterator[None]:
    """Name our classes in the static Auto mapping tables the mixin consults.

    ``ModelTesterMixin`` decides "base model or LM head" (labels, training, RoPE tests) from
    ``MODEL_MAPPING_NAMES`` / ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``, which list in-tree models only;
    ``AutoModel.register`` fills a different table. Without these entries the training tests see
    no loss and fail for the wrong reason. Restored after the module.
    """
    model_type = GatedAttentionConfig.model_type
    with (
        mock.patch.dict(modeling_auto.MODEL_MAPPING_NAMES, {model_type: "GatedAttentionModel"}),
        mock.patch.dict(
            modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            {model_type: "GatedAttentionForCausalLM"},
        ),
    ):
        yield


class GatedAttentionModelTester:
    """Upstream's small causal-LM tester sizes for our config (GQA: 4 query, 2 KV heads)."""

    def __init__(
        self,
        parent: unittest.TestCase,
        gate: str = "none",
        batch_size: int = 13,
        seq_length: int = 7,
        is_training: bool = True,
        use_input_mask: bool = True,
        use_labels: bool = True,
        vocab_size: int = 99,
        hidden_size: int = 32,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        num_key_value_heads: int = 2,
        head_dim: int = 8,
        intermediate_size: int = 37,
        max_position_embeddings: int = 512,
        initializer_range: float = 0.02,
        pad_token_id: int = 0,
    ) -> None:
        self.parent = parent
        self.gate = gate
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.use_input_mask = use_input_mask
        self.use_labels = use_labels
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.pad_token_id = pad_token_id

    def get_config(self) -> GatedAttentionConfig:
        return GatedAttentionConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            initializer_range=self.initializer_range,
            gate=self.gate,
            pad_token_id=self.pad_token_id,
        )

    def prepare_config_and_inputs(
        self,
    ) -> tuple[GatedAttentionConfig, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Config, ``input_ids`` ``(B, T)``, a right-padded mask (row ``i`` keeps ``i + 1`` tokens,
        as upstream's tester builds it) and token labels ``(B, T)``."""
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        input_mask = torch.tril(torch.ones_like(input_ids)) if self.use_input_mask else None
        labels = (
            ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
            if self.use_labels
            else None
        )
        return self.get_config(), input_ids, input_mask, labels

    def prepare_config_and_inputs_for_common(
        self,
    ) -> tuple[GatedAttentionConfig, dict[str, torch.Tensor | None]]:
        config, input_ids, input_mask, _ = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": input_mask}

    def create_and_check_model(
        self,
        config: GatedAttentionConfig,
        input_ids: torch.Tensor,
        input_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
    ) -> None:
        """The base model returns hidden states ``(B, T, hidden)``."""
        model = GatedAttentionModel(config).eval()
        out = model(input_ids, attention_mask=input_mask)
        self.parent.assertEqual(
            out.last_hidden_state.shape, (self.batch_size, self.seq_length, self.hidden_size)
        )

    def create_and_check_causal_lm(
        self,
        config: GatedAttentionConfig,
        input_ids: torch.Tensor,
        input_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
    ) -> None:
        """The LM returns logits ``(B, T, vocab)`` and a scalar loss for ``labels``."""
        model = GatedAttentionForCausalLM(config).eval()
        out = model(input_ids, attention_mask=input_mask, labels=labels)
        self.parent.assertEqual(
            out.logits.shape, (self.batch_size, self.seq_length, self.vocab_size)
        )
        self.parent.assertEqual(out.loss.shape, ())


class _GatedAttentionModelTest(ModelTesterMixin):
    """The upstream mixin for one gate variant (not collected: no ``TestCase`` base)."""

    gate: str = "none"
    all_model_classes = (GatedAttentionModel, GatedAttentionForCausalLM)
    # Upstream skips this init check for models whose config file has no "Copyright 2023+" line
    # (ours has none) unless the tester opts in: we do, so `_init_weights` must cover every weight.
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self) -> None:
        self.model_tester = GatedAttentionModelTester(self, gate=self.gate)
        # The gate in its stored (dict) form: ConfigTester checks that every keyword comes back
        # unchanged from JSON, and a variant name is expanded to that dict by design.
        gate = GatedAttentionConfig(gate=self.gate).gate
        self.config_tester = ConfigTester(
            self, config_class=GatedAttentionConfig, hidden_size=37, gate=gate
        )

    def test_config(self) -> None:
        self.config_tester.run_common_tests()

    def test_model(self) -> None:
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_causal_lm(self) -> None:
        self.model_tester.create_and_check_causal_lm(*self.model_tester.prepare_config_and_inputs())


class GatedAttentionNoGateModelTest(_GatedAttentionModelTest, unittest.TestCase):
    gate = "none"


class GatedAttentionElementwiseModelTest(_GatedAttentionModelTest, unittest.TestCase):
    gate = "sdpa-elementwise"


class GatedAttentionHeadwiseModelTest(_GatedAttentionModelTest, unittest.TestCase):
    gate = "sdpa-headwise"


def test_upstream_stub_covers_every_base_config_field() -> None:
    """Our stand-in ``config_common_kwargs`` sets every public ``PreTrainedConfig`` field to a
    non-default value, as upstream's test of that dict demands (so ``ConfigTester`` checks that
    our config passes each of them through)."""
    from transformers_tests.utils.test_configuration_utils import config_common_kwargs

    base = PreTrainedConfig()
    public = {k.removeprefix("_") for k in vars(base) if not k.startswith("__")}
    internal = {
        "is_encoder_decoder",
        "transformers_version",
        "name_or_path",
        "attn_implementation_internal",
        "experts_implementation_internal",
        "post_init_done",
    }
    assert sorted(public - internal) == sorted(config_common_kwargs)
    for key, value in config_common_kwargs.items():
        if key != "dtype":
            assert getattr(base, key) != value, key
