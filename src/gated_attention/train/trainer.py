"""The training loop: one entry point from one CPU to many GPUs.

``train(run_config)`` builds data, model, optimizer, resumes from the newest valid checkpoint
when asked, and runs optimizer steps. Each step's global batch is a pure function of
``(seed, step)``, and checkpoints hold everything else (weights, optimizer, RNG, monitors), so
a resumed run repeats the uninterrupted run's losses exactly on CPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gated_attention import __version__
from gated_attention.model import GatedLM, count_parameters, lm_loss
from gated_attention.train import checkpoint as ckpt
from gated_attention.train import distributed as dist_utils
from gated_attention.train.config import RunConfig
from gated_attention.train.datasets import RunData, build_data
from gated_attention.train.monitor import GateMeter, MetricsLog, SpikeMonitor
from gated_attention.train.optim import build_optimizer, lr_at

log = logging.getLogger("gated_attention.train")


class TrainingDiverged(RuntimeError):
    """The loss became non-finite."""


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
        d = dict(self.__dict__)
        d["out_dir"] = str(self.out_dir)
        return d


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    """Owns one run: ``Trainer(cfg).fit()``."""

    def __init__(self, cfg: RunConfig, resume: bool = False, data: RunData | None = None) -> None:
        self.cfg = cfg
        self.resume = resume
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
        self.model_cfg = cfg.model_config(self.data.vocab_size)
        seed_everything(cfg.seed)
        self.model = GatedLM(self.model_cfg).to(self.device)
        self.wrapped = dist_utils.wrap(self.model, self.dist, self.device)
        self.forward_model = torch.compile(self.wrapped) if tc.compile else self.wrapped
        self.optimizer = build_optimizer(self.model, tc)
        self.spikes = SpikeMonitor(tc.spike_window, tc.spike_sigma)
        self.step = 0
        self.tokens_seen = 0
        self.last_val: float | None = None

    # ------------------------------------------------------------------ state
    def _trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "rng": _rng_state(),
            "spikes": self.spikes.state_dict(),
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
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.last_val = state.get("last_val")
        self.spikes.load_state_dict(state["spikes"])
        _set_rng_state(state["rng"])

    # ------------------------------------------------------------------ steps
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.train.dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            out = self.forward_model(input_ids)
            loss = lm_loss(out.logits, labels)
            if out.aux_loss is not None:
                loss = loss + out.aux_loss
        return loss

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
        if tc.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        else:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float("inf"))
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
                out = self.forward_model(ids)
            if self.dist.strategy == "fsdp" and i % self.dist.world_size != self.dist.rank:
                continue  # FSDP: every rank joins every forward; each counts its own share
            total[0] += lm_loss(out.logits, labels).double() * labels.numel()
            total[1] += labels.numel()
        if self.dist.world_size > 1:
            torch.distributed.all_reduce(total)
        self.model.train()
        return float(total[0] / total[1]) if total[1] > 0 else float("nan")

    # ------------------------------------------------------------------ loop
    def fit(self) -> TrainResult:
        tc = self.cfg.train
        main = self.dist.is_main
        resumed_from = None
        if self.resume:
            resumed_from = ckpt.latest_checkpoint(self.ckpt_root)
            if resumed_from is not None:
                self.load(resumed_from)
                if main:
                    log.info("resumed from %s (step %d)", resumed_from, self.step)
            elif main:
                log.info("no checkpoint to resume from in %s; starting fresh", self.ckpt_root)
        elif main and self.ckpt_root.exists() and ckpt.list_checkpoints(self.ckpt_root):
            raise ValueError(
                f"{self.out_dir} already holds checkpoints; pass --resume to continue that run "
                "or choose another out_dir"
            )
        metrics = None
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._write_run_files()
            metrics = MetricsLog(
                self.out_dir / "metrics.jsonl", self.step if resumed_from else None
            )
        writer = self._tensorboard() if main and tc.tensorboard else None
        progress = None
        if main and tc.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=tc.steps, initial=self.step, unit="step", dynamic_ncols=True)
        self.model.train()
        start = time.perf_counter()
        start_tokens = self.tokens_seen
        loss = None
        diverged_at = None
        try:
            with GateMeter(self.model) as gates:
                while self.step < tc.steps:
                    t0 = time.perf_counter()
                    loss, gnorm = self.train_step()
                    dt = time.perf_counter() - t0
                    gate_mean = gates.pop()
                    if not math.isfinite(loss):
                        diverged_at = self.step
                        last = ckpt.latest_checkpoint(self.ckpt_root) if main else None
                        msg = (
                            f"loss became non-finite ({loss}) at step {self.step}; last good "
                            f"checkpoint: {last if last else 'none'}"
                        )
                        if metrics:
                            metrics.write(
                                {"kind": "train", "step": self.step, "loss": loss, "diverged": True}
                            )
                        if tc.stop_on_nonfinite:
                            raise TrainingDiverged(msg)
                        log.warning(msg)
                        break
                    spike = self.spikes.update(loss)
                    self.step += 1
                    tokens = tc.batch_size * self.cfg.data.seq_len
                    record = {
                        "kind": "train",
                        "step": self.step,
                        "loss": loss,
                        "lr": lr_at(self.step - 1, tc),
                        "grad_norm": gnorm,
                        "tokens_per_s": tokens / dt if dt > 0 else None,
                        "spike": spike,
                        "spikes": self.spikes.spikes,
                        "spike_score": self.spikes.spike_score,
                    }
                    if gate_mean is not None:
                        record["gate_mean"] = gate_mean
                    if metrics and (self.step % tc.log_every == 0 or self.step == tc.steps):
                        metrics.write(record)
                        if writer:
                            for k in ("loss", "lr", "grad_norm"):
                                writer.add_scalar(f"train/{k}", record[k], self.step)
                    if progress:
                        progress.update(1)
                        progress.set_postfix(
                            loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}"
                        )
                    do_eval = tc.eval_every and (self.step % tc.eval_every == 0)
                    if do_eval or self.step == tc.steps:
                        self.last_val = self.evaluate()
                        if metrics:
                            metrics.write(
                                {
                                    "kind": "eval",
                                    "step": self.step,
                                    "val_loss": self.last_val,
                                    "val_ppl": math.exp(min(self.last_val, 50)),
                                }
                            )
                            if writer:
                                writer.add_scalar("val/loss", self.last_val, self.step)
                    if (tc.ckpt_every and self.step % tc.ckpt_every == 0) or self.step == tc.steps:
                        self.save()
        finally:
            if progress:
                progress.close()
            if metrics:
                metrics.close()
            if writer:
                writer.close()
        wall = time.perf_counter() - start
        if main and diverged_at is None:
            self._export_final()
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
            parameters=count_parameters(self.model).to_dict()
            if self.dist.strategy != "fsdp"
            else {},
        )
        if main:
            (self.out_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=1))
        return result

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
        info = dict(self.data.info)
        (self.out_dir / "data.json").write_text(json.dumps(info, indent=1, default=str))
        if self.data.tokenizer_path is not None:
            tok = self.data.tokenizer_path
            src = tok if tok.is_file() else tok / "tokenizer.json"
            if src.exists():
                shutil.copy2(src, self.out_dir / "tokenizer.json")

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ValueError(
                "train.tensorboard = true needs the tensorboard package (pip install tensorboard)"
            ) from err
        return SummaryWriter(str(self.out_dir / "tensorboard"))


def train(cfg: RunConfig, resume: bool = False, data: RunData | None = None) -> TrainResult:
    """Train one run described by ``cfg``; tears down the process group afterwards."""
    try:
        return Trainer(cfg, resume=resume, data=data).fit()
    finally:
        dist_utils.teardown()
