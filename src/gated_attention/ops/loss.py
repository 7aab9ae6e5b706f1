"""Next-token cross entropy fused with the LM head, chunk by chunk over tokens.

The plain loss ``cross_entropy(hidden @ W.T)`` materialises the ``(tokens, vocab)`` logits, their
float32 copy, the log-softmax and, in backward, as many gradients of the same size: at a
151,669-token vocabulary and 8k tokens that is several GB for one loss. :func:`linear_cross_entropy`
computes the same loss without ever holding more than one chunk of ``chunk_size`` tokens' logits:
the forward keeps only each token's log-sum-exp (float32), and the backward recomputes each chunk's
logits from the saved hidden states (one extra LM-head matmul) to form the chunk's softmax
gradient, accumulating the weight gradient in float32. The ideas are those of Liger-Kernel's fused
linear cross entropy and Apple's Cut Cross-Entropy (Wijmans et al. 2024), written here in plain
PyTorch so it runs on any device and under ``torch.compile``.

Numerics match :func:`gated_attention.model.lm_loss` on the logits the LM head would produce: the
logits are computed in the compute dtype (the autocast dtype when autocast is on, else the
inputs'), upcast to float32 for the softmax, and the loss is the mean over tokens whose target is
not ``ignore_index``. The optional z-loss (PaLM, Chowdhery et al. 2022, section 5) adds
``z_loss * mean(logsumexp(logits)^2)`` over the same tokens.
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = {"cpu": 1 << 21, "default": 1 << 26}
"""Logits per chunk (tokens x vocabulary) by device type when ``chunk_size`` is not given. CPU:
8 MB in float32, so a chunk's elementwise passes stay in the last-level cache (256 tokens at a
vocabulary of 8,192 measured fastest on 2 cores, ``benchmarks/run.py``); other devices: 256 MB,
so each chunk's matmul is large enough to run at full speed."""

MIN_CHUNK_TOKENS = 128
"""Fewest tokens per chunk: smaller chunks re-read the whole LM-head weight too often."""


def default_chunk_size(vocab_size: int, device: torch.device | str = "cpu") -> int:
    """Tokens per chunk for ``vocab_size`` on ``device`` (:data:`CHUNK_ELEMENTS`)."""
    kind = torch.device(device).type
    budget = CHUNK_ELEMENTS.get(kind, CHUNK_ELEMENTS["default"])
    return max(MIN_CHUNK_TOKENS, budget // max(1, vocab_size))


def compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype the LM-head matmul runs in: autocast's for ``hidden``'s device when autocast is
    enabled there (what ``nn.Linear`` would use), else ``hidden``'s own."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax and accumulation dtype for logits computed in ``dtype``: float32, or float64 for
    float64 inputs (the references)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_logits(
    h_c: torch.Tensor, w: torch.Tensor, low: torch.Tensor | None, buf: torch.Tensor
) -> torch.Tensor:
    """``h_c @ w.T`` for one chunk, written into the reused buffers (``low`` in the compute
    dtype when it differs from ``buf``'s accumulation dtype); returns the accumulation-dtype
    logits ``(n, vocab)``, a view of ``buf`` that the caller may overwrite. Reusing two buffers
    instead of allocating per chunk keeps the CPU's allocator and page faults out of the loop."""
    n = h_c.shape[0]
    if low is None:
        return torch.mm(h_c, w.T, out=buf[:n])
    torch.mm(h_c, w.T, out=low[:n])
    return buf[:n].copy_(low[:n])


class _LinearCrossEntropy(torch.autograd.Function):
    """``sum_i w_i * (lse_i - logit_i[t_i] + z * lse_i^2) / denom`` over tokens ``i``, with
    ``logits = hidden @ weight.T`` computed ``chunk`` tokens at a time (see the module doc)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        denom: torch.Tensor,
        ignore_index: int,
        chunk: int,
        z_loss: float,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        acc = accumulation_dtype(dtype)
        device = hidden.device
        with torch.autocast(device.type, enabled=False):
            h = hidden.to(dtype)
            w = weight.to(dtype)
            n = h.shape[0]
            rows = min(chunk, n)
            buf = torch.empty(rows, w.shape[0], dtype=acc, device=device)
            low = None if dtype == acc else torch.empty(buf.shape, dtype=dtype, device=device)
            lse = torch.empty(n, dtype=acc, device=device)
            total = torch.zeros((), dtype=acc, device=device)
            for s in range(0, n, chunk):
                logits = _chunk_logits(h[s : s + chunk], w, low, buf)
                tgt = targets[s : s + chunk]
                picked = logits.gather(1, tgt.clamp(min=0).unsqueeze(1)).squeeze(1)
                top = logits.amax(dim=-1, keepdim=True)
                lse_c = logits.sub_(top).exp_().sum(dim=-1).log_().add_(top.squeeze(1))
                per_token = lse_c - picked
                if z_loss:
                    per_token = per_token + z_loss * lse_c.square()
                total += torch.where(tgt != ignore_index, per_token, 0.0).sum()
                lse[s : s + chunk] = lse_c
        ctx.save_for_backward(h, weight, targets, lse, denom)
        ctx.hidden_dtype = hidden.dtype
        ctx.options = (ignore_index, chunk, z_loss, dtype)
        return total / denom

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        h, weight, targets, lse, denom = ctx.saved_tensors
        ignore_index, chunk, z_loss, dtype = ctx.options
        need_h, need_w = ctx.needs_input_grad[:2]
        acc = accumulation_dtype(dtype)
        device = h.device
        with torch.autocast(device.type, enabled=False):
            w = weight.to(dtype)
            scale = grad.to(acc) / denom
            rows = min(chunk, h.shape[0])
            buf = torch.empty(rows, w.shape[0], dtype=acc, device=device)
            low = None if dtype == acc else torch.empty(buf.shape, dtype=dtype, device=device)
            grad_h = torch.empty(h.shape, dtype=ctx.hidden_dtype, device=device) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=acc, device=device) if need_w else None
            part_w = None if low is None or not need_w else torch.empty_like(w)
            for s in range(0, h.shape[0], chunk):
                h_c = h[s : s + chunk]
                tgt = targets[s : s + chunk]
                lse_c = lse[s : s + chunk]
                logits = _chunk_logits(h_c, w, low, buf)
                # d loss_i / d logits_i = softmax_i (1 + 2 z lse_i) - onehot(t_i), times w_i
                coef = torch.where(tgt != ignore_index, scale, 0.0)
                row = coef * (1.0 + 2.0 * z_loss * lse_c) if z_loss else coef
                g = logits.sub_(lse_c.unsqueeze(1)).exp_().mul_(row.unsqueeze(1))
                g.scatter_add_(1, tgt.clamp(min=0).unsqueeze(1), -coef.unsqueeze(1))
                if low is not None:
                    g = low[: g.shape[0]].copy_(g)
                if grad_h is not None:
                    if grad_h.dtype == dtype:
                        torch.mm(g, w, out=grad_h[s : s + chunk])
                    else:
                        grad_h[s : s + chunk] = g @ w
                if grad_w is not None:
                    if part_w is None:
                        grad_w.addmm_(g.T, h_c)
                    else:
                        grad_w += torch.mm(g.T, h_c, out=part_w)
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    shift: bool = False,
    z_loss: float = 0.0,
    chunk_size: int | None = None,
    num_items: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross entropy of the LM head ``hidden @ weight.T`` against ``targets``, never holding
    more than ``chunk_size`` tokens' logits.

    Args:
        hidden: final hidden states ``(batch, seq, hidden)`` (or ``(tokens, hidden)``).
        weight: the LM head's weight ``(vocab, hidden)`` (no bias, as in Qwen3).
        targets: token ids ``(batch, seq)`` (or ``(tokens,)``): the target of each position, or
            with ``shift`` Hugging Face ``labels`` (position ``t`` predicts ``labels[t + 1]``;
            the last position predicts nothing), as :func:`gated_attention.model.lm_loss` and
            ``GatedLM(labels=...)`` read them.
        ignore_index: targets equal to it add nothing (and are not counted).
        shift: read ``targets`` as Hugging Face labels (see above).
        z_loss: coefficient of ``mean(logsumexp(logits)^2)`` (0 disables).
        chunk_size: tokens per chunk; default :func:`default_chunk_size` of the vocabulary.
        num_items: divide the summed loss by this instead of the number of counted tokens
            (``transformers``' ``num_items_in_batch`` for gradient accumulation).

    Returns:
        The scalar float32 loss (NaN when every target is ignored, as ``F.cross_entropy``).
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} must agree on "
            "every axis but the last"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be (vocab, {hidden.shape[-1]}), got {tuple(weight.shape)}")
    if shift:
        pad = torch.full_like(targets[..., :1], ignore_index)
        targets = torch.cat([targets[..., 1:], pad], dim=-1)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    chunk = int(chunk_size) if chunk_size else default_chunk_size(weight.shape[0], hidden.device)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if num_items is None:
        denom = (targets != ignore_index).sum()
    else:
        denom = torch.as_tensor(num_items, device=hidden.device)
    return _LinearCrossEntropy.apply(
        hidden, weight, targets, denom, ignore_index, chunk, float(z_loss), compute_dtype(hidden)
    )
