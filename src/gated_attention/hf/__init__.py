"""Hugging Face ``transformers`` integration and checkpoint interop.

Importing this package registers ``model_type = "gated_attention"`` with ``AutoConfig``,
``AutoModel``, ``AutoModelForCausalLM`` and ``AutoModelForSequenceClassification``, so
``AutoModelForCausalLM.from_pretrained(dir)`` returns a :class:`GatedAttentionForCausalLM` for a
directory saved by this library. ``import gated_attention`` is enough: it imports this package
as soon as ``transformers`` loads its Auto classes (``gated_attention._transformers_hook``), and
does not import ``transformers`` itself.

- :class:`GatedAttentionConfig`, :class:`GatedAttentionModel`, :class:`GatedAttentionForCausalLM`,
  :class:`GatedAttentionForSequenceClassification`: thin wrappers over the core modules
  (``gated_attention.nn``), not a second modeling file.
- ``gated_attention.hf.convert``: import/export (``gated-attention convert``) of the paper's
  released checkpoints, ``transformers`` Qwen3, Qwen3-MoE and Qwen3-Next, one object per format
  in ``gated_attention.hf.formats``.
- ``gated_attention.hf.export``: a model (a training run, ``gated-attention export``) as a
  ``transformers`` model directory with its tokenizer.
- ``gated_attention.hf.layouts``: the packing layouts of the attention projection (ours, paper,
  Qwen3-Next, Megatron) as documented index maps.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from .configuration import GatedAttentionConfig
from .modeling import (
    GatedAttentionCausalLMOutput,
    GatedAttentionForCausalLM,
    GatedAttentionForSequenceClassification,
    GatedAttentionModel,
    GatedAttentionModelOutput,
    GatedAttentionPreTrainedModel,
)

AutoConfig.register(GatedAttentionConfig.model_type, GatedAttentionConfig, exist_ok=True)
AutoModel.register(GatedAttentionConfig, GatedAttentionModel, exist_ok=True)
AutoModelForCausalLM.register(GatedAttentionConfig, GatedAttentionForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(
    GatedAttentionConfig, GatedAttentionForSequenceClassification, exist_ok=True
)

__all__ = [
    "GatedAttentionCausalLMOutput",
    "GatedAttentionConfig",
    "GatedAttentionForCausalLM",
    "GatedAttentionForSequenceClassification",
    "GatedAttentionModel",
    "GatedAttentionModelOutput",
    "GatedAttentionPreTrainedModel",
]
