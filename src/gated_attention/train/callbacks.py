"""Trainer callbacks and the built-in monitors written as callbacks.

The trainer calls, in order: the spike monitor, the gate meter, the callbacks passed to
``train(cfg, callbacks=[...])``, then on rank 0 the metrics log (so it writes every key the
callbacks before it added to a step's record), the progress bar and TensorBoard.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gated_attention.nn.hooks import HookPoint, in_recompute

if TYPE_CHECKING:
    from gated_attention.train.trainer import Trainer

log = logging.getLogger("gated_attention.train")


class TrainerCallback:
    """Hooks into a run, called on every rank; each does nothing unless overridden.

    ``on_train_start``: after resuming, before the first step. ``on_step_end``: after each
    optimizer step (``trainer.step`` counts it) with the step's ``metrics.jsonl`` record, to which
    it may add keys. ``on_eval``: after each validation. ``on_checkpoint``: after each save
    (``path`` is ``None`` off rank 0). ``on_train_end``: at the end, also after an error. With a
    ``state_key``, ``state_dict()`` is saved under it in each checkpoint and restored on resume.
    """

    state_key: str | None = None

    def on_train_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None: ...
    def on_eval(self, trainer: Trainer, val_loss: float) -> None: ...
    def on_checkpoint(self, trainer: Trainer, path: Path | None) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}


class SpikeMonitor(TrainerCallback):
    """Flags loss spikes: a step whose loss exceeds mean + ``sigma`` std of the previous
    ``window`` steps (OLMo-core's stability monitor). SpikeScore = spikes / steps seen."""

    state_key = "spikes"

    def __init__(self, window: int = 128, sigma: float = 6.0) -> None:
        self.window, self.sigma = window, sigma
        self.history: deque[float] = deque(maxlen=window)
        self.spikes = self.steps = 0

    def update(self, loss: float) -> bool:
        spike = False
        if len(self.history) == self.window:
            mean = sum(self.history) / self.window
            var = sum((x - mean) ** 2 for x in self.history) / self.window
            spike = loss > mean + self.sigma * math.sqrt(var)
        self.spikes += int(spike)
        self.steps += 1
        self.history.append(loss)
        return spike

    @property
    def spike_score(self) -> float:
        return self.spikes / self.steps if self.steps else 0.0

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        record["spike"] = self.update(record["loss"])
        record["spikes"], record["spike_score"] = self.spikes, self.spike_score

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "spikes": self.spikes, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = deque(state["history"], maxlen=self.window)
        self.spikes, self.steps = state["spikes"], state["steps"]


class GateMeter(TrainerCallback):
    """Adds ``gate_mean``: the mean gate score of every ``hook_gate`` tap since the previous step
    (its training forwards and any validation forwards in between). Cheap: one detached mean per
    layer per forward, accumulated on the device (one host sync per step)."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.total: torch.Tensor | float = 0.0
        self.count = 0

    def _hook(self, _module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        if in_recompute():  # activation checkpointing replays the forward in backward
            return
        self.total = self.total + out.detach().float().mean()
        self.count += 1

    def on_train_start(self, trainer: Trainer) -> None:
        for name, module in trainer.model.named_modules():
            if isinstance(module, HookPoint) and name.endswith("hook_gate"):
                self.handles.append(module.register_forward_hook(self._hook))

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if self.count:
            record["gate_mean"] = float(self.total) / self.count
            self.total, self.count = 0.0, 0

    def on_train_end(self, trainer: Trainer) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


class MetricsLog(TrainerCallback):
    """``out_dir/metrics.jsonl``: the step records every ``train.log_every`` steps and at the last
    one, and every evaluation; one JSON record per line, flushed each write. On resume, records
    after the resumed step are dropped so the log reads like one uninterrupted run."""

    _file: Any = None

    def on_train_start(self, trainer: Trainer) -> None:
        path = trainer.out_dir / "metrics.jsonl"
        if trainer.resumed and path.exists():
            kept = [r for r in _records(path) if r.get("step", 0) <= trainer.step]
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(path, "a" if trainer.resumed else "w")  # noqa: SIM115 - see on_train_end

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if trainer.at_interval(trainer.cfg.train.log_every):
            self.write(record)

    def on_eval(self, trainer: Trainer, val_loss: float) -> None:
        ppl = math.exp(min(val_loss, 50))
        self.write({"kind": "eval", "step": trainer.step, "val_loss": val_loss, "val_ppl": ppl})

    def on_train_end(self, trainer: Trainer) -> None:
        if self._file is not None:
            self._file.close()


def read_metrics(path: str | Path, kind: str | None = "train") -> list[dict[str, Any]]:
    """Records of a metrics log (``kind``: ``train``, ``eval`` or ``None`` for all)."""
    return [r for r in _records(Path(path)) if kind is None or r.get("kind") == kind]


def _records(path: Path) -> list[dict[str, Any]]:
    """The records of ``path``; a truncated last line (a writer killed mid-line) is dropped with
    a warning naming the file, an unreadable line elsewhere is an error naming file and line."""
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                log.warning("%s: dropping its truncated last line %d", path, i + 1)
                continue
            raise ValueError(
                f"{path}, line {i + 1} is not valid JSON; remove the line or the file"
            ) from None
    return records


class ProgressBar(TrainerCallback):
    """A tqdm bar over the run's steps with the loss and throughput."""

    bar: Any = None

    def on_train_start(self, trainer: Trainer) -> None:
        from tqdm.auto import tqdm

        total = trainer.cfg.train.steps
        self.bar = tqdm(total=total, initial=trainer.step, unit="step", dynamic_ncols=True)

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")

    def on_train_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()


class TensorBoardLog(TrainerCallback):
    """The logged ``loss``, ``lr``, ``grad_norm`` and ``val_loss`` in ``out_dir/tensorboard``."""

    writer: Any = None

    def on_train_start(self, trainer: Trainer) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ValueError(
                "train.tensorboard = true needs the tensorboard package (pip install tensorboard)"
            ) from err
        self.writer = SummaryWriter(str(trainer.out_dir / "tensorboard"))

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if trainer.at_interval(trainer.cfg.train.log_every):
            for k in ("loss", "lr", "grad_norm"):
                self.writer.add_scalar(f"train/{k}", record[k], trainer.step)

    def on_eval(self, trainer: Trainer, val_loss: float) -> None:
        self.writer.add_scalar("val/loss", val_loss, trainer.step)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
