"""The causal LM: token embeddings -> decoder blocks -> final norm -> LM head; and ``generate``.

Reads top to bottom: rotary tables, output type, the loss, positions and mask, the weight-init
rule, the decoder stack (shared with the ``transformers`` model and the generation loop), the
model (its ``generate`` is :func:`gated_attention.generation.generate`), parameter counts. The
model is single-device code; training, parallelism and analysis live elsewhere and reach in only
through the fixed attributes ``embed_tokens``, ``layers``, ``norm``, ``lm_head`` and the named
hook points (``gated_attention.nn.hooks``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from gated_attention import generation
from gated_attention.config import ModelConfig
from gated_attention.nn.attention import GatedAttention
from gated_attention.nn.block import DecoderBlock
from gated_attention.nn.cache import KVCache
from gated_attention.nn.norm import RMSNorm
from gated_attention.ops.attention import (
    boolean_mask,
    causal_mask,
    document_causal_mask,
    document_positions,
    packed_document_ids,
)
from gated_attention.ops.rope import (
    check_rope_scaling,
    rope_cos_sin,
    rope_parameters,
    rope_type_of,
)


class RotaryEmbedding(nn.Module):
    """Evaluates RoPE cos/sin tables at given positions (with the config's scaling).

    ``cfg.rope_scaling`` (see ``gated_attention.ops.rope``) is validated here; its trained length
    is ``rope_scaling["original_max_position_embeddings"]`` when given, else
    ``cfg.max_position_embeddings``. Dynamic NTK recomputes the frequencies from the longest
    position of each call (plain RoPE up to the trained length); during cached decoding earlier
    keys keep the frequencies they were rotated with, as in ``transformers``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.scaling = check_rope_scaling(cfg.rope_scaling)
        inv_freq, factor = rope_parameters(
            cfg.rotary_dim, cfg.rope_theta, self.scaling, None, cfg.max_position_embeddings
        )
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self.attention_factor = factor
        self.dynamic = rope_type_of(self.scaling) == "dynamic"

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``(B, T, rotary_dim)`` for integer ``positions`` ``(B, T)``."""
        inv_freq = self.inv_freq
        if self.dynamic:
            # Dynamic NTK grows the base with the longest position seen so far in this call.
            cfg = self.cfg
            inv_freq, _ = rope_parameters(
                cfg.rotary_dim,
                cfg.rope_theta,
                self.scaling,
                int(positions.max()) + 1,
                cfg.max_position_embeddings,
            )
        return rope_cos_sin(positions, inv_freq.float(), self.attention_factor, dtype)


@dataclass
class CausalLMOutput:
    """Output of :class:`GatedLM`.

    ``logits`` ``(B, T, vocab)`` (or the last ``logits_to_keep`` positions); ``loss`` the mean
    next-token cross entropy plus ``aux_loss`` when labels were given; ``aux_loss`` the summed MoE
    load-balancing and z-losses (``None`` for dense models); ``past_key_values`` the cache.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    past_key_values: Any | None = None


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross entropy of ``logits`` ``(B, T, V)`` against aligned ``targets`` ``(B, T)``."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=ignore_index,
    )


def positions_and_mask(
    batch: int,
    seq: int,
    cache: Any | None,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    device: torch.device,
    document_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Positions ``(B | 1, T)`` and the boolean attention mask ``(B | 1, 1, T, S)`` (or ``None``)
    for ``seq`` new tokens (:meth:`DecoderStack.run_decoder`).

    Positions come from ``position_ids`` when given, else from the documents (restarting at 0 in
    each), else from the padding mask (left padding starts each row at 0), else continue the
    cache. The mask, in order of precedence:

    - a ready 4-D ``attention_mask`` (``transformers``' static-cache ``generate`` builds one) is
      used as given (:func:`~gated_attention.ops.attention.boolean_mask`);
    - a windowed :class:`KVCache` supplies its own StreamingLLM mask (each query sees its window
      and the sink tokens);
    - packed documents attend only within themselves (block-diagonal causal mask, equal to
      running each document alone): the documents are ``document_ids`` ``(B, T)`` when given,
      else, when there is no padding mask and no cached token, wherever ``position_ids``
      restart (``transformers``' padding-free convention); they need a call without cached
      tokens;
    - else the causal mask over cached + new tokens with the 2-D padding mask ``(B, S)``. A
      pre-allocated ``transformers`` cache (``StaticCache``) returns all its slots; queries then
      sit at its fill level and unfilled slots are masked.
    """
    past = cache.get_seq_length(0) if cache is not None else 0  # a 0-d tensor for static caches
    if attention_mask is not None and attention_mask.dim() == 4:
        if isinstance(cache, KVCache) and cache.windowed:
            raise ValueError(
                "a 4-D attention_mask cannot be combined with a windowed KVCache "
                f"(window={cache.window}); the cache supplies its own mask"
            )
        if document_ids is not None:
            raise ValueError("document_ids cannot be combined with a 4-D attention_mask")
        if position_ids is None:
            position_ids = (torch.arange(seq, device=device) + past)[None].expand(batch, seq)
        return position_ids, boolean_mask(attention_mask)
    fresh = isinstance(past, int) and past == 0  # no cached token (and no static cache filled)
    if document_ids is None and position_ids is not None and attention_mask is None and fresh:
        document_ids = _restarting_documents(position_ids.expand(batch, seq))
    if document_ids is not None:
        if document_ids.shape != (batch, seq):
            raise ValueError(
                f"document_ids must have shape (batch, seq) = {(batch, seq)}, got "
                f"{tuple(document_ids.shape)}"
            )
        if not fresh:
            raise ValueError(
                "packed documents (document_ids, or position_ids restarting at 0) need a call "
                "without cached tokens: attention within each document is decided for the new "
                "tokens only. Run the packed rows without past_key_values."
            )
        if position_ids is None:
            position_ids = document_positions(document_ids)
        return position_ids, document_causal_mask(document_ids, attention_mask)
    if position_ids is None:
        if attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq:]
        else:
            start = cache.get_position(0) if isinstance(cache, KVCache) else past
            position_ids = (torch.arange(seq, device=device) + start)[None].expand(batch, seq)
    if isinstance(cache, KVCache) and cache.windowed:
        if attention_mask is not None:
            raise ValueError(
                "attention_mask (padding) cannot be combined with a windowed KVCache "
                f"(window={cache.window}); feed unpadded sequences"
            )
        return position_ids, cache.attention_mask(seq, device=device)
    if getattr(cache, "is_compileable", False):  # transformers' static caches: all slots returned
        key_len, _ = cache.get_mask_sizes(seq, 0)
        return position_ids, causal_mask(seq, key_len, attention_mask, device, offset=past)
    return position_ids, causal_mask(seq, past + seq, attention_mask, device=device)


def _restarting_documents(position_ids: torch.Tensor) -> torch.Tensor | None:
    """:func:`~gated_attention.ops.attention.packed_document_ids` of ``position_ids``
    ``(B, T)``, or ``None`` when every row holds one document (the plain causal mask then
    suffices). Under ``torch.compile`` the documents are always returned (no data-dependent
    branch)."""
    documents = packed_document_ids(position_ids)
    if not torch.compiler.is_compiling() and not bool(documents[:, -1].any()):
        return None
    return documents


def init_module(module: nn.Module, std: float, init: ModuleType = nn.init) -> None:
    """Initialise one module as Qwen3 does: normal(0, ``std``) for linear and embedding weights
    (the gate slice of ``qkv_proj`` too, as the paper's released code initialises it like
    ``q_proj``), zero biases, norms at identity (1, or 0 when zero-centred), input-independent
    gate logits and attention-normaliser parameters (sink logits, key/value bias) at zero.

    ``init`` supplies the in-place initialisers: ``torch.nn.init`` for :class:`GatedLM`,
    ``transformers.initialization`` for the ``transformers`` wrapper (it leaves parameters that
    ``from_pretrained`` loaded alone).
    """
    if isinstance(module, nn.Linear):
        init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, RMSNorm):
        (init.zeros_ if module.zero_centered else init.ones_)(module.weight)
    elif isinstance(module, GatedAttention):
        for param in module.zero_init_parameters():
            init.zeros_(param)


CHECKPOINTING = ("none", "full")
"""Activation-checkpointing modes of :class:`DecoderStack`: ``none`` keeps every activation;
``full`` keeps only each block's input and recomputes the block in the backward."""


def _checkpoint(function: Callable[..., Any], *args: Any) -> Any:
    """``torch.utils.checkpoint.checkpoint`` in its non-reentrant form."""
    return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False)


class DecoderStack(nn.Module):
    """The decoder core of :class:`GatedLM`, the ``transformers`` model and the generation loop:
    the modules ``embed_tokens``, ``layers`` (:class:`DecoderBlock`), ``norm`` and ``rotary``,
    and the one loop over the blocks.

    ``checkpointing`` (:data:`CHECKPOINTING`, set with :meth:`set_checkpointing`) trades compute
    for memory in training: :meth:`run_block` is the one place it is applied.
    """

    checkpointing: str = "none"
    checkpoint_fn: Callable[..., Any] = staticmethod(_checkpoint)
    """Runs ``function(*args)`` keeping only its inputs for the backward (recomputing the
    rest); ``transformers``' ``gradient_checkpointing_enable`` passes its own."""

    def build_stack(self, cfg: ModelConfig, block: type[DecoderBlock] = DecoderBlock) -> None:
        """Create the stack's modules for ``cfg`` (on the default device); ``block`` is the
        class of the layers (a :class:`DecoderBlock` or a subclass with the same parameters)."""
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_type == "zero_centered")
        self.rotary = RotaryEmbedding(cfg)

    def set_checkpointing(self, mode: str, checkpoint_fn: Callable[..., Any] | None = None) -> None:
        """Choose the activation-checkpointing ``mode`` (:data:`CHECKPOINTING`) and, optionally,
        the function that checkpoints (default: non-reentrant ``torch.utils.checkpoint``)."""
        if mode not in CHECKPOINTING:
            raise ValueError(
                f"checkpointing={mode!r} is not valid; allowed: {', '.join(CHECKPOINTING)}."
            )
        self.checkpointing = mode
        if checkpoint_fn is not None:
            self.checkpoint_fn = checkpoint_fn

    def run_decoder(
        self,
        h: torch.Tensor,
        cache: Any | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        hidden: list[torch.Tensor] | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`run_blocks` on embeddings ``h`` ``(B, T, hidden)``, with the positions, mask
        (:func:`positions_and_mask`) and RoPE tables they need."""
        B, T = h.shape[:2]
        position_ids, mask = positions_and_mask(
            B, T, cache, attention_mask, position_ids, h.device, document_ids
        )
        cos, sin = self.rotary(position_ids, h.dtype)
        return self.run_blocks(h, cos, sin, mask, cache, hidden)

    def run_blocks(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: Any | None,
        hidden: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The blocks, then the final norm, on ``h`` ``(B, T, hidden)``.

        Returns the normed output ``(B, T, hidden)`` and the summed MoE load-balancing and
        z-losses (``None`` for dense models). ``hidden``, when given, receives ``L + 1`` tensors:
        the input and each block's output (not normed).
        """
        if hidden is not None:
            hidden.append(h)
        aux_total = None
        for layer in self.layers:
            h, aux = self.run_block(layer, h, cos, sin, mask, cache)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
            if hidden is not None:
                hidden.append(h)
        return self.norm(h), aux_total

    def run_block(
        self,
        layer: nn.Module,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: Any | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One block under the stack's ``checkpointing`` mode (only while training with
        gradients; a checkpointed block cannot write a KV cache, whose update the backward would
        replay)."""
        if self.checkpointing == "none" or not (self.training and torch.is_grad_enabled()):
            return layer(h, cos, sin, mask, cache)
        if cache is not None:
            raise ValueError(
                f"checkpointing={self.checkpointing!r} cannot fill a KV cache while training; "
                "call the model with use_cache=False (or in eval mode / under torch.no_grad())"
            )
        return self.checkpoint_block(layer, h, cos, sin, mask)

    def checkpoint_block(
        self,
        layer: nn.Module,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``layer`` on ``h`` with its activations recomputed in the backward
        (``checkpointing == "full"``), through :attr:`checkpoint_fn`."""
        return self.checkpoint_fn(layer, h, cos, sin, mask, None)


class GatedLM(DecoderStack):
    """A Qwen3-style causal LM whose attention is gated as ``cfg.gate`` says.

    Builds on any device, including ``torch.device("meta")`` (pass ``device=``) so the largest
    presets can be counted without memory.
    """

    def __init__(self, cfg: ModelConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise ValueError(f"GatedLM needs a ModelConfig, got {type(cfg).__name__}")
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.build_stack(cfg)
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        if not self.embed_tokens.weight.is_meta:
            self.apply(self.init_weights)

    def init_weights(self, module: nn.Module) -> None:
        """:func:`init_module` with ``torch.nn.init`` and ``cfg.initializer_range``."""
        init_module(module, self.cfg.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        past_key_values: Any | None = None,
        use_cache: bool = False,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        document_ids: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """Next-token logits for ``input_ids`` ``(B, T)``.

        Args:
            labels: ``(B, T)`` token ids in Hugging Face convention (shifted inside: position
                ``t`` predicts ``labels[t + 1]``; ``-100`` is ignored).
            past_key_values: a cache from a previous call (or a fresh ``KVCache``, possibly
                windowed: then each query attends only to its window and the sink tokens).
            use_cache: create a ``KVCache`` when none is given and return it.
            attention_mask: ``(B, S)`` 1 for real tokens, 0 for padding, over cached + new
                tokens (Hugging Face convention).
            position_ids: ``(B, T)``; default: continue from the cache (or from the padding-aware
                count of real tokens when ``attention_mask`` is given). Positions that restart
                at 0 inside a row (packed documents) restrict attention to each document.
            logits_to_keep: if > 0, only compute logits for the last that many positions.
            document_ids: ``(B, T)`` the document of each token of packed rows (contiguous
                runs): attention stays within each document and positions restart at 0 in
                each (unless ``position_ids`` are given), as if every document ran alone.
        """
        cache = past_key_values
        if cache is None and use_cache:
            cache = KVCache()
        h = self.embed_tokens(input_ids)
        h, aux_total = self.run_decoder(
            h, cache, attention_mask, position_ids, document_ids=document_ids
        )
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = lm_loss(logits[:, :-1], labels[:, 1:])
            if aux_total is not None:
                loss = loss + aux_total
        keep_cache = use_cache or past_key_values is not None
        return CausalLMOutput(logits, loss, aux_total, cache if keep_cache else None)

    generate = generation.generate


# ---------------------------------------------------------------------- parameter counts
@dataclass
class ParameterCount:
    """Parameter counts of a model; ``gate`` counts every parameter the gate (or output
    control) adds, including the gate rows of the fused ``qkv_proj``."""

    total: int
    embedding: int
    non_embedding: int
    gate: int

    @property
    def gate_share(self) -> float:
        return self.gate / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, float]:
        return {
            "total": self.total,
            "embedding": self.embedding,
            "non_embedding": self.non_embedding,
            "gate": self.gate,
            "gate_share": self.gate_share,
        }


def count_parameters(model: GatedLM) -> ParameterCount:
    """Count a model's parameters (works on the meta device; tied weights counted once)."""
    cfg = model.cfg
    seen: set[int] = set()
    total = embedding = gate = 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        total += n
        if name.startswith(("embed_tokens", "lm_head")):
            embedding += n
        if name.endswith(("gate_logits", "out_norm.weight")):
            gate += n
    per_layer = cfg.gate_size * (cfg.hidden_size + int(cfg.attention_bias))
    gate += per_layer * cfg.num_hidden_layers
    return ParameterCount(total, embedding, total - embedding, gate)
