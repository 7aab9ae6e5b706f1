"""Studies as data: a TOML file names arms, tasks, scales and seeds; the runner trains every
(task, arm, seed), analyses it, stores each result as it completes and hands the collection to
the study's report writer.

```toml
name = "sinks"
title = "..."
report = "sinks"                 # report writer (gated_attention.experiments.reports)

[[arms]]                         # a gate variant plus any overrides
name = "baseline"
gate = "none"
model = { qk_norm = "rms" }      # optional ModelConfig overrides
train = { lr = 1e-3 }            # optional TrainConfig overrides

[tasks.lm]                       # a run config (model / data / train sections)
model = { preset = "small" }
data = { kind = "corpus", seq_len = 128, bos = true }
train = { steps = 300 }

[scales.quick]
seeds = [0]
analysis = { batches = 2, batch_size = 8 }
[scales.quick.tasks.lm.train]    # deep-merged over the task
steps = 400
```

Finished runs are skipped on ``--resume`` (their ``analysis.json`` is reused); a failing arm is
recorded with its error and the study goes on.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger("gated_attention.experiments")

STUDY_KEYS = ("name", "title", "description", "report", "arms", "tasks", "scales", "metrics")
ARM_KEYS = ("name", "gate", "model", "data", "train", "label", "paper_row", "match")
SCALE_KEYS = ("seeds", "tasks", "analysis", "arms", "description")


def _check_keys(data: dict[str, Any], valid: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown key {key!r} in {where}.{hint} Valid: {', '.join(valid)}.")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``over`` merged in (nested dicts merged, other values replaced)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class Arm:
    name: str
    gate: str = "none"
    overrides: dict[str, Any] = field(default_factory=dict)
    """Run-config sections (``model``, ``data``, ``train``) merged over the task."""
    label: str | None = None
    paper_row: str | None = None
    """Key into the paper's tables for the numbers printed beside this arm."""
    match: str | None = None
    """Parameter-matched baseline: the arm whose parameter count this arm matches."""


@dataclass
class Study:
    name: str
    title: str
    report: str
    arms: list[Arm]
    tasks: dict[str, dict[str, Any]]
    scales: dict[str, dict[str, Any]]
    description: str = ""
    metrics: list[str] = field(default_factory=list)
    source: Path | None = None

    def scale(self, name: str) -> dict[str, Any]:
        if name not in self.scales:
            raise ValueError(
                f"study {self.name!r} has no scale {name!r}; available: {', '.join(self.scales)}"
            )
        return self.scales[name]

    def arms_for(self, scale: str) -> list[Arm]:
        """Arms of a scale (a scale may list a subset by name)."""
        names = self.scale(scale).get("arms")
        if not names:
            return self.arms
        by_name = {a.name: a for a in self.arms}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"scale {scale!r} names unknown arms {missing}")
        return [by_name[n] for n in names]

    def run_config(self, task: str, arm: Arm, scale: str, seed: int, out_dir: Path) -> dict:
        """The raw run-config dict of one (task, arm, seed) at ``scale``."""
        base = {k: v for k, v in self.tasks[task].items() if k != "description"}
        cfg = deep_merge(base, self.scale(scale).get("tasks", {}).get(task, {}))
        cfg = deep_merge(cfg, arm.overrides)
        cfg.setdefault("model", {})["gate"] = arm.gate
        cfg["seed"] = seed
        cfg["out_dir"] = str(out_dir)
        cfg.setdefault("train", {}).setdefault("progress", False)
        return cfg


def load_study(path: str | Path) -> Study:
    """Read and validate a study TOML file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from None
    return study_from_dict(data, source=path)


def study_from_dict(data: dict[str, Any], source: Path | None = None) -> Study:
    _check_keys(data, STUDY_KEYS, "the study")
    for key in ("name", "arms", "tasks", "scales"):
        if key not in data:
            raise ValueError(f"a study needs {key!r}")
    arms = []
    for raw in data["arms"]:
        _check_keys(raw, ARM_KEYS, f"arm {raw.get('name', '?')!r}")
        if "name" not in raw:
            raise ValueError("every arm needs a name")
        overrides = {k: raw[k] for k in ("model", "data", "train") if k in raw}
        arms.append(
            Arm(
                name=raw["name"],
                gate=raw.get("gate", "none"),
                overrides=overrides,
                label=raw.get("label"),
                paper_row=raw.get("paper_row"),
                match=raw.get("match"),
            )
        )
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique, got {names}")
    for scale, spec in data["scales"].items():
        _check_keys(spec, SCALE_KEYS, f"scale {scale!r}")
        for task in spec.get("tasks", {}):
            if task not in data["tasks"]:
                raise ValueError(f"scale {scale!r} overrides unknown task {task!r}")
    study = Study(
        name=data["name"],
        title=data.get("title", data["name"]),
        report=data.get("report", "sinks"),
        arms=arms,
        tasks=data["tasks"],
        scales=data["scales"],
        description=data.get("description", ""),
        metrics=data.get("metrics", []),
        source=source,
    )
    # Validate every run config up front, so a typo fails before hours of training.
    from gated_attention.train.config import RunConfig

    for scale in study.scales:
        for task in study.tasks:
            for arm in study.arms_for(scale):
                raw = study.run_config(task, arm, scale, 0, Path("."))
                try:
                    RunConfig.from_dict(raw)
                except ValueError as err:
                    raise ValueError(
                        f"task {task!r}, arm {arm.name!r}, scale {scale!r}: {err}"
                    ) from None
    return study


@dataclass
class RunRecord:
    """One finished (or failed) run of a study."""

    task: str
    arm: str
    seed: int
    run_dir: str
    status: str  # "ok" | "failed" | "diverged"
    result: dict[str, Any] = field(default_factory=dict)
    analysis: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_study(
    study: Study,
    scale: str,
    out_dir: str | Path,
    resume: bool = False,
    analyze: Any = None,
    progress: bool = True,
) -> list[RunRecord]:
    """Train and analyse every (task, arm, seed) of ``study`` at ``scale``.

    ``analyze(run_dir, task_name, run_config) -> dict`` computes the per-run metrics (the report
    module supplies it). Each record is written to ``<run>/record.json`` as soon as it is done.
    """
    from gated_attention.train import RunConfig, TrainingDiverged, train

    out_dir = Path(out_dir)
    spec = study.scale(scale)
    seeds = spec.get("seeds", [0])
    jobs = [(t, a, s) for t in study.tasks for a in study.arms_for(scale) for s in seeds]
    records: list[RunRecord] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), unit="run", desc=f"{study.name}/{scale}", dynamic_ncols=True)
    for i, (task, arm, seed) in enumerate(jobs):
        run_dir = out_dir / task / arm.name / f"seed{seed}"
        record_path = run_dir / "record.json"
        if bar:
            bar.set_postfix_str(f"{task}/{arm.name}/seed{seed}")
        if resume and record_path.exists():
            rec = RunRecord(**json.loads(record_path.read_text()))
            if rec.status in ("ok", "diverged"):
                records.append(rec)
                if bar:
                    bar.update(1)
                continue
        log.info("[%d/%d] %s / %s / seed %d", i + 1, len(jobs), task, arm.name, seed)
        start = time.perf_counter()
        raw = study.run_config(task, arm, scale, seed, run_dir)
        try:
            cfg = RunConfig.from_dict(raw)
            try:
                result = train(cfg, resume=resume).to_dict()
                status = "ok" if result.get("diverged_at") is None else "diverged"
            except TrainingDiverged as err:
                result, status = {"diverged": str(err)}, "diverged"
            analysis = analyze(run_dir, task, cfg) if analyze and status == "ok" else {}
            rec = RunRecord(
                task,
                arm.name,
                seed,
                str(run_dir),
                status,
                result,
                analysis,
                seconds=time.perf_counter() - start,
            )
        except Exception as err:  # one failing arm must not lose the others
            log.error("%s / %s / seed %d failed: %s", task, arm.name, seed, err)
            rec = RunRecord(
                task,
                arm.name,
                seed,
                str(run_dir),
                "failed",
                error=f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=5)}",
                seconds=time.perf_counter() - start,
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(rec.to_dict(), indent=1, default=_json_default))
        records.append(rec)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return records


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def studies_dir() -> Path:
    """``configs/studies`` of a source checkout, else the copy shipped in the package."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "configs" / "studies"
        if candidate.is_dir():
            return candidate
    return here.parent / "studies"


def find_study(name_or_path: str) -> Path:
    """A study file by path or by preset name (``sinks`` -> ``configs/studies/sinks.toml``)."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path
    candidate = studies_dir() / f"{name_or_path}.toml"
    if not candidate.exists():
        available = sorted(p.stem for p in studies_dir().glob("*.toml"))
        raise ValueError(f"no study named {name_or_path!r}; available: {', '.join(available)}")
    return candidate
