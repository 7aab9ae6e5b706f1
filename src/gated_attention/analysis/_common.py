"""Shared helpers for the analysis package: shape checks, layer lists and JSON conversion."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

TensorOrLayers = torch.Tensor | Sequence[torch.Tensor]


def as_layer_list(x: TensorOrLayers, name: str) -> list[torch.Tensor]:
    """Return ``x`` as a list of per-layer tensors (a single tensor counts as one layer)."""
    if isinstance(x, torch.Tensor):
        return [x]
    layers = list(x)
    if not layers:
        raise ValueError(f"{name}: expected a tensor or a non-empty sequence of per-layer tensors")
    for i, t in enumerate(layers):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}[{i}]: expected a torch.Tensor, got {type(t).__name__}")
    return layers


def check_ndim(x: torch.Tensor, ndim: int, name: str, layout: str) -> None:
    """Raise a ``ValueError`` naming the expected layout when ``x`` has the wrong rank."""
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d tensor {layout}, got shape {tuple(x.shape)}")


def check_probs(probs: torch.Tensor, name: str = "probs") -> None:
    """Check an attention map is ``(batch, heads, query, key)`` with at least one query and key."""
    check_ndim(probs, 4, name, "(batch, heads, query, key)")
    if probs.shape[2] == 0 or probs.shape[3] == 0:
        raise ValueError(f"{name}: empty query or key axis, shape {tuple(probs.shape)}")


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, tensors, tuples, paths and non-finite floats into plain JSON values.

    NaN and infinities become ``None`` because strict JSON has no literal for them.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


class JsonMixin:
    """Gives a result dataclass a ``to_dict()`` that returns plain, JSON-serialisable values."""

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain Python values (nested results become dicts, NaN becomes None)."""
        return to_jsonable(self)
