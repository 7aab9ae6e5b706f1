"""Context extension without (or with little) retraining: RoPE scaling on a trained model.

* :func:`scaling_config` builds the ``rope_scaling`` dict of a named mode for a trained length
  and factor (PAPER.md section 7: position interpolation, NTK, dynamic NTK, YaRN).
* :func:`with_rope_scaling` / :func:`with_rope_config` return a model that shares every weight
  with the given one but evaluates RoPE differently (evaluation-time extension).
* :func:`load_model_with` loads a checkpoint into a config that differs only in RoPE fields.
* :func:`continue_training` trains a run initialised from another run's weights, e.g. at a
  longer length with a larger base (the paper's 4k -> 32k stage with base 10k -> 1M,
  section 4.3 / Table 5).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gated_attention.config import ModelConfig
from gated_attention.model import GatedLM, RotaryEmbedding
from gated_attention.ops.rope import check_rope_scaling

if TYPE_CHECKING:
    from gated_attention.train import RunConfig, TrainResult

SCALING_MODES = ("none", "linear", "ntk", "dynamic", "yarn")
"""Names accepted by :func:`scaling_config` (``none`` is plain RoPE)."""

ROPE_FIELDS = ("rope_theta", "rope_scaling", "max_position_embeddings", "partial_rotary_factor")
"""ModelConfig fields that change only how positions are encoded, never a weight shape."""

_MODE_TO_TYPE = {"linear": "linear", "ntk": "ntk", "dynamic": "dynamic", "yarn": "yarn"}


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
    if (
        isinstance(original_length, bool)
        or int(original_length) != original_length
        or original_length < 1
    ):
        raise ValueError(f"original_length must be a positive integer, got {original_length!r}.")
    scaling = {
        "rope_type": _MODE_TO_TYPE[mode],
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


def _model_device(model: GatedLM) -> torch.device:
    return model.embed_tokens.weight.device


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
    new.rotary = RotaryEmbedding(cfg).to(_model_device(model))
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


def rope_only_difference(a: ModelConfig, b: ModelConfig) -> list[str]:
    """Fields in which two configs differ; raises ``ValueError`` if any is not a RoPE field."""
    da, db = a.to_dict(), b.to_dict()
    diff = [k for k in da if da[k] != db[k]]
    bad = [k for k in diff if k not in ROPE_FIELDS]
    if bad:
        details = "; ".join(f"{k}: {da[k]!r} vs {db[k]!r}" for k in bad)
        raise ValueError(
            f"the configs differ in non-RoPE fields ({details}); only {', '.join(ROPE_FIELDS)} "
            "may change when weights are carried over"
        )
    return diff


def continue_training(init_from: str | Path, cfg: RunConfig, resume: bool = False) -> TrainResult:
    """Train ``cfg`` starting from the weights of another run (same architecture).

    Use it for the paper's context-extension stage: copy the first run's config, raise
    ``data.seq_len`` and ``model.max_position_embeddings``, set ``model.rope_theta`` (e.g.
    10x-100x larger) and train for a few steps. The model config may differ from the source's
    only in :data:`ROPE_FIELDS`. With ``resume=True`` and checkpoints in ``cfg.out_dir`` the
    run resumes from them instead. Single process (or DDP); the optimizer starts fresh.
    """
    from gated_attention.train import checkpoint as ckpt
    from gated_attention.train import distributed as dist_utils
    from gated_attention.train import load_model
    from gated_attention.train.trainer import Trainer

    try:
        trainer = Trainer(cfg, resume=resume)
        if not (resume and ckpt.latest_checkpoint(trainer.ckpt_root) is not None):
            source = load_model(init_from)
            rope_only_difference(source.cfg, trainer.model_cfg)
            ckpt.load_weights(trainer.model, ckpt.model_state(source), str(init_from))
        return trainer.fit()
    finally:
        dist_utils.teardown()
