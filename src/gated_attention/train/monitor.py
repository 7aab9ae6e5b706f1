"""Training-time monitors with their own state, saved in checkpoints for exact resume."""

from __future__ import annotations

import json
import math
from collections import deque
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gated_attention.nn.hooks import HookPoint


class SpikeMonitor:
    """Flags loss spikes: a step whose loss exceeds mean + ``sigma`` std of the previous
    ``window`` steps (OLMo-core's stability monitor). SpikeScore = spikes / steps seen."""

    def __init__(self, window: int = 128, sigma: float = 6.0) -> None:
        self.window, self.sigma = window, sigma
        self.history: deque[float] = deque(maxlen=window)
        self.spikes = 0
        self.steps = 0

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

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "spikes": self.spikes, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = deque(state["history"], maxlen=self.window)
        self.spikes, self.steps = state["spikes"], state["steps"]


class GateMeter:
    """Running mean of gate scores seen by every ``hook_gate`` tap while attached.

    Cheap: one mean per layer per forward, detached. Used as a context manager so the hooks are
    always removed.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.handles: list[Any] = []
        self.total: torch.Tensor | float = 0.0
        self.count = 0

    def _hook(self, _module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        # Accumulate on the device: no host sync inside the forward (one at ``pop``).
        self.total = self.total + out.detach().float().mean()
        self.count += 1

    def __enter__(self) -> GateMeter:
        for name, module in self.model.named_modules():
            if isinstance(module, HookPoint) and name.endswith("hook_gate"):
                self.handles.append(module.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def pop(self) -> float | None:
        """Mean since the last call (``None`` if no gate ran)."""
        if not self.count:
            return None
        mean = float(self.total) / self.count
        self.total, self.count = 0.0, 0
        return mean


class MetricsLog:
    """Append-only JSONL log, one record per line, flushed each write. On resume, records
    after the resumed step are dropped so the log reads like one uninterrupted run."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None and path.exists():
            path.unlink()
        self._file = open(path, "a")  # noqa: SIM115 - closed by close(), lives across steps

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str | Path, kind: str | None = "train") -> list[dict[str, Any]]:
    """Records of a metrics log (``kind``: ``train``, ``eval`` or ``None`` for all)."""
    records = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]
