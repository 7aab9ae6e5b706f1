"""Attention-sink metrics on attention maps: first-token mass, alpha_k, sink rate, null attention.

Definitions follow the reference facts (docs/paper.md section 6):

* **F-Attn** (Qiu et al. 2025, Table 4): the probability on key 0, averaged over queries and
  heads, per layer and then over layers. It is reported beside the *causal floor*, the value
  a uniform causal head gives: ``H_T / T`` (0.074 at T=64, 0.024 at 256, 0.013 at 512).
* **alpha_k and Sink_k^eps** (Gu et al. 2024, "When Attention Sink Emerges in Language
  Models"): ``alpha_k = 1/(T-k+1) * sum_{t>=k} A[t, k]`` with 1-based ``k``, and the sink rate
  is the share of heads with ``alpha_k > eps`` (eps = 0.3, T = 64).

* **Null attention** (``docs/normalizers.md``): under a normaliser whose rows need not sum to
  1 (a learnable sink, softmax + 1, a key/value bias, sigmoid attention) the metrics above read
  the weights on the real tokens, and :class:`NullAttention` reports separately the share the
  sink, the "+1" or the bias column takes, and the first-token share of the real-token mass.

All maps are ``(batch, heads, query, key)``. When ``key > query`` (a cached prefix) the causal
mask is taken as bottom-right aligned: query ``t`` sees keys ``0 .. t + (key - query)``.
The metrics assume unpadded sequences: key 0 is the first real token of every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._common import JsonMixin, TensorOrLayers, as_layer_list, check_ndim, check_probs


def causal_floor(T: int, *, key_len: int | None = None, include_first_query: bool = True) -> float:
    """First-token mass of a uniform causal head: ``H_T / T`` for a square map.

    A uniform causal head gives query ``t`` (0-based) the weight ``1 / (t + 1)`` on key 0, so
    the mean over the ``T`` queries is the harmonic number ``H_T`` divided by ``T``.

    Args:
        T: number of queries.
        key_len: number of keys ``S >= T`` (defaults to ``T``); with a prefix of ``S - T``
            cached keys query ``t`` sees ``S - T + t + 1`` keys.
        include_first_query: average over all queries (the default, as F-Attn does); when
            ``False`` query 0 is left out, giving ``(H_T - 1) / (T - 1)`` for a square map.

    Returns:
        The floor as a float.
    """
    S = T if key_len is None else key_len
    if T < 1 or S < T:
        raise ValueError(f"causal_floor: need 1 <= T <= key_len, got T={T}, key_len={S}")
    start = 0 if include_first_query else 1
    if start >= T:
        raise ValueError("causal_floor: excluding the first query leaves no query when T == 1")
    offset = S - T
    t = torch.arange(start, T, dtype=torch.float64)
    return float((1.0 / (offset + t + 1.0)).mean())


@dataclass
class FirstTokenMass(JsonMixin):
    """Attention on key 0 for one layer.

    Attributes:
        mean: mean over batch, heads and the counted queries.
        per_head: ``(heads,)`` means over batch and queries.
        floor: the uniform causal head's value for the same query/key lengths.
        ratio_to_floor: ``mean / floor``; 1 means "no more than a uniform head".
        seq_len: number of queries ``T``.
        key_len: number of keys ``S``.
        include_first_query: whether query 0 (which can only see key 0) was counted.
    """

    mean: float
    per_head: list[float]
    floor: float
    ratio_to_floor: float
    seq_len: int
    key_len: int
    include_first_query: bool


@dataclass
class FirstTokenMassByLayer(JsonMixin):
    """Attention on key 0 for every layer (F-Attn is ``mean``, the mean over layers).

    Attributes:
        per_layer: one :class:`FirstTokenMass` per layer.
        per_layer_mean: ``(layers,)`` the per-layer means, for plotting.
        mean: mean over layers (the paper's F-Attn).
        floor: the causal floor for the sequence length.
        ratio_to_floor: ``mean / floor``.
        max_layer: index of the layer with the largest mean.
        max_value: that layer's mean (the paper quotes 83% at layer 21 for its baseline).
    """

    per_layer: list[FirstTokenMass]
    per_layer_mean: list[float]
    mean: float
    floor: float
    ratio_to_floor: float
    max_layer: int
    max_value: float


def first_token_mass_from_key0(
    p0: torch.Tensor, key_len: int, *, include_first_query: bool = True
) -> FirstTokenMass:
    """Summarise the probability each query puts on key 0.

    Args:
        p0: ``(batch, heads, query)`` attention on key 0 (``probs[..., 0]``).
        key_len: number of keys ``S`` in the map ``p0`` was taken from (sets the floor).
        include_first_query: count query 0; see :func:`first_token_mass`.
    """
    check_ndim(p0, 3, "p0", "(batch, heads, query)")
    T = p0.shape[-1]
    start = 0 if include_first_query else 1
    if start >= T:
        raise ValueError("first_token_mass: excluding the first query leaves no query (T == 1)")
    per_head = p0[..., start:].double().mean(dim=-1).mean(dim=0)  # (heads,)
    mean = float(per_head.mean())
    floor = causal_floor(T, key_len=key_len, include_first_query=include_first_query)
    return FirstTokenMass(
        mean=mean,
        per_head=per_head.tolist(),
        floor=floor,
        ratio_to_floor=mean / floor,
        seq_len=T,
        key_len=key_len,
        include_first_query=include_first_query,
    )


def first_token_mass(probs: torch.Tensor, *, include_first_query: bool = True) -> FirstTokenMass:
    """Attention probability on key 0, averaged over queries, per head and overall.

    The default counts every query ``0 .. T-1`` because that is how the paper's F-Attn and the
    ``H_T / T`` floor are defined (and Gu et al.'s ``alpha_1`` sums from ``t = 1``, the first
    token). Query 0 of a square causal map always puts 1.0 on key 0; pass
    ``include_first_query=False`` to leave it out (the floor is then ``(H_T - 1) / (T - 1)``).
    The difference is at most ``1 / T``.

    Args:
        probs: ``(batch, heads, query, key)`` softmax attention (any float dtype).
        include_first_query: whether query 0 is counted.
    """
    check_probs(probs)
    return first_token_mass_from_key0(
        probs[..., 0], probs.shape[-1], include_first_query=include_first_query
    )


def summarise_first_token_mass(per_layer: Sequence[FirstTokenMass]) -> FirstTokenMassByLayer:
    """Combine per-layer :class:`FirstTokenMass` results into a :class:`FirstTokenMassByLayer`."""
    if not per_layer:
        raise ValueError("summarise_first_token_mass: no layers given")
    means = [r.mean for r in per_layer]
    mean = sum(means) / len(means)
    floor = per_layer[0].floor
    best = max(range(len(means)), key=means.__getitem__)
    return FirstTokenMassByLayer(
        per_layer=list(per_layer),
        per_layer_mean=means,
        mean=mean,
        floor=floor,
        ratio_to_floor=mean / floor,
        max_layer=best,
        max_value=means[best],
    )


def first_token_mass_by_layer(
    probs_per_layer: TensorOrLayers, *, include_first_query: bool = True
) -> FirstTokenMassByLayer:
    """:func:`first_token_mass` for each layer's ``(batch, heads, query, key)`` map."""
    layers = as_layer_list(probs_per_layer, "probs_per_layer")
    return summarise_first_token_mass(
        [first_token_mass(p, include_first_query=include_first_query) for p in layers]
    )


def alpha_from_key_column(column: torch.Tensor, key_index: int, key_len: int) -> torch.Tensor:
    """Gu et al.'s alpha from the attention every query puts on one key.

    Args:
        column: ``(batch, heads, query)`` probabilities on key ``key_index`` (0-based).
        key_index: 0-based key position ``k - 1``.
        key_len: number of keys ``S`` (sets which queries can see the key).

    Returns:
        ``(batch, heads)`` float64: the mean over the queries that can see the key.
    """
    check_ndim(column, 3, "column", "(batch, heads, query)")
    T = column.shape[-1]
    # Bottom-right causal alignment: query t sees key j iff j <= t + (S - T).
    first_query = max(0, key_index - (key_len - T))
    if first_query >= T:
        raise ValueError(f"alpha: key {key_index} is visible to no query (T={T}, S={key_len})")
    return column[..., first_query:].double().sum(dim=-1) / (T - first_query)


def alpha_k(probs: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Gu et al. (2024) importance score of key ``k`` (1-based): ``(batch, heads)`` float64.

    ``alpha_k = 1/(T-k+1) * sum_{t>=k} A[t, k]``: the mean attention on key ``k`` over the
    queries that can see it. ``k = 1`` is the first token, where ``alpha_1`` equals the
    first-token mass with every query counted.

    Args:
        probs: ``(batch, heads, query, key)`` softmax attention.
        k: 1-based key position, ``1 <= k <= key``.
    """
    check_probs(probs)
    S = probs.shape[-1]
    if not 1 <= k <= S:
        raise ValueError(f"alpha_k: k must be in [1, {S}] (1-based), got {k}")
    return alpha_from_key_column(probs[..., k - 1], k - 1, S)


@dataclass
class SinkRate(JsonMixin):
    """Gu et al.'s ``Sink_k^eps`` over one or more layers.

    The indicator ``alpha_k > eps`` is taken per (sequence, layer, head) and averaged over all
    of them, as the authors' released evaluation code does (it thresholds each sample's scores
    and then takes the mean over samples, layers and heads).

    Attributes:
        rate: share of (sequence, layer, head) triples with ``alpha_k > eps``.
        per_layer_rate: ``(layers,)`` share of (sequence, head) pairs per layer.
        per_layer_head_rate: ``(layers, heads)`` share of sequences in which the head is a sink.
        per_layer_head_alpha: ``(layers, heads)`` alpha_k averaged over the sequences.
        eps: threshold.
        k: 1-based key position.
        seq_len: number of queries ``T``.
        n_sequences: batch size the rate was averaged over.
    """

    rate: float
    per_layer_rate: list[float]
    per_layer_head_rate: list[list[float]]
    per_layer_head_alpha: list[list[float]]
    eps: float
    k: int
    seq_len: int
    n_sequences: int


def sink_rate_from_alpha(
    alpha_per_layer: TensorOrLayers, *, eps: float = 0.3, k: int = 1, seq_len: int
) -> SinkRate:
    """Build a :class:`SinkRate` from per-layer ``(batch, heads)`` alpha scores.

    Used by :func:`sink_rate_by_layer` and by the streaming path that computes alpha directly
    from queries and keys.
    """
    alphas = as_layer_list(alpha_per_layer, "alpha_per_layer")
    hits, total = 0.0, 0
    per_layer_rate, head_rate, head_alpha = [], [], []
    for i, a in enumerate(alphas):
        check_ndim(a, 2, f"alpha_per_layer[{i}]", "(batch, heads)")
        sink = (a.double() > eps).double()  # (batch, heads)
        per_layer_rate.append(float(sink.mean()))
        head_rate.append(sink.mean(dim=0).tolist())
        head_alpha.append(a.double().mean(dim=0).tolist())
        hits += float(sink.sum())
        total += sink.numel()
    return SinkRate(
        rate=hits / total,
        per_layer_rate=per_layer_rate,
        per_layer_head_rate=head_rate,
        per_layer_head_alpha=head_alpha,
        eps=eps,
        k=k,
        seq_len=seq_len,
        n_sequences=alphas[0].shape[0],
    )


def sink_rate_by_layer(probs_per_layer: TensorOrLayers, eps: float = 0.3, k: int = 1) -> SinkRate:
    """Sink rate over a list of per-layer ``(batch, heads, query, key)`` maps."""
    layers = as_layer_list(probs_per_layer, "probs_per_layer")
    alphas = [alpha_k(p, k) for p in layers]
    return sink_rate_from_alpha(alphas, eps=eps, k=k, seq_len=layers[0].shape[2])


def sink_rate(probs: TensorOrLayers, eps: float = 0.3, k: int = 1) -> SinkRate:
    """Gu et al.'s ``Sink_k^eps``: share of heads with ``alpha_k > eps``.

    Args:
        probs: one ``(batch, heads, query, key)`` map (treated as one layer) or a list of them.
        eps: threshold (Gu et al. use 0.3 at T = 64).
        k: 1-based key position (1 = first token).
    """
    return sink_rate_by_layer(probs, eps=eps, k=k)


# ---------------------------------------------------------------------- null attention
@dataclass
class NullAttention(JsonMixin):
    """Where one layer's attention goes under a normaliser whose rows need not sum to 1.

    Attributes:
        row_mass: mean total weight on the real tokens (1 under softmax).
        null_mass: mean ``1 - row mass``: the weight a learnable sink, the "+1" or a key/value
            bias column takes, or that a rectified kind withholds ("null attention"); ``None`` where
            rows may exceed 1 (sigmoid attention), so no share is withheld.
        first_token_share: mean over rows with weight of ``weight on token 0 / row mass``: the
            F-Attn the same logits would give with the null column removed.
        per_head_row_mass / per_head_null_mass: ``(heads,)`` means over batch and queries.
    """

    row_mass: float
    null_mass: float | None
    first_token_share: float
    per_head_row_mass: list[float]
    per_head_null_mass: list[float] | None


@dataclass
class NullAttentionByLayer(JsonMixin):
    """:class:`NullAttention` for every layer, with the normaliser's learned parameters.

    Attributes:
        kind: the normaliser (``NormalizerConfig.kind``).
        per_layer: one :class:`NullAttention` per layer.
        row_mass / null_mass / first_token_share: means over layers (``null_mass`` ``None``
            for normalisers without null attention).
        per_layer_null_mass: ``(layers,)``, or ``None``.
        parameters: per parameter name, ``(layers, heads)``: the learned value per head (the
            sink logits ``s_h``) or, for vector parameters, its norm per head (key/value bias).
        parameter_means: per parameter name, the mean of ``parameters`` over layers and heads.
    """

    kind: str
    per_layer: list[NullAttention]
    row_mass: float
    null_mass: float | None
    first_token_share: float
    per_layer_null_mass: list[float] | None
    parameters: dict[str, list[list[float]]]
    parameter_means: dict[str, float]


def null_attention_from_rows(
    p0: torch.Tensor, rows: torch.Tensor, *, null_defined: bool = True
) -> NullAttention:
    """Summarise one layer from the weight on token 0 and each row's total weight.

    Args:
        p0: ``(batch, heads, query)`` weight on key 0.
        rows: ``(batch, heads, query)`` total weight on the real keys.
        null_defined: whether ``1 - rows`` is null attention (False for sigmoid attention).
    """
    check_ndim(p0, 3, "p0", "(batch, heads, query)")
    check_ndim(rows, 3, "rows", "(batch, heads, query)")
    rows, p0 = rows.double(), p0.double()
    per_head_rows = rows.mean(dim=-1).mean(dim=0)
    positive = rows > 0
    share = torch.where(positive, p0 / rows.clamp(min=torch.finfo(rows.dtype).tiny), 0.0)
    first_share = float(share.sum() / positive.sum().clamp(min=1))
    per_head_null = (1 - per_head_rows) if null_defined else None
    return NullAttention(
        row_mass=float(per_head_rows.mean()),
        null_mass=float(per_head_null.mean()) if per_head_null is not None else None,
        first_token_share=first_share,
        per_head_row_mass=per_head_rows.tolist(),
        per_head_null_mass=per_head_null.tolist() if per_head_null is not None else None,
    )


def null_attention(probs: torch.Tensor, *, null_defined: bool = True) -> NullAttention:
    """:func:`null_attention_from_rows` of one ``(batch, heads, query, key)`` weight map."""
    check_probs(probs)
    return null_attention_from_rows(probs[..., 0], probs.sum(dim=-1), null_defined=null_defined)


def summarise_null_attention(
    kind: str,
    per_layer: Sequence[NullAttention],
    parameters: Sequence[dict[str, torch.Tensor]] = (),
) -> NullAttentionByLayer:
    """Combine per-layer results, with each layer's learned normaliser parameters (``(heads,)``
    values or ``(heads, D)`` vectors, by name)."""
    if not per_layer:
        raise ValueError("summarise_null_attention: no layers given")
    n = len(per_layer)
    nulls = [r.null_mass for r in per_layer]
    defined = all(v is not None for v in nulls)
    params: dict[str, list[list[float]]] = {}
    for layer in parameters:
        for name, t in layer.items():
            t = t.detach().double().cpu()
            per_head = t if t.dim() == 1 else t.reshape(t.shape[0], -1).norm(dim=-1)
            params.setdefault(name, []).append(per_head.tolist())
    return NullAttentionByLayer(
        kind=kind,
        per_layer=list(per_layer),
        row_mass=sum(r.row_mass for r in per_layer) / n,
        null_mass=sum(nulls) / n if defined else None,  # type: ignore[arg-type]
        first_token_share=sum(r.first_token_share for r in per_layer) / n,
        per_layer_null_mass=nulls if defined else None,  # type: ignore[arg-type]
        parameters=params,
        parameter_means={
            name: float(torch.tensor(v, dtype=torch.float64).mean()) for name, v in params.items()
        },
    )
