"""``transformers`` wrappers around the core modules: no second modeling file.

:class:`GatedAttentionModel` holds the very modules :class:`~gated_attention.model.GatedLM` is
built from (``embed_tokens``, ``layers`` of :class:`~gated_attention.nn.block.DecoderBlock`,
``norm``, ``rotary``), with the same names, so a ``GatedLM`` state dict maps onto
``GatedAttentionForCausalLM`` by prefixing ``model.`` (``lm_head`` stays top-level).

The forward signature follows ``transformers`` 5.24's Qwen3: the cache argument is ``cache``
(``past_key_values`` still accepted, renamed by ``deprecate_kwarg``), ``cache_position`` no longer
exists (it is accepted and ignored), ``output_attentions`` / ``output_hidden_states`` /
``return_dict`` follow the config defaults. Attention runs through our own backend registry
(``gated_attention.ops.attention``): ``attn_implementation="eager"`` selects our ``eager`` backend,
anything else leaves each layer's ``attn_backend`` (``auto`` = SDPA). ``output_attentions=True``
works with any implementation: the layers switch, for that call, to an eager backend that also
records the probabilities (``ops.attention.eager_attention`` on the post-RoPE queries and the
full, cached keys, through the model's attention normaliser: with a non-softmax normaliser the
recorded rows are the weights on the real tokens and need not sum to 1).

Beyond the forward, the ``transformers`` features that need our code to cooperate:

- **Packed sequences / padding-free training**: ``position_ids`` that restart at 0 inside a row
  (``DataCollatorWithFlattening``) without an ``attention_mask`` attend only within each
  document (``gated_attention.model.positions_and_mask``), on every attention backend.
- **Static cache and compiled decoding**: 4-D masks (``generate(cache_implementation="static")``
  builds them) and ``transformers``' ``StaticCache`` work, and dense models trace with
  ``torch.compile(fullgraph=True)`` (``_can_compile_fullgraph``; MoE layers dispatch tokens
  with a data-dependent loop, so MoE models say False).
- **Gradient checkpointing**: ``gradient_checkpointing_enable()`` sets the stack's
  ``checkpointing`` (``DecoderStack.set_checkpointing``); the layers are ``transformers``'
  ``GradientCheckpointingLayer``, which run their forward through the checkpoint function
  inside their own call, so module hooks stay outside the recomputed region.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import DynamicCache
from transformers.modeling_layers import (
    GenericForSequenceClassification,
    GradientCheckpointingLayer,
)
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg

from gated_attention.model import DecoderStack, GatedLM, RotaryEmbedding, init_module
from gated_attention.nn.block import DecoderBlock
from gated_attention.ops.attention import eager_attention, register_attention_backend
from gated_attention.ops.normalizers import FORMS, Normalizer

from .configuration import GatedAttentionConfig

__all__ = [
    "RECORDING_BACKEND",
    "GatedAttentionCausalLMOutput",
    "GatedAttentionDecoderLayer",
    "GatedAttentionForCausalLM",
    "GatedAttentionForSequenceClassification",
    "GatedAttentionModel",
    "GatedAttentionModelOutput",
    "GatedAttentionPreTrainedModel",
]

logger = logging.get_logger(__name__)

# ---------------------------------------------------------------------- attention probabilities
RECORDING_BACKEND = "eager_recording"
"""Backend name registered in ``gated_attention.ops.attention``: eager attention that also
appends its probabilities ``(B, H, T, S)`` to the active recording (``output_attentions``)."""

_RECORDING: ContextVar[list[torch.Tensor] | None] = ContextVar(
    "gated_attention_hf_attentions", default=None
)


def _eager_recording(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float,
    normalizer: Normalizer | None = None,
) -> torch.Tensor:
    """Eager attention ``(B, T, H, D)`` that records the probabilities it attends with.

    The recorded tensor is the one multiplied into ``v`` (as in the ``eager`` backend), not a
    recomputation: gradients then reach the returned ``attentions`` (gradient-based attribution;
    ``transformers``' ``test_retain_grad_hidden_states_attentions``).
    """
    probs, out = eager_attention(q, k, v, mask, causal, scale, normalizer)
    recording = _RECORDING.get()
    if recording is not None:
        recording.append(probs)
    return out


register_attention_backend(RECORDING_BACKEND, _eager_recording, FORMS)


@contextlib.contextmanager
def _layers_backend(layers: nn.ModuleList, backend: str | None) -> Iterator[None]:
    """Run every layer's attention on ``backend`` for the duration (``None``: leave as is)."""
    if backend is None:
        yield
        return
    attns = [layer.self_attn for layer in layers]
    previous = [a.attn_backend for a in attns]
    for a in attns:
        a.attn_backend = backend
    try:
        yield
    finally:
        for a, name in zip(attns, previous):
            a.attn_backend = name


@contextlib.contextmanager
def _recording(store: list[torch.Tensor] | None) -> Iterator[None]:
    if store is None:
        yield
        return
    token = _RECORDING.set(store)
    try:
        yield
    finally:
        _RECORDING.reset(token)


# ---------------------------------------------------------------------- outputs
@dataclass
class GatedAttentionModelOutput(BaseModelOutputWithPast):
    """``BaseModelOutputWithPast`` (``last_hidden_state`` ``(B, T, hidden)``, ``cache``,
    ``hidden_states``, ``attentions`` ``(B, H, T, S)`` per layer) plus ``aux_loss``: the summed
    MoE load-balancing and z-losses (``None`` for dense models)."""

    aux_loss: torch.Tensor | None = None


@dataclass
class GatedAttentionCausalLMOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` (``loss``, ``logits`` ``(B, T, vocab)``, ``cache``,
    ``hidden_states``, ``attentions``) plus the MoE ``aux_loss`` (already included in ``loss``)."""

    aux_loss: torch.Tensor | None = None


# ---------------------------------------------------------------------- models
class GatedAttentionDecoderLayer(GradientCheckpointingLayer, DecoderBlock):
    """:class:`~gated_attention.nn.block.DecoderBlock` as ``transformers``'
    ``GradientCheckpointingLayer``: while its ``gradient_checkpointing`` flag is set (by
    :meth:`GatedAttentionModel.set_checkpointing`), training calls run the block's forward
    through ``_gradient_checkpointing_func`` inside the layer's own call. Same parameters and
    names as the block."""


class GatedAttentionPreTrainedModel(PreTrainedModel):
    """Weight init, config class and ``transformers`` capability flags shared by the models."""

    config: GatedAttentionConfig
    config_class = GatedAttentionConfig
    base_model_prefix = "model"
    _no_split_modules: ClassVar[list[str]] = ["GatedAttentionDecoderLayer", "DecoderBlock"]
    _supports_sdpa = True  # "sdpa" maps to our "auto" backend, "eager" to our "eager"
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False  # transformers' ALL_ATTENTION_FUNCTIONS is not used
    supports_gradient_checkpointing = True
    _can_compile_fullgraph = True  # dense models; set False per instance for MoE (see __init__)

    def __init__(self, config: GatedAttentionConfig, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(config, *inputs, **kwargs)
        if config.moe is not None:
            # The MoE dispatch loops over the experts hit (a host sync): it graph-breaks.
            self._can_compile_fullgraph = False

    def _init_weights(self, module: nn.Module) -> None:
        """:func:`~gated_attention.model.init_module` (the rule of :meth:`GatedLM.init_weights`)
        with ``transformers.initialization``, so parameters already loaded by
        ``from_pretrained`` are left alone. Also refills the RoPE ``inv_freq`` buffer, which is
        not saved and comes back uninitialised from ``from_pretrained``."""
        init_module(module, self.config.initializer_range, init)
        if isinstance(module, RotaryEmbedding):
            fresh = RotaryEmbedding(module.cfg).inv_freq
            init.copy_(module.inv_freq, fresh.to(module.inv_freq.device))

    def _set_gradient_checkpointing(
        self,
        enable: bool = True,
        gradient_checkpointing_func: Any = None,
        every_n_layers: int = 1,
    ) -> None:
        """``gradient_checkpointing_enable`` / ``_disable``: the decoder stack's
        ``checkpointing`` becomes ``full`` / ``none``, with ``transformers``' checkpoint function
        (its ``use_reentrant`` and offload options)."""
        if every_n_layers != 1:
            raise ValueError(
                f"every_n_layers={every_n_layers} is not supported: the decoder stack "
                "checkpoints every block (checkpointing='full') or none."
            )
        stack = self.base_model
        if enable:
            stack.set_checkpointing("full", gradient_checkpointing_func)
        else:
            stack.set_checkpointing("none")


class GatedAttentionModel(GatedAttentionPreTrainedModel, DecoderStack):
    """The decoder stack of :class:`GatedLM` (:class:`~gated_attention.model.DecoderStack`):
    embeddings -> blocks -> final norm; returns hidden states ``(B, T, hidden)``."""

    def __init__(self, config: GatedAttentionConfig) -> None:
        super().__init__(config)
        self.build_stack(config.to_model_config(), GatedAttentionDecoderLayer)
        self.post_init()

    def set_checkpointing(self, mode: str, checkpoint_fn: Any = None) -> None:
        """:meth:`DecoderStack.set_checkpointing`, reflected in the layers'
        ``gradient_checkpointing`` flags (the checkpointing runs inside each layer)."""
        super().set_checkpointing(mode, checkpoint_fn)
        for layer in self.layers:
            layer.gradient_checkpointing = self.checkpointing == "full"
            layer._gradient_checkpointing_func = self.checkpoint_fn

    def checkpoint_block(
        self,
        layer: nn.Module,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer checkpoints its own forward (``GatedAttentionDecoderLayer``)."""
        return layer(h, cos, sin, mask, None)

    def _attention_backend(self, output_attentions: bool) -> str | None:
        if output_attentions:
            return RECORDING_BACKEND
        if self.config._attn_implementation == "eager":
            return "eager"
        return None

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        document_ids: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> GatedAttentionModelOutput:
        """Hidden states for ``input_ids`` ``(B, T)`` (or ``inputs_embeds`` ``(B, T, hidden)``).

        Args:
            attention_mask: ``(B, S)``, 1 for real tokens and 0 for padding, over cached + new
                tokens (``S = past + T``); or a ready 4-D mask ``(B, 1, T, S)`` (boolean, or
                ``transformers``' additive float form) as ``generate`` builds for static caches.
            position_ids: ``(B | 1, T)``; default as :meth:`GatedLM.forward` (padding-aware).
                Without an ``attention_mask`` and cached tokens, positions that restart at 0
                inside a row mark packed documents: attention stays within each.
            cache: a ``transformers`` ``Cache`` (dynamic or static) or our ``KVCache``; a
                ``DynamicCache`` is created when ``use_cache`` and none is given (not while
                training with gradient checkpointing, which cannot fill one).
            output_attentions: also return per-layer probabilities ``(B, H, T, S)``.
            output_hidden_states: also return ``L + 1`` hidden states: the embeddings, the output
                of each block, the last replaced by the normed output (``transformers``'
                ``tie_last_hidden_states`` convention; set the config flag to ``False`` to keep the
                raw last block output).
            document_ids: ``(B, T)`` document of each token of packed rows (as
                :meth:`GatedLM.forward`); an alternative to restarting ``position_ids``.
        """
        kwargs.pop("cache_position", None)  # removed in transformers 5.x; positions suffice
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if attention_mask is not None and attention_mask.dim() not in (2, 4):
            raise ValueError(
                "attention_mask must be 2-D (batch, seq) with 1 for real tokens, or a ready 4-D "
                f"mask (batch, 1, query, key); got shape {tuple(attention_mask.shape)}."
            )
        config = self.config
        use_cache = config.use_cache if use_cache is None else use_cache
        checkpointing = self.checkpointing != "none" and self.training
        if use_cache and checkpointing and torch.is_grad_enabled():
            logger.warning_once(
                "use_cache=True is incompatible with gradient checkpointing; using use_cache=False."
            )
            use_cache = False
        if output_attentions is None:
            output_attentions = config.output_attentions
        if output_hidden_states is None:
            output_hidden_states = config.output_hidden_states
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and cache is None:
            cache = DynamicCache(config=config)
        hidden: list[torch.Tensor] | None = [] if output_hidden_states else None
        attentions: list[torch.Tensor] | None = [] if output_attentions else None
        with (
            _layers_backend(self.layers, self._attention_backend(bool(output_attentions))),
            _recording(attentions),
        ):
            h, aux_total = self.run_decoder(
                h, cache, attention_mask, position_ids, hidden, document_ids
            )
        if hidden is not None and getattr(config, "tie_last_hidden_states", None) is not False:
            hidden[-1] = h
        return GatedAttentionModelOutput(
            last_hidden_state=h,
            cache=cache if use_cache else None,
            hidden_states=tuple(hidden) if hidden is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
            aux_loss=aux_total,
        )


class GatedAttentionForCausalLM(GatedAttentionPreTrainedModel, GenerationMixin):
    """:class:`GatedAttentionModel` plus the LM head. ``generate`` uses ``transformers``' caches
    (``DynamicCache`` by default, ``StaticCache`` with ``cache_implementation="static"``, which
    ``transformers`` can compile); our ``KVCache`` works in ``forward`` but not in ``generate``,
    which expects a ``transformers`` ``Cache``."""

    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: GatedAttentionConfig) -> None:
        super().__init__(config)
        self.model = GatedAttentionModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        document_ids: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> GatedAttentionCausalLMOutput:
        """Next-token logits ``(B, T, vocab)`` (or the positions ``logits_to_keep`` selects).

        ``labels`` ``(B, T)`` in the ``transformers`` convention (shifted inside, ``-100``
        ignored) give ``loss``: ``transformers``' causal-LM loss plus the MoE ``aux_loss``. Other
        arguments as :meth:`GatedAttentionModel.forward`.
        """
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            document_ids=document_ids,
            return_dict=True,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(out.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
            if out.aux_loss is not None:
                loss = loss + out.aux_loss
        return GatedAttentionCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=out.cache,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            aux_loss=out.aux_loss,
        )

    # ------------------------------------------------------------------ GatedLM interop
    @classmethod
    def from_gated_lm(cls, lm: GatedLM, **config_kwargs: Any) -> GatedAttentionForCausalLM:
        """Wrap the weights of a :class:`GatedLM` (copied; same dtype and device).

        ``config_kwargs`` go to :meth:`GatedAttentionConfig.from_model_config` (token ids etc.).
        """
        if not isinstance(lm, GatedLM):
            raise ValueError(f"from_gated_lm needs a GatedLM, got {type(lm).__name__}.")
        config = GatedAttentionConfig.from_model_config(lm.cfg, **config_kwargs)
        model = cls(config)
        model.load_state_dict(gated_lm_state_to_hf(lm.state_dict()))
        weight = lm.embed_tokens.weight
        return model.to(device=weight.device, dtype=weight.dtype)

    def to_gated_lm(self) -> GatedLM:
        """A :class:`GatedLM` with a copy of these weights (same dtype and device)."""
        lm = GatedLM(self.config.to_model_config())
        lm.load_state_dict(hf_state_to_gated_lm(self.state_dict()))
        weight = self.model.embed_tokens.weight
        return lm.to(device=weight.device, dtype=weight.dtype)


class GatedAttentionForSequenceClassification(
    GenericForSequenceClassification, GatedAttentionPreTrainedModel
):
    """:class:`GatedAttentionModel` plus a linear ``score`` head on the last non-padding token
    (``transformers``' generic decoder classifier, as Qwen3 uses it): logits ``(B, num_labels)``.
    ``config.pad_token_id`` marks padding; ``labels`` give the classification loss."""


def gated_lm_state_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``GatedLM`` state-dict keys -> ``GatedAttentionForCausalLM`` keys (``model.`` prefix,
    ``lm_head`` unchanged)."""
    return {k if k.startswith("lm_head.") else f"model.{k}": v for k, v in state.items()}


def hf_state_to_gated_lm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`gated_lm_state_to_hf`."""
    return {k.removeprefix("model."): v for k, v in state.items()}
