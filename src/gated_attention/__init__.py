"""Gated attention for large language models (Qiu et al., arXiv 2505.06708).

Every gate variant of the paper is a :class:`GateConfig`; :class:`GatedLM` is a Qwen3-style
causal LM (dense or MoE) whose attention is gated as its :class:`ModelConfig` says.

Importing the package makes ``model_type = "gated_attention"`` known to ``transformers``' Auto
classes (``AutoModelForCausalLM.from_pretrained(dir)``, ``pipeline``) without importing
``transformers`` itself: ``gated_attention.hf`` registers its classes once ``transformers``
loads its Auto registries (``gated_attention._transformers_hook``).
"""

from gated_attention import _transformers_hook
from gated_attention.config import GateConfig, ModelConfig, MoEConfig
from gated_attention.model import CausalLMOutput, GatedLM, ParameterCount, count_parameters, lm_loss
from gated_attention.nn.cache import KVCache

_transformers_hook.install()

__version__ = "0.1.0"

__all__ = [
    "CausalLMOutput",
    "GateConfig",
    "GatedLM",
    "KVCache",
    "ModelConfig",
    "MoEConfig",
    "ParameterCount",
    "__version__",
    "count_parameters",
    "lm_loss",
]
