"""Context extension without (or with little) retraining: RoPE scaling on a trained model.

* :func:`scaling_config` builds the ``rope_scaling`` dict of a named mode for a trained length
  and factor (docs/paper.md section 7: position interpolation, NTK, dynamic NTK, YaRN).
* :func:`with_rope_scaling` / :func:`with_rope_config` return a model that shares every weight
  with the given one but evaluates RoPE differently (evaluation-time extension).
* :func:`load_model_with` loads a checkpoint into a config that differs only in RoPE fields.
* Continued training at a longer length / larger base (the paper's 4k -> 32k stage with base
  10k -> 1M, section 4.3 / Table 5) is :func:`gated_attention.train.train` with ``init_from``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from gated_attention.config import ROPE_FIELDS
from gated_attention.model import GatedLM, RotaryEmbedding
from gated_attention.ops.rope import check_rope_scaling

SCALING_MODES = ("none", "linear", "ntk", "dynamic", "yarn")
"""Names accepted by :func:`scaling_config` (``none`` is plain RoPE)."""


def scaling_config(
    mode: str, factor: float, original_length: int, **extra: Any
) -> dict[str, Any] | None:
    """The ``rope_scaling`` dict of a named mode (``None`` for ``"none"``).

    Args:
        mode: one of :data:`SCALING_MODES`.
        factor: the scale ``s >= 1`` (target length / trained length for the static modes;
            dynamic NTK grows its base as ``s n / L - (s - 1)`` with the current length ``n``).
        original_length: the trained length ``L`` (stored as
            ``original_max_position_embeddings`` so the dict is self-contained).
        extra: further scaling keys (e.g. ``beta_fast`` for YaRN).
    """
    if mode not in SCALING_MODES:
        raise ValueError(
            f"scaling mode {mode!r} is not valid; allowed: {', '.join(SCALING_MODES)}."
        )
    if mode == "none":
        return None
    length = original_length
    if isinstance(length, bool) or int(length) != length or length < 1:
        raise ValueError(f"original_length must be a positive integer, got {original_length!r}.")
    scaling = {
        "rope_type": mode,
        "factor": float(factor),
        "original_max_position_embeddings": int(original_length),
        **extra,
    }
    return check_rope_scaling(scaling)


def _check_rope_overrides(overrides: dict[str, Any]) -> None:
    for key in overrides:
        if key not in ROPE_FIELDS:
            raise ValueError(
                f"{key!r} is not a RoPE field; a trained model can only be re-configured in "
                f"{', '.join(ROPE_FIELDS)} (other fields change the weights)."
            )


def with_rope_config(model: GatedLM, **overrides: Any) -> GatedLM:
    """A model sharing every weight with ``model`` whose config differs in RoPE fields only.

    Args:
        model: a trained :class:`GatedLM` (left unchanged).
        overrides: any of :data:`ROPE_FIELDS` (``rope_scaling`` is validated).

    Returns:
        A new :class:`GatedLM` with ``cfg`` updated and fresh rotary tables; its modules
        (embeddings, layers, norm, head) are the same objects as ``model``'s, so training one
        trains both.
    """
    _check_rope_overrides(overrides)
    if "rope_scaling" in overrides:
        overrides["rope_scaling"] = check_rope_scaling(overrides["rope_scaling"])
    cfg = model.cfg.replace(**overrides)
    # A shallow copy shares every submodule and parameter; its own module table lets it take
    # fresh rotary tables (the only part that depends on the RoPE fields).
    new = copy.copy(model)
    for key, value in model.__dict__.items():
        if isinstance(value, dict):
            new.__dict__[key] = value.copy()
    new.cfg = cfg
    new.rotary = RotaryEmbedding(cfg).to(model.embed_tokens.weight.device)
    return new


def with_rope_scaling(model: GatedLM, scaling: dict[str, Any] | None) -> GatedLM:
    """``model`` with ``cfg.rope_scaling = scaling`` (weights shared, rotary tables rebuilt).

    ``scaling`` without ``original_max_position_embeddings`` takes the model's
    ``max_position_embeddings`` as the trained length.
    """
    return with_rope_config(model, rope_scaling=scaling)


def load_model_with(
    path: str | Path, device: str | torch.device = "cpu", **overrides: Any
) -> GatedLM:
    """Load a saved model, checkpoint or run directory into a config changed in RoPE fields.

    Example: ``load_model_with(run, rope_scaling=scaling_config("yarn", 4, 128))`` or
    ``load_model_with(run, rope_theta=1e6, max_position_embeddings=1024)``.
    """
    from gated_attention.train import load_model

    _check_rope_overrides(overrides)
    model = load_model(path, device=device)
    return with_rope_config(model, **overrides) if overrides else model
