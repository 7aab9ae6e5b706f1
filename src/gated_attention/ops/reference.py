"""Slow, plain float64 references for tests and analysis cross-checks.

Written from the paper's equations, head by head, sharing no code with the fast path except
the configs. ``attention_layer_weights`` unpacks a :class:`~gated_attention.nn.GatedAttention`
module's parameters into separate matrices by the documented ``qkv_proj`` layout.

Attention normalisers (``docs/normalizers.md``): :data:`REFERENCE_NORMALIZERS` holds one naive
function per kind, written from its paper's formula, used by :func:`reference_attention` (the
op) and :func:`reference_attention_layer` (the layer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from gated_attention.config import ModelConfig


def attention_layer_weights(module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    """Separate float64 weights of an attention layer: ``wq (H*D, d)``, ``wk``/``wv``
    ``(K*D, d)``, ``wg (gate_size, d)`` (or ``None``), their biases, ``wo (d, H*D)``, ``bo``,
    ``q_norm``/``k_norm``/``out_norm`` weights and the input-independent ``gate_logits``."""
    cfg: ModelConfig = module.cfg
    sizes = [cfg.q_size, cfg.kv_size, cfg.kv_size, cfg.gate_size]
    ws = module.qkv_proj.weight.detach().double().split(sizes, dim=0)
    bias = module.qkv_proj.bias
    bs = bias.detach().double().split(sizes) if bias is not None else [None] * 4

    def get(obj: torch.nn.Module | None, attr: str = "weight") -> torch.Tensor | None:
        if obj is None:
            return None
        t = getattr(obj, attr)
        return None if t is None else t.detach().double()

    return {
        "wq": ws[0],
        "wk": ws[1],
        "wv": ws[2],
        "wg": ws[3] if cfg.gate_size else None,
        "bq": bs[0],
        "bk": bs[1],
        "bv": bs[2],
        "bg": bs[3] if cfg.gate_size else None,
        "wo": get(module.o_proj),
        "bo": get(module.o_proj, "bias"),
        "q_norm": get(module.q_norm),
        "k_norm": get(module.k_norm),
        "out_norm": get(module.out_norm),
        "gate_logits": module.gate_logits.detach().double()
        if module.gate_logits is not None
        else None,
        **{name: getattr(module, name).detach().double() for name in module.normalizer_params},
    }


# ---------------------------------------------------------------------- normalisers
NormalizerRef = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
"""``fn(logits (T, S), allowed (T, S), q (T, D), h, j, scale, params, options)`` for query head
``h`` reading KV head ``j``: ``(weights on the real keys (T, S), extra output (T, D) or None)``.
``logits`` are unmasked; ``params`` the layer's normaliser parameters, ``options`` resolved."""


def _softmax_ref(logits, allowed, q, h, j, scale, params, options):
    return torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1), None


def _sink_ref(logits, allowed, q, h, j, scale, params, options):
    # gpt-oss: softmax over [logits, s_h], the sink column dropped.
    sink = params["sinks"][h].reshape(1, 1).expand(logits.shape[0], 1)
    probs = torch.softmax(torch.cat((logits.masked_fill(~allowed, float("-inf")), sink), 1), 1)
    return probs[:, :-1], None


def _softmax1_ref(logits, allowed, q, h, j, scale, params, options):
    # Miller 2023: exp(x_i) / (1 + sum_j exp(x_j)).
    e = torch.where(allowed, torch.exp(logits), 0.0)
    return e / (1 + e.sum(-1, keepdim=True)), None


def _kv_bias_ref(logits, allowed, q, h, j, scale, params, options):
    # Sun et al. 2024: softmax over [q K^T, q k'] * scale, values [V; v'].
    bias_logit = (q @ params["bias_key"][j]) * scale  # (T,)
    e = torch.where(allowed, torch.exp(logits), 0.0)
    e_bias = torch.exp(bias_logit)[:, None]
    den = e.sum(-1, keepdim=True) + e_bias
    return e / den, (e_bias / den) * params["bias_value"][j][None, :]


def _sigmoid_ref(logits, allowed, q, h, j, scale, params, options):
    # Ramapuram et al. 2024: sigmoid(x - log n).
    x = logits.masked_fill(~allowed, 0.0) - math.log(options["length"])
    return torch.where(allowed, 1 / (1 + torch.exp(-x)), 0.0), None


def _softpick_ref(logits, allowed, q, h, j, scale, params, options):
    # Zuhri et al. 2025: relu(e^x - 1) / (sum |e^x - 1| + eps e^m), m = max(0, max x).
    x = logits.masked_fill(~allowed, 0.0)
    m = x.masked_fill(~allowed, float("-inf")).max(-1, keepdim=True).values.clamp(min=0)
    e = torch.where(allowed, torch.exp(x) - 1, 0.0)
    den = e.abs().sum(-1, keepdim=True) + options["eps"] * torch.exp(m)
    return torch.relu(e) / den, None


REFERENCE_NORMALIZERS: dict[str, NormalizerRef] = {
    "softmax": _softmax_ref,
    "sink": _sink_ref,
    "softmax1": _softmax1_ref,
    "kv-bias": _kv_bias_ref,
    "sigmoid": _sigmoid_ref,
    "softpick": _softpick_ref,
}


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    kind: str = "softmax",
    params: Mapping[str, torch.Tensor] | None = None,
    options: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Causal grouped-query attention in float64, one head of one row at a time.

    Args:
        q: ``(B, T, H, D)``; k, v: ``(B, S, K, D)``.
        mask: boolean ``(B | 1, 1, T, S)`` (True = may attend), else bottom-right causal.
        scale: logit scale, default ``1 / sqrt(D)``.
        kind, params, options: the normaliser (:data:`REFERENCE_NORMALIZERS`), its parameters
            and its resolved options.

    Returns:
        ``(B, T, H, D)`` float64.
    """
    q, k, v = q.double(), k.double(), v.double()
    B, T, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(D) if scale is None else scale
    params = {n: p.double() for n, p in (params or {}).items()}
    fn = REFERENCE_NORMALIZERS[kind]
    rows = []
    for b in range(B):
        allowed = torch.ones(T, S, dtype=torch.bool).tril(S - T)
        if mask is not None:
            allowed = mask[b if mask.shape[0] > 1 else 0, 0]
        heads = []
        for h in range(H):
            j = h // (H // K)
            logits = q[b, :, h] @ k[b, :, j].T * scale
            weights, extra = fn(logits, allowed, q[b, :, h], h, j, scale, params, options or {})
            out = weights @ v[b, :, j]
            heads.append(out if extra is None else out + extra)
        rows.append(torch.stack(heads, dim=1))
    return torch.stack(rows)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = x @ w.T
    return y if b is None else y + b


def _rms(x: torch.Tensor, w: torch.Tensor | None, eps: float, zero_centered: bool) -> torch.Tensor:
    x = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    if w is None:
        return x
    return x * (1 + w) if zero_centered else x * w


def _act(s: torch.Tensor, name: str) -> torch.Tensor:
    sig = 1 / (1 + torch.exp(-s))
    return {"sigmoid": sig, "silu": s * sig, "ns_sigmoid": 0.5 + 0.5 * sig, "identity": s}[name]


def _rope(x: torch.Tensor, positions: torch.Tensor, rot: int, base: float) -> torch.Tensor:
    """x ``(T, D)`` at integer positions ``(T,)``: rotate pairs (i, i + rot/2), i < rot/2."""
    out = x.clone()
    half = rot // 2
    for i in range(half):
        theta = base ** (-2 * i / rot)
        ang = positions.double() * theta
        c, s = torch.cos(ang), torch.sin(ang)
        a, b = x[:, i], x[:, i + half]
        out[:, i] = a * c - b * s
        out[:, i + half] = b * c + a * s
    return out


def reference_attention_layer(
    x: torch.Tensor, weights: dict[str, torch.Tensor | None], cfg: ModelConfig
) -> torch.Tensor:
    """The attention layer of the paper for one causal sequence batch, in float64.

    Args:
        x: normed block input ``(B, T, hidden)``, positions ``0..T-1``.
        weights: from :func:`attention_layer_weights`.
        cfg: the model config (the gate config decides the variant, the normaliser config
            the attention normaliser).

    Returns:
        ``(B, T, hidden)``.
    """
    x = x.double()
    B, T, _ = x.shape
    H, K, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    group = H // K
    gate = cfg.gate
    zc_qk = cfg.qk_norm == "zero_centered"
    normalizer = REFERENCE_NORMALIZERS[cfg.normalizer.kind]
    opts = dict(cfg.normalizer.options)
    if cfg.normalizer.kind == "sigmoid" and opts["length"] is None:
        opts["length"] = cfg.max_position_embeddings
    positions = torch.arange(T)
    out = torch.zeros(B, T, cfg.hidden_size, dtype=torch.float64)
    for b in range(B):
        xb = x[b]
        q = _linear(xb, weights["wq"], weights["bq"]).view(T, H, D)
        k = _linear(xb, weights["wk"], weights["bk"]).view(T, K, D)
        v = _linear(xb, weights["wv"], weights["bv"]).view(T, K, D)
        logits = weights["gate_logits"]  # input-independent: gate_shape, broadcast over T
        if gate.has_projection:
            logits = _linear(xb, weights["wg"], weights["bg"]).reshape(T, *cfg.gate_shape)

        def gated(y: torch.Tensor, logits=logits) -> torch.Tensor:
            """Gate y (T, heads, D) or (T, hidden) from the logits (paper Eq. 5)."""
            s = _act(logits, gate.activation)
            if gate.head_shared:
                s = s.mean(dim=1, keepdim=True)
            return y * s if gate.mode == "multiplicative" else y + s

        if gate.position == "value":
            v = gated(v)
        if cfg.qk_norm != "none":
            q = _rms(q, weights["q_norm"], cfg.rms_norm_eps, zc_qk)
            k = _rms(k, weights["k_norm"], cfg.rms_norm_eps, zc_qk)
        if gate.position == "query":
            q = gated(q)
        if gate.position == "key":
            k = gated(k)
        rot = cfg.rotary_dim
        q = torch.stack([_rope(q[:, h], positions, rot, cfg.rope_theta) for h in range(H)], 1)
        k = torch.stack([_rope(k[:, j], positions, rot, cfg.rope_theta) for j in range(K)], 1)
        z = torch.zeros(T, H, D, dtype=torch.float64)
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
        for h in range(H):
            j = h // group
            scores = (q[:, h] @ k[:, j].T) / math.sqrt(D)
            probs, extra = normalizer(
                scores, causal, q[:, h], h, j, 1 / math.sqrt(D), weights, opts
            )
            z[:, h] = probs @ v[:, j] + (0 if extra is None else extra)
        if gate.position == "sdpa":
            if gate.transform == "rmsnorm":
                z = _rms(z, weights["out_norm"], cfg.rms_norm_eps, cfg.norm_type == "zero_centered")
            elif gate.transform == "silu":
                z = z * (1 / (1 + torch.exp(-z)))
            else:
                z = gated(z)
        o = _linear(z.reshape(T, H * D), weights["wo"], weights["bo"])
        if gate.position == "dense":
            o = gated(o)
        out[b] = o
    return out
