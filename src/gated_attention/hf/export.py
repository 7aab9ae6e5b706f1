"""Write a :class:`~gated_attention.model.GatedLM` as a ``transformers`` model directory.

:func:`export_model` is what ``gated-attention export RUN_DIR OUT`` runs once it has loaded the
run's model and tokenizer: the directory holds ``config.json``, ``model.safetensors``,
``generation_config.json`` and the tokenizer files, so ``AutoModelForCausalLM``,
``AutoTokenizer`` and ``pipeline("text-generation")`` load it (after ``import
gated_attention``, which registers our model type). ``to`` picks the format: ``ours``
(``GatedAttentionForCausalLM``) or any converter format of ``gated_attention.hf.convert``
(``qwen3``, ``qwen3-moe``, ``qwen3-next``, ``paper``), through the same converters as
``gated-attention convert --to``. The directory is written next to ``out`` and renamed into
place, so ``out`` never holds half an export.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gated_attention.model import GatedLM

from .convert import (
    FORMATS,
    ConversionError,
    check_exportable,
    export_checkpoint,
    get_format,
)
from .modeling import GatedAttentionForCausalLM

__all__ = ["EXPORT_FORMATS", "export_model", "token_ids"]

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("ours", *FORMATS)
"""``ours``: our ``GatedAttentionForCausalLM``; the others: ``transformers``' own classes (and the
paper's release layout), converted by ``gated_attention.hf.convert``."""


def token_ids(tokenizer: Any | None) -> dict[str, int | None]:
    """``bos_token_id``, ``eos_token_id`` and ``pad_token_id`` of a ``transformers`` tokenizer
    (all ``None`` without one)."""
    names = ("bos_token_id", "eos_token_id", "pad_token_id")
    return {name: getattr(tokenizer, name, None) for name in names}


def export_model(
    model: GatedLM,
    out: str | Path,
    *,
    to: str = "ours",
    tokenizer: Any | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (weights copied, in their dtype) to the directory ``out``.

    Args:
        model: the model to export.
        out: destination directory; created, and must be empty unless ``overwrite``.
        to: ``ours`` or a converter format (:data:`EXPORT_FORMATS`); a format that cannot hold
            the model (a gate it lacks, MoE in a dense format, ...) raises
            :class:`~gated_attention.hf.convert.ConversionError` naming the field, before
            anything is written.
        tokenizer: a ``transformers`` tokenizer saved beside the weights; its special token ids
            go into ``config.json`` and ``generation_config.json``. Without one the directory
            loads as a model only (no ``AutoTokenizer``, no ``pipeline``).
        overwrite: replace a non-empty ``out``.

    Returns:
        ``out``.
    """
    if to not in EXPORT_FORMATS:
        raise ConversionError(f"unknown format {to!r}; choose one of: {', '.join(EXPORT_FORMATS)}.")
    if not isinstance(model, GatedLM):
        raise ValueError(f"export_model needs a GatedLM, got {type(model).__name__}.")
    if to != "ours":
        check_exportable(model.cfg, get_format(to))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConversionError(f"destination {out} exists and is not a directory.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConversionError(
            f"destination {out} is not empty (pass overwrite=True / --overwrite)."
        )
    hf = GatedAttentionForCausalLM.from_gated_lm(
        model, **token_ids(tokenizer), architectures=["GatedAttentionForCausalLM"]
    )
    hf.generation_config.update(**token_ids(tokenizer))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        ours = Path(tmp) / "ours"
        hf.save_pretrained(ours)  # config.json, model.safetensors, generation_config.json
        if tokenizer is not None:
            if tokenizer.model_max_length > 1e20:  # transformers' "unset" value
                tokenizer.model_max_length = model.cfg.max_position_embeddings
            tokenizer.save_pretrained(ours)
        result = ours
        if to != "ours":
            result = Path(tmp) / to
            export_checkpoint(to, ours, result)
        if out.exists():
            shutil.rmtree(out)
        os.replace(result, out)
    log.info("exported %s model -> %s (%s)", type(model).__name__, out, to)
    return out
