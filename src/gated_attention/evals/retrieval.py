"""Exact-match scoring of the synthetic retrieval tasks of :mod:`gated_attention.data.retrieval`.

Exact match of all answer tokens under greedy decoding. One teacher-forced forward gives
it: greedy decoding reproduces the answer iff the argmax at every answer position equals the
answer token given the correct preceding answer tokens (for recall, later queries see the true
answers of earlier ones, the usual multi-query protocol).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from gated_attention.data.retrieval import RetrievalBatch, RetrievalTask, make_batch

DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@torch.no_grad()
def score_batch(
    model: Any, batch: RetrievalBatch, batch_size: int = 16, per_token: bool = False
) -> torch.Tensor:
    """Exact-match flags ``(n, answers_per_example)`` bool of greedy answers.

    With ``per_token=True`` returns instead the share of each answer's tokens predicted
    correctly, ``(n, answers_per_example)`` float (a graded signal for models that get some
    digits right; 1.0 exactly when the answer matches). ``model(input_ids)`` must return an
    object with ``.logits`` ``(B, T, V)`` (a :class:`~gated_attention.GatedLM` or any causal LM
    with that interface).
    """
    tokens = batch.tokens
    device = _device_of(model)
    # Answers sit at the end: only the logits of the last ``keep`` inputs are needed (a
    # GatedLM computes just those with ``logits_to_keep``; other models return all of them).
    first = min(s for spans in batch.spans for s, _ in spans)
    keep = tokens.shape[1] - first
    kwargs = {"logits_to_keep": keep} if _accepts(model, "logits_to_keep") else {}
    flags = []
    for b in range(0, tokens.shape[0], batch_size):
        chunk = tokens[b : b + batch_size]
        logits = model(chunk[:, :-1].to(device), **kwargs).logits
        pred = logits[:, -keep:].argmax(-1).cpu()
        offset = first - 1  # pred[:, j] predicts token first + j
        for r in range(chunk.shape[0]):
            row = []
            for s, e in batch.spans[b + r]:
                hits = pred[r, s - 1 - offset : e - 1 - offset] == chunk[r, s:e]
                row.append(float(hits.float().mean()))
            flags.append(row)
    shares = torch.tensor(flags, dtype=torch.float32)
    return shares if per_token else shares == 1.0


def _accepts(model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def _device_of(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


@torch.no_grad()
def evaluate_retrieval(
    model: Any,
    task: RetrievalTask,
    filler: torch.Tensor,
    lengths: Sequence[int],
    depths: Sequence[float] = DEFAULT_DEPTHS,
    num_examples: int = 16,
    seed: int = 0,
    bos_id: int | None = None,
    tokens_per_batch: int = 4096,
) -> dict[str, Any]:
    """Exact-match accuracy at every (length, depth).

    Returns ``{"task", "accuracy": {length: {"mean": acc, "depths": {depth: acc},
    "token_accuracy": t}}}`` where ``acc`` is the share of answers (passkeys, or recall queries)
    reproduced exactly and ``t`` the share of answer tokens right (chance: 1/10 per digit).
    """
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    out: dict[str, Any] = {"task": task.name, "num_examples": num_examples, "accuracy": {}}
    try:
        for length in lengths:
            per_depth, per_token = {}, []
            for depth in depths:
                batch = make_batch(
                    task, filler, int(length), float(depth), num_examples, seed, bos_id
                )
                shares = score_batch(
                    model, batch, max(1, tokens_per_batch // int(length)), per_token=True
                )
                per_depth[float(depth)] = float((shares == 1.0).float().mean())
                per_token.append(float(shares.mean()))
            out["accuracy"][int(length)] = {
                "mean": sum(per_depth.values()) / len(per_depth),
                "depths": per_depth,
                "token_accuracy": sum(per_token) / len(per_token),
            }
    finally:
        if hasattr(model, "train"):
            model.train(was_training)
    return out
