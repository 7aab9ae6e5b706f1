"""Sink and activation metrics for any Hugging Face causal LM run with eager attention.

:func:`collect_hf` runs one forward with ``output_attentions=True`` and
``output_hidden_states=True`` and fills a :class:`~gated_attention.analysis.report.Captured`;
:func:`~gated_attention.analysis.report.analyze_captured` does the rest.

Why the block outputs come from forward hooks: in ``transformers`` 5.x the ``capture_outputs``
decorator records each decoder layer's output, then (``tie_last_hidden_states``, on for
language models) replaces the last entry with ``last_hidden_state``, i.e. *after* the final
norm. Checked for Qwen3, Llama and GPT-2 in transformers 5.24: ``hidden_states[L]`` is
``norm(block_L(...))``, while ``hidden_states[1:L]`` are raw block outputs. A final RMSNorm /
LayerNorm rescales the residual stream and would hide massive activations in the last layer,
so we hook every decoder layer and keep its raw output; entries ``1 .. L-1`` are cross-checked
against ``hidden_states`` to make sure the hooked module list is the residual stream.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from .report import AnalysisReport, Captured, analyze_captured

# Where common architectures keep their decoder blocks (tried before a generic search).
_LAYER_PATHS = (
    "model.layers",  # Llama, Qwen2/3, Mistral, Gemma, OLMo
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
    "model.language_model.layers",  # multimodal wrappers
)

__all__ = ["AnalysisReport", "Captured", "analyze_captured", "collect_hf", "find_decoder_layers"]


def _num_layers(model: nn.Module) -> int:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = getattr(text, "num_hidden_layers", None)
    if not isinstance(n, int) or n < 1:
        raise ValueError("model.config has no positive num_hidden_layers")
    return n


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of decoder blocks of a ``transformers`` causal LM.

    Tries the usual attribute paths, then the first ``ModuleList`` whose length equals
    ``config.num_hidden_layers``.
    """
    n = _num_layers(model)
    for path in _LAYER_PATHS:
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) == n:
            return obj
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"could not find a ModuleList of {n} decoder layers in {type(model).__name__}")


def _first_tensor(output: Any) -> torch.Tensor:
    """Decoder layers return a tensor (transformers 5.x) or a tuple led by one (older)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ValueError(f"decoder layer returned {type(output).__name__}, expected a tensor")


@torch.no_grad()
def collect_hf(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    keep_probs: bool = True,
    offload_to_cpu: bool = False,
) -> Captured:
    """Run one forward and capture attention probabilities and raw block outputs.

    The model is put in eval mode for the pass (attention dropout would change the maps) and
    restored afterwards.

    Args:
        model: a ``transformers`` causal LM. With ``keep_probs`` it must use eager attention
            (``attn_implementation="eager"``); fused kernels do not return probabilities.
        input_ids: ``(B, T)`` token ids.
        attention_mask: optional ``(B, T)`` padding mask, passed to the model and stored
            (note that :func:`analyze_captured` refuses padded batches).
        keep_probs: request ``output_attentions``; memory is ``L * B * H * T^2`` floats.
        offload_to_cpu: move every captured tensor to the CPU as it is collected.

    Returns:
        A :class:`Captured` with ``hidden`` (raw output of every block, ``(B, T, d)``) and
        ``probs`` (``(B, H, T, T)`` per layer, when ``keep_probs``).
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids: expected (batch, T), got shape {tuple(input_ids.shape)}")
    impl = getattr(model.config, "_attn_implementation", None)
    if keep_probs and impl != "eager":
        raise ValueError(
            f"collect_hf needs eager attention to return probabilities, the model uses {impl!r}; "
            "load it with attn_implementation='eager' or call model.set_attn_implementation('eager')"
        )
    layers = find_decoder_layers(model)
    n = len(layers)
    raw: list[torch.Tensor | None] = [None] * n

    def move(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return t.cpu() if offload_to_cpu else t

    def make_hook(i: int):
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            raw[i] = move(_first_tensor(output))

        return hook

    handles = [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_attentions=keep_probs,
            output_hidden_states=True,
            use_cache=False,
            return_dict=True,
        )
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    if any(r is None for r in raw):
        raise RuntimeError("a decoder layer hook did not fire; the model skipped a block")
    hidden = [r for r in raw if r is not None]
    hs = out.hidden_states
    if hs is not None and len(hs) == n + 1:
        # hidden_states[0] is the embedding output; entries 1..n-1 must be the raw blocks.
        for i in range(n - 1):
            if not torch.allclose(hs[i + 1].to(hidden[i].device), hidden[i]):
                warnings.warn(
                    f"hooked output of layer {i} differs from output.hidden_states[{i + 1}]; "
                    "the hooked module list may not be the residual stream",
                    stacklevel=2,
                )
                break
    probs = None
    if keep_probs:
        attns = out.attentions
        if attns is None or len(attns) != n or any(a is None for a in attns):
            raise ValueError("the model returned no attention probabilities for every layer")
        probs = [move(a) for a in attns]
    return Captured(
        n_layers=n,
        seq_len=int(input_ids.shape[1]),
        hidden=hidden,
        probs=probs,
        attention_mask=None if attention_mask is None else move(attention_mask),
        input_ids=move(input_ids),
        meta={
            "source": "transformers",
            "model_type": getattr(model.config, "model_type", type(model).__name__),
            "hidden": "raw decoder-layer outputs via forward hooks (pre final norm)",
        },
    )
