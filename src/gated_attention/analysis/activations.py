"""Massive activations in the residual stream (Sun et al. 2024, "Massive Activations in LLMs").

Sun et al. call an activation *massive* when its magnitude exceeds 100 and is at least about
1000 times the median magnitude of the layer's hidden states. Qiu et al. (2025, Table 4) report
M-Act, the mean over layers of each layer's maximum ``|h|`` (1053 for their baseline, 94 with
the G1 gate); docs/paper.md section 6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._common import JsonMixin, TensorOrLayers, as_layer_list, check_ndim


@dataclass
class TopActivation(JsonMixin):
    """One large entry of a ``(batch, seq, d)`` hidden state: its signed value and location."""

    value: float
    abs_value: float
    batch: int
    token: int
    dim: int


@dataclass
class LayerActivations(JsonMixin):
    """Magnitude statistics of one layer's residual-stream output.

    Attributes:
        layer: layer index.
        max_abs: largest ``|h|``.
        median_abs: median ``|h|`` (the lower median for an even count).
        max_to_median: ``max_abs / median_abs``.
        n_massive: entries meeting Sun et al.'s criterion.
        is_massive: whether any entry meets it.
        massive_tokens: sorted token positions holding a massive entry.
        massive_dims: sorted hidden dimensions holding a massive entry.
        top: the ``top_k`` largest entries by magnitude.
        first_token_norm_ratio: ``||h_0||`` over the mean ``||h_t||`` for ``t > 0`` (both
            averaged over the batch); NaN when the sequence has one token.
    """

    layer: int
    max_abs: float
    median_abs: float
    max_to_median: float
    n_massive: int
    is_massive: bool
    massive_tokens: list[int]
    massive_dims: list[int]
    top: list[TopActivation]
    first_token_norm_ratio: float


@dataclass
class MassiveActivations(JsonMixin):
    """Massive-activation statistics over layers.

    Attributes:
        layers: one :class:`LayerActivations` per layer.
        max_abs_per_layer: ``(layers,)`` each layer's max ``|h|`` (for plotting).
        m_act: the paper's M-Act, the mean of ``max_abs_per_layer``.
        any_massive: whether any layer meets the criterion.
        massive_layers: indices of layers that meet it.
        abs_threshold: the absolute threshold used (Sun et al.: 100).
        median_ratio: the ratio-to-median threshold used (Sun et al.: 1000).
    """

    layers: list[LayerActivations]
    max_abs_per_layer: list[float]
    m_act: float
    any_massive: bool
    massive_layers: list[int]
    abs_threshold: float
    median_ratio: float


def layer_activations(
    hidden: torch.Tensor,
    layer: int = 0,
    *,
    top_k: int = 5,
    abs_threshold: float = 100.0,
    median_ratio: float = 1000.0,
) -> LayerActivations:
    """Magnitude statistics of one ``(batch, seq, d)`` residual-stream tensor."""
    check_ndim(hidden, 3, f"hidden_states[{layer}]", "(batch, seq, d)")
    if hidden.numel() == 0:
        raise ValueError(f"hidden_states[{layer}]: empty tensor {tuple(hidden.shape)}")
    h = hidden.detach().double()
    a = h.abs()
    flat = a.flatten()
    max_abs = float(flat.max())
    median_abs = float(flat.median())
    ratio = max_abs / median_abs if median_abs > 0 else float("inf")
    massive = (a > abs_threshold) & (a >= median_ratio * median_abs)
    where = massive.nonzero()  # (n, 3): batch, token, dim
    k = min(top_k, flat.numel())
    values, idx = flat.topk(k)
    _, T, d = a.shape
    top = []
    for v, i in zip(values.tolist(), idx.tolist()):
        b, rem = divmod(i, T * d)
        t, j = divmod(rem, d)
        top.append(TopActivation(value=float(h[b, t, j]), abs_value=v, batch=b, token=t, dim=j))
    norms = h.norm(dim=-1)  # (batch, seq)
    first_ratio = float(norms[:, 0].mean() / norms[:, 1:].mean()) if T > 1 else float("nan")
    return LayerActivations(
        layer=layer,
        max_abs=max_abs,
        median_abs=median_abs,
        max_to_median=ratio,
        n_massive=int(where.shape[0]),
        is_massive=bool(where.shape[0] > 0),
        massive_tokens=sorted(set(where[:, 1].tolist())),
        massive_dims=sorted(set(where[:, 2].tolist())),
        top=top,
        first_token_norm_ratio=first_ratio,
    )


def massive_activations(
    hidden_states: TensorOrLayers,
    top_k: int = 5,
    *,
    abs_threshold: float = 100.0,
    median_ratio: float = 1000.0,
) -> MassiveActivations:
    """Per-layer max/median ``|h|``, Sun et al.'s criterion, top entries and M-Act.

    Args:
        hidden_states: per-layer residual-stream outputs, each ``(batch, seq, d)`` (a single
            tensor counts as one layer). Use each block's raw output, not a final-normed one.
        top_k: how many of the largest entries to locate per layer.
        abs_threshold: magnitude a massive entry must exceed (Sun et al.: 100).
        median_ratio: how many times the layer's median ``|h|`` it must reach (Sun et al.: 1000).
    """
    layers = as_layer_list(hidden_states, "hidden_states")
    stats = [
        layer_activations(h, i, top_k=top_k, abs_threshold=abs_threshold, median_ratio=median_ratio)
        for i, h in enumerate(layers)
    ]
    maxes = [s.max_abs for s in stats]
    return MassiveActivations(
        layers=stats,
        max_abs_per_layer=maxes,
        m_act=sum(maxes) / len(maxes),
        any_massive=any(s.is_massive for s in stats),
        massive_layers=[s.layer for s in stats if s.is_massive],
        abs_threshold=abs_threshold,
        median_ratio=median_ratio,
    )
