"""The training loop: one entry point from one CPU to many GPUs.

``train(run_config)`` builds data, model, optimizer, resumes from the newest valid checkpoint
when asked (or starts from another run's weights, ``init_from``), and runs optimizer steps. Each
step's global batch is a pure function of ``(seed, step)``, and checkpoints hold everything else
(weights, optimizer, RNG, callback state), so a resumed run repeats the uninterrupted run's losses
exactly on CPU. Monitors are :mod:`~gated_attention.train.callbacks`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gated_attention import __version__
from gated_attention.config import rope_only_difference
from gated_attention.model import GatedLM, count_parameters
from gated_attention.ops.attention import separated_document_ids
from gated_attention.train import callbacks as cbs
from gated_attention.train import checkpoint as ckpt
from gated_attention.train import distributed as dist_utils
from gated_attention.train.config import RunConfig, resolve_device
from gated_attention.train.datasets import RunData, build_data, check_passes
from gated_attention.train.optim import build_optimizer, lr_at

log = logging.getLogger("gated_attention.train")


class TrainingDiverged(RuntimeError):
    """The loss became non-finite."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run after it saved a checkpoint at a step boundary
    (``signum``: the signal; the CLI exits ``128 + signum``). A ``KeyboardInterrupt``, so study
    runners that record failed runs let it through."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class _StopSignals:
    """While active (in the main thread), the first SIGINT/SIGTERM only sets ``signum`` (the
    loop saves at the next step boundary and stops); a second SIGINT stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(
            "%s: saving a checkpoint after this step, then stopping", signal.Signals(signum).name
        )

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    final_train_loss: float | None
    final_val_loss: float | None
    diverged_at: int | None
    spikes: int
    spike_score: float
    wall_time: float
    tokens_per_second: float
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "out_dir": str(self.out_dir)}


_STATE_KEYS = ("step", "tokens_seen", "rng", "data_position", "last_val", "run_config", "version")


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state().tolist(),
        "numpy": np.random.get_state()[1].tolist(),
        "python": random.getstate()[1],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], np.array(state["numpy"], dtype=np.uint32), *np_state[2:]))
    py = random.getstate()
    random.setstate((py[0], tuple(state["python"]), py[2]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Owns one run: ``Trainer(cfg).fit()``.

    ``resume``: continue from the newest valid checkpoint in ``cfg.out_dir``. ``data``: sources
    instead of ``build_data(cfg.data)``. ``callbacks``: extra :class:`~.callbacks.TrainerCallback`
    s. ``init_from``: a saved model or run whose weights start a fresh run (e.g. at a longer length
    with a larger RoPE base; the model configs may differ only in
    :data:`~gated_attention.config.ROPE_FIELDS`); the optimizer starts fresh (not under FSDP).
    """

    def __init__(
        self,
        cfg: RunConfig,
        resume: bool = False,
        data: RunData | None = None,
        callbacks: list[cbs.TrainerCallback] | None = None,
        init_from: str | Path | None = None,
        allow_changed: tuple[str, ...] = (),
    ) -> None:
        self.cfg = cfg
        self.resume = resume
        self.allow_changed = tuple(allow_changed)
        self.init_from = init_from
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = resolve_device(cfg.train.device)
        self.dist = dist_utils.setup(cfg.distributed, self.device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        tc = cfg.train
        per_rank = tc.batch_size // tc.grad_accum
        if per_rank % self.dist.world_size:
            raise ValueError(
                f"train.batch_size / grad_accum = {per_rank} sequences per micro-step must be "
                f"divisible by the {self.dist.world_size} processes"
            )
        self.data = data if data is not None else build_data(cfg.data)
        self.data.info["passes"] = check_passes(self.data, cfg, announce=self.dist.is_main)
        self.model_cfg = cfg.model_config(self.data.vocab_size)
        if cfg.data.document_mask and self.data.eod_id is None:
            raise ValueError(
                "data.document_mask needs a corpus with end-of-document tokens; this data "
                "source has none: set data.document_mask = false."
            )
        seed_everything(cfg.seed)
        self.model = GatedLM(self.model_cfg).to(self.device)
        self.model.set_checkpointing(tc.activation_checkpointing)
        self.wrapped = dist_utils.wrap(self.model, self.dist, self.device)
        self.forward_model = (
            torch.compile(self.wrapped, backend=tc.compile_backend) if tc.compile else self.wrapped
        )
        self.optimizer = build_optimizer(self.model, tc)
        self.spikes = cbs.SpikeMonitor(tc.spike_window, tc.spike_sigma)
        self.metrics = cbs.MetricsLog() if self.dist.is_main else None
        self.callbacks = [self.spikes, cbs.GateMeter(), *(callbacks or [])]
        if self.metrics is not None:
            self.callbacks.append(self.metrics)
            self.callbacks += [cbs.ProgressBar()] if tc.progress else []
            self.callbacks += [cbs.TensorBoardLog()] if tc.tensorboard else []
        keys = [cb.state_key for cb in self.callbacks if cb.state_key]
        if len(set(keys)) < len(keys) or set(keys) & set(_STATE_KEYS):
            raise ValueError(f"callbacks need distinct state_keys outside {_STATE_KEYS}: {keys}")
        self.resumed = False
        self.step = self.tokens_seen = 0
        self.last_val: float | None = None

    # ------------------------------------------------------------------ state
    def _trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "rng": _rng_state(),
            **{cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_key},
            "data_position": {"next_step": self.step, "seed": self.cfg.seed},
            "last_val": self.last_val,
            "run_config": self.cfg.to_dict(),
            "version": __version__,
        }

    def _full_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
        """Full (unsharded) weights and optimizer state; collective under FSDP2."""
        if self.dist.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state = get_model_state_dict(self.model, options=opts)
            if self.model_cfg.tie_word_embeddings:
                state.pop("lm_head.weight", None)
            return {k: v.contiguous() for k, v in state.items()}, None
        return ckpt.model_state(self.model), self.optimizer.state_dict()

    def save(self) -> Path | None:
        weights, optim_state = self._full_state()
        extra = None
        if self.dist.strategy == "fsdp":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

            # Sharded optimizer state through torch.distributed.checkpoint: no rank gathers it.
            shard_dir = self.ckpt_root / f".dcp-step_{self.step:07d}"
            dcp.save(
                {"optim": get_optimizer_state_dict(self.model, self.optimizer)},
                checkpoint_id=str(shard_dir),
            )
            dist_utils.barrier(self.dist)

            def extra(tmp: Path) -> None:
                shutil.move(str(shard_dir), str(tmp / "dcp"))

        path = None
        if self.dist.is_main:
            path = ckpt.save_checkpoint(
                self.ckpt_root,
                self.step,
                self.model,
                weights,
                optim_state,
                self._trainer_state(),
                self.cfg.train.keep_last,
                extra,
            )
        dist_utils.barrier(self.dist)
        return path

    def load(self, path: Path) -> None:
        ckpt.verify_checkpoint(path)
        ckpt.check_compatible(path, self.model_cfg)
        from safetensors.torch import load_file

        weights = load_file(str(path / ckpt.MODEL_FILE))
        state = ckpt.read_trainer_state(path)
        if self.dist.strategy == "fsdp":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            if self.model_cfg.tie_word_embeddings:
                weights["lm_head.weight"] = weights["embed_tokens.weight"]
            set_model_state_dict(
                self.model, weights, options=StateDictOptions(full_state_dict=True)
            )
            optim = {"optim": get_optimizer_state_dict(self.model, self.optimizer)}
            dcp.load(optim, checkpoint_id=str(path / "dcp"))
            set_optimizer_state_dict(self.model, self.optimizer, optim["optim"])
        else:
            ckpt.load_weights(self.model, weights, str(path))
            self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.last_val = state.get("last_val")
        for cb in self.callbacks:
            if cb.state_key in state:
                cb.load_state_dict(state[cb.state_key])
        _set_rng_state(state["rng"])

    # ------------------------------------------------------------------ steps
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.train.dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _documents(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """``(B, T)`` document index of every token when ``data.document_mask`` is on (each
        document ends with the corpus's end-of-document token), else ``None``."""
        if not self.cfg.data.document_mask:
            return None
        return separated_document_ids(input_ids, self.data.eod_id)

    def _loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss plus the MoE losses; the LM head and loss run chunk by chunk
        (``ops.loss``), so the ``(tokens, vocab)`` logits never exist."""
        with self._autocast():
            out = self.forward_model(
                input_ids,
                targets=labels,
                z_loss=self.cfg.train.z_loss,
                document_ids=self._documents(input_ids),
            )
        return out.loss

    def train_step(self) -> tuple[float, float]:
        """One optimizer step over the global batch of ``self.step``; returns (loss, grad norm)."""
        tc = self.cfg.train
        lr = lr_at(self.step, tc)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = tc.batch_size // tc.grad_accum
        total = torch.zeros((), device=self.device)
        for m in range(tc.grad_accum):
            # micro-step m of step s reads "virtual step" s * grad_accum + m of the source
            ids, labels = self.data.train.batch(
                self.step * tc.grad_accum + m,
                micro,
                self.cfg.seed,
                self.dist.rank,
                self.dist.world_size,
            )
            ids, labels = ids.to(self.device), labels.to(self.device)
            sync = (
                self.wrapped.no_sync()
                if self.dist.strategy == "ddp" and m < tc.grad_accum - 1
                else contextlib.nullcontext()
            )
            with sync:
                loss = self._loss(ids, labels) / tc.grad_accum
                loss.backward()
            total += loss.detach()
            self.tokens_seen += ids.numel() * self.dist.world_size
        clip = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = float(dist_utils.all_reduce_mean(total, self.dist))
        norm_value = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        return loss_value, norm_value

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over the configured number of batches (token-weighted)."""
        tc = self.cfg.train
        bs = tc.eval_batch_size or tc.batch_size
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        for i, (ids, labels) in enumerate(self.data.val.iter_eval_batches(bs, tc.eval_batches)):
            if i % self.dist.world_size != self.dist.rank and self.dist.strategy != "fsdp":
                continue  # DDP / single: split batches over ranks
            ids, labels = ids.to(self.device), labels.to(self.device)
            with self._autocast():
                out = self.forward_model(
                    ids, targets=labels, return_logits=False, document_ids=self._documents(ids)
                )
            if self.dist.strategy == "fsdp" and i % self.dist.world_size != self.dist.rank:
                continue  # FSDP: every rank joins every forward; each counts its own share
            loss = out.loss if out.aux_loss is None else out.loss - out.aux_loss
            total[0] += loss.double() * labels.numel()
            total[1] += labels.numel()
        if self.dist.world_size > 1:
            torch.distributed.all_reduce(total)
        self.model.train()
        return float(total[0] / total[1]) if total[1] > 0 else float("nan")

    # ------------------------------------------------------------------ loop
    def _restore(self) -> None:
        """Resume from the newest valid checkpoint, or start from ``init_from`` (or scratch)."""
        main = self.dist.is_main
        if main:
            ckpt.remove_stale_tmp(self.ckpt_root)
        path = ckpt.latest_checkpoint(self.ckpt_root) if self.resume else None
        if self.resume and path is None and ckpt.list_checkpoints(self.ckpt_root):
            raise ckpt.CheckpointError(
                f"--resume: no checkpoint in {self.ckpt_root} is valid (see the warnings above); "
                "nothing was deleted: move the checkpoints directory away to start the run afresh"
            )
        if path is not None:
            stored = ckpt.read_trainer_state(path).get("run_config")
            if stored is not None:
                ckpt.check_resume_config(path, stored, self.cfg.to_dict(), self.allow_changed)
            self.load(path)
            self.resumed = True
            if main:
                log.info("resumed from %s (step %d)", path, self.step)
            return
        if self.resume and main:
            log.info("no checkpoint to resume from in %s; starting fresh", self.ckpt_root)
        elif main and self.ckpt_root.exists() and ckpt.list_checkpoints(self.ckpt_root):
            raise ValueError(
                f"{self.out_dir} already holds checkpoints; pass --resume to continue that run "
                "or choose another out_dir"
            )
        if self.init_from is not None:
            source = ckpt.load_model(self.init_from)
            rope_only_difference(source.cfg, self.model_cfg)
            ckpt.load_weights(self.model, ckpt.model_state(source), str(self.init_from))

    def at_interval(self, every: int) -> bool:
        """Whether the step just taken is a multiple of ``every`` (0: never) or the last one."""
        return (bool(every) and self.step % every == 0) or self.step == self.cfg.train.steps

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _diverged(self, loss: float) -> None:
        """Log the non-finite loss, then raise or warn (``train.stop_on_nonfinite``)."""
        last = ckpt.latest_checkpoint(self.ckpt_root) if self.dist.is_main else None
        msg = f"loss became non-finite ({loss}) at step {self.step}; last good checkpoint: "
        msg += str(last or "none")
        if self.metrics is not None:
            self.metrics.write({"kind": "train", "step": self.step, "loss": loss, "diverged": True})
        if self.cfg.train.stop_on_nonfinite:
            raise TrainingDiverged(msg)
        log.warning(msg)

    def fit(self) -> TrainResult:
        tc = self.cfg.train
        self._restore()
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._write_run_files()
        self.model.train()
        start, start_tokens = time.perf_counter(), self.tokens_seen
        loss = diverged_at = None
        stop = _StopSignals()
        try:
            self._emit("on_train_start")
            stop.__enter__()
            while self.step < tc.steps:
                t0 = time.perf_counter()
                loss, gnorm = self.train_step()
                dt = time.perf_counter() - t0
                if not math.isfinite(loss):
                    diverged_at = self.step
                    self._diverged(loss)
                    break
                self.step += 1
                record = {
                    "kind": "train",
                    "step": self.step,
                    "loss": loss,
                    "lr": lr_at(self.step - 1, tc),
                    "grad_norm": gnorm,
                    "tokens_per_s": tc.batch_size * self.cfg.data.seq_len / dt if dt > 0 else None,
                }
                self._emit("on_step_end", record)
                if self.at_interval(tc.eval_every):
                    self.last_val = self.evaluate()
                    self._emit("on_eval", self.last_val)
                saved = self.at_interval(tc.ckpt_every)
                if saved:
                    self._emit("on_checkpoint", self.save())
                if self._stop_requested(stop) and self.step < tc.steps:
                    path = self.save() if not saved else ckpt.latest_checkpoint(self.ckpt_root)
                    name = signal.Signals(stop.signum).name
                    raise TrainingInterrupted(
                        f"{name} at step {self.step}: saved checkpoint {path}; continue with "
                        "--resume",
                        stop.signum,
                    )
        finally:
            stop.__exit__()
            self._emit("on_train_end")
        wall = time.perf_counter() - start
        if self.dist.is_main and diverged_at is None:
            self._export_final()
        params = {} if self.dist.strategy == "fsdp" else count_parameters(self.model).to_dict()
        result = TrainResult(
            out_dir=self.out_dir,
            steps=self.step,
            final_train_loss=loss,
            final_val_loss=self.last_val,
            diverged_at=diverged_at,
            spikes=self.spikes.spikes,
            spike_score=self.spikes.spike_score,
            wall_time=wall,
            tokens_per_second=(self.tokens_seen - start_tokens) / wall if wall > 0 else 0.0,
            parameters=params,
        )
        if self.dist.is_main:
            (self.out_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=1))
        return result

    def _stop_requested(self, stop: _StopSignals) -> bool:
        """Whether any rank received SIGINT/SIGTERM (all ranks then save and stop together)."""
        if self.dist.world_size == 1:
            return stop.signum is not None
        flag = torch.tensor([float(stop.signum or 0)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        stop.signum = int(flag.item()) or None
        return stop.signum is not None

    def _export_final(self) -> None:
        """Copy the last checkpoint's weights and config to ``final/`` for analysis."""
        last = ckpt.latest_checkpoint(self.ckpt_root)
        if last is None:
            return
        dst = self.out_dir / "final"
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir()
        for name in (ckpt.MODEL_FILE, ckpt.CONFIG_FILE):
            shutil.copy2(last / name, dst / name)

    def _write_run_files(self) -> None:
        (self.out_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=1))
        (self.out_dir / "model_config.json").write_text(self.model_cfg.to_json())
        (self.out_dir / "data.json").write_text(json.dumps(self.data.info, indent=1, default=str))
        if self.data.tokenizer_path is not None:
            tok = self.data.tokenizer_path
            src = tok if tok.is_file() else tok / "tokenizer.json"
            if src.exists():
                shutil.copy2(src, self.out_dir / "tokenizer.json")


def train(
    cfg: RunConfig,
    resume: bool = False,
    data: RunData | None = None,
    callbacks: list[cbs.TrainerCallback] | None = None,
    init_from: str | Path | None = None,
    allow_changed: tuple[str, ...] = (),
) -> TrainResult:
    """Train one run described by ``cfg`` (arguments as :class:`Trainer`) holding the run lock
    of ``cfg.out_dir`` (:class:`~gated_attention.train.lock.RunLock`, rank 0); tears down the
    process group afterwards."""
    from gated_attention.train.lock import RunLock

    main = int(os.environ.get("RANK", "0")) == 0
    try:
        with RunLock(cfg.out_dir, "out_dir") if main else contextlib.nullcontext():
            return Trainer(cfg, resume, data, callbacks, init_from, allow_changed).fit()
    finally:
        dist_utils.teardown()
