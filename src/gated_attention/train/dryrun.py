"""``train --dry-run``: every code path of a run config, on the CPU, in seconds.

A GPU run that dies after an hour of setup on a rented machine is expensive. The dry run keeps
everything a config decides — gate variant, dense or MoE, QK-norm and norm types, dtype policy
(bf16 autocast), ``torch.compile``, activation checkpointing, z-loss, gradient accumulation, the
distributed strategy (DDP or FSDP2 wrapping, on a one-process gloo group when not launched by
``torchrun``), the data source and its tokenizer, evaluation, checkpoint save and exact resume —
and shrinks only what sets the cost: the model's width and depth (:func:`shrink_model`), the
sequence length, the batch and the number of steps. It trains :data:`DRY_STEPS` steps on the
CPU, saving a checkpoint halfway and resuming from it, and returns what ran. ``torch.compile``
runs with the ``aot_eager`` backend unless asked otherwise (:func:`dry_run_config`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gated_attention.train.config import RunConfig

DRY_STEPS = 4
"""Optimizer steps of a dry run: a checkpoint and an evaluation after half of them, a resume
from that checkpoint, the rest."""

DRY_SEQ_LEN = 64
DRY_MICRO_BATCH = 2
DRY_MODEL = {"hidden_size": 64, "head_dim": 16, "intermediate_size": 128, "num_hidden_layers": 2}
"""Model sizes of a dry run (fields a config sets larger are shrunk to these)."""


def shrink_model(spec: dict[str, Any], data_vocab: bool) -> dict[str, Any]:
    """The ``[model]`` section ``spec`` at dry-run size: :data:`DRY_MODEL` widths, at most two
    layers, at most 2 KV heads with the config's query-per-KV-head ratio (at most 2), at most 4
    experts of top-k at most 2. Every other field (gate, norms, RoPE, biases, ties) is kept.
    ``data_vocab``: the vocabulary comes from the data (the spec does not set it)."""
    from gated_attention.train.config import RunConfig

    cfg = RunConfig(model=spec).model_config(None).to_dict()
    out = dict(cfg)
    for key, small in DRY_MODEL.items():
        out[key] = min(cfg[key], small)
    group = cfg["num_attention_heads"] // cfg["num_key_value_heads"]
    out["num_key_value_heads"] = min(cfg["num_key_value_heads"], 2)
    out["num_attention_heads"] = out["num_key_value_heads"] * min(group, 2)
    if cfg.get("moe"):
        moe = dict(cfg["moe"])
        moe["num_experts"] = min(moe["num_experts"], 4)
        moe["top_k"] = min(moe["top_k"], 2, moe["num_experts"])
        moe["expert_intermediate_size"] = min(moe["expert_intermediate_size"], 32)
        if moe.get("shared_expert_intermediate_size"):
            moe["shared_expert_intermediate_size"] = min(moe["shared_expert_intermediate_size"], 32)
        out["moe"] = moe
    if data_vocab:
        out.pop("vocab_size")
    return out


def dry_run_config(
    cfg: RunConfig, out_dir: str | Path, compile_backend: str = "aot_eager"
) -> RunConfig:
    """``cfg`` shrunk for a CPU dry run writing to ``out_dir`` (see the module doc). A compiled
    config compiles with ``compile_backend``: ``aot_eager`` by default, which captures the
    same graphs as inductor (dynamo, AOT autograd, activation checkpointing's recompute
    partition) without generating CPU kernels, which a GPU run would not use anyway (seconds
    instead of minutes); ``inductor`` also generates and runs the CPU kernels."""
    data = copy.deepcopy(cfg.to_dict())
    data["out_dir"] = str(out_dir)
    data["model"] = shrink_model(cfg.model, data_vocab="vocab_size" not in cfg.model)
    data["data"]["seq_len"] = min(cfg.data.seq_len, DRY_SEQ_LEN)
    accum = min(cfg.train.grad_accum, 2)
    data["train"].update(
        steps=DRY_STEPS,
        batch_size=DRY_MICRO_BATCH * accum,
        grad_accum=accum,
        warmup_steps=1,
        eval_every=DRY_STEPS // 2,
        eval_batches=1,
        eval_batch_size=DRY_MICRO_BATCH,
        ckpt_every=DRY_STEPS // 2,
        keep_last=2,
        device="cpu",
        progress=False,
    )
    if cfg.train.compile:
        data["train"]["compile_backend"] = compile_backend
    if data["distributed"]["backend"] == "nccl":
        data["distributed"]["backend"] = "gloo"
    return RunConfig.from_dict(data)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _process_group_env(strategy: str) -> Iterator[None]:
    """A one-process ``torchrun`` environment for DDP / FSDP2 when not launched by torchrun."""
    if strategy == "none" or "RANK" in os.environ:
        yield
        return
    env = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def dry_run(
    cfg: RunConfig, out_dir: str | Path | None = None, compile_backend: str = "aot_eager"
) -> dict[str, Any]:
    """Train ``cfg`` shrunk (:func:`dry_run_config`) on the CPU: half the steps, a checkpoint,
    a resume from it, the rest. Raises whatever the run raises; returns a summary (run
    directory, model size, losses, what ran, seconds)."""
    from gated_attention.train import read_metrics, train

    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if out_dir is None:
            out_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="dry-run-"))
        small = dry_run_config(cfg, out_dir, compile_backend)
        half = copy.deepcopy(small)
        half.train.steps = DRY_STEPS // 2
        with _process_group_env(small.distributed.strategy):
            train(half)
        with _process_group_env(small.distributed.strategy):
            # the second half extends the first on purpose: train.steps is the one change
            result = train(small, resume=True, allow_changed=("train.steps",))
        losses = [r["loss"] for r in read_metrics(Path(out_dir) / "metrics.jsonl")]
        evals = read_metrics(Path(out_dir) / "metrics.jsonl", "eval")
        tc = small.train
        return {
            "out_dir": str(out_dir),
            "steps": result.steps,
            "losses": losses,
            "val_loss": evals[-1]["val_loss"] if evals else None,
            "parameters": result.parameters.get("total"),
            "model": small.model,
            "paths": {
                "dtype": tc.dtype,
                "compile": tc.compile_backend if tc.compile else False,
                "activation_checkpointing": tc.activation_checkpointing,
                "grad_accum": tc.grad_accum,
                "z_loss": tc.z_loss,
                "distributed": small.distributed.strategy,
                "data": small.data.kind,
                "loss": "chunked LM head + cross entropy (ops.loss)",
                "checkpoint": "saved, resumed",
            },
            "seconds": round(time.perf_counter() - start, 1),
        }
