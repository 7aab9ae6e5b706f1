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

Optional keys (all off by default, so older studies read the same):

- ``equal_params = true`` in a task (or ``equal_params = false`` in an arm, which wins): narrow
  the FFN of gated arms so they have the ungated model's parameter count
  (``ModelConfig.with_equal_params``; the paper's dense runs).
- ``match = "<arm>"`` with ``grow = "kv_heads" | "query_heads" | "ffn"`` in an arm: a
  parameter-matched baseline (paper Table 1 rows 2-4) that grows that dimension by as many
  parameters as the gate of ``<arm>`` adds (``ModelConfig.expanded``), at every task and scale.
- ``lrs = [1e-3, 2e-3, ...]`` at the study or scale level: a learning-rate sweep; every arm
  ``a`` runs as ``a@lr0.001``, ``a@lr0.002``, ... (``Arm.base`` and ``Arm.lr`` record it).
- ``arms`` of a scale may be a table ``{task = [arm names]}``: a per-task subset (a task not
  listed runs every arm, an empty list skips it at that scale).
- ``probe = { every = 50, batch_size = 8 }`` in a task: the training-time sink probe
  (``gated_attention.analysis.training.SinkProbe``) logs sinks, residual spikes and gates to
  each run's ``metrics.jsonl`` every ``every`` steps.

Finished runs are skipped on ``--resume`` (their ``analysis.json`` is reused); a failing arm is
recorded with its error and the study goes on.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import logging
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gated_attention.config import ModelConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger("gated_attention.experiments")

STUDY_KEYS = (
    "name",
    "title",
    "description",
    "report",
    "arms",
    "tasks",
    "scales",
    "metrics",
    "lrs",
)
ARM_KEYS = (
    "name",
    "gate",
    "model",
    "data",
    "train",
    "label",
    "paper_row",
    "match",
    "grow",
    "equal_params",
)
SCALE_KEYS = ("seeds", "tasks", "analysis", "arms", "description", "lrs")
TASK_META_KEYS = ("description", "equal_params", "probe")
"""Task keys that describe how to build runs rather than run-config sections."""


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
    grow: str | None = None
    """With ``match``: the dimension grown to spend the matched arm's gate parameters
    (``kv_heads`` | ``query_heads`` | ``ffn``, see ``ModelConfig.expanded``)."""
    equal_params: bool | None = None
    """Override the task's ``equal_params`` for this arm (``None``: follow the task)."""
    base: str | None = None
    """For an arm of a learning-rate sweep: the arm it was expanded from."""
    lr: float | None = None
    """For an arm of a learning-rate sweep: its learning rate."""

    @property
    def paper_key(self) -> str:
        """The row of the paper's tables printed beside this arm."""
        return self.paper_row or self.gate


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
    lrs: list[float] = field(default_factory=list)
    """Study-wide learning-rate sweep (a scale's ``lrs`` replaces it); empty: no sweep."""

    def scale(self, name: str) -> dict[str, Any]:
        if name not in self.scales:
            raise ValueError(
                f"study {self.name!r} has no scale {name!r}; available: {', '.join(self.scales)}"
            )
        return self.scales[name]

    def arm(self, name: str) -> Arm:
        """A declared arm by name (before any learning-rate expansion)."""
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise ValueError(f"study {self.name!r} has no arm {name!r}")

    def lrs_for(self, scale: str) -> list[float]:
        """The learning-rate sweep of a scale (empty: no sweep)."""
        return list(self.scale(scale).get("lrs", self.lrs) or [])

    def arms_for(self, scale: str, task: str | None = None) -> list[Arm]:
        """Arms of a scale (a scale may list a subset by name, or per task), expanded over the
        scale's learning-rate sweep when it has one."""
        subset = self.scale(scale).get("arms")
        if isinstance(subset, dict):
            if task is not None:
                names = subset.get(task)  # a task not listed runs every arm
            elif any(t not in subset for t in self.tasks):
                names = None
            else:  # the union over tasks, in declaration order
                listed = {n for group in subset.values() for n in group}
                names = [a.name for a in self.arms if a.name in listed]
        else:
            names = subset or None  # an absent or empty top-level list means every arm
        if names is None:
            arms = list(self.arms)
        else:
            by_name = {a.name: a for a in self.arms}
            missing = [n for n in names if n not in by_name]
            if missing:
                raise ValueError(f"scale {scale!r} names unknown arms {missing}")
            arms = [by_name[n] for n in names]
        lrs = self.lrs_for(scale)
        if not lrs:
            return arms
        return [
            dataclasses.replace(
                arm,
                name=f"{arm.name}@lr{lr:g}",
                overrides=deep_merge(arm.overrides, {"train": {"lr": lr}}),
                base=arm.name,
                lr=lr,
            )
            for arm in arms
            for lr in lrs
        ]

    def run_config(self, task: str, arm: Arm, scale: str, seed: int, out_dir: Path) -> dict:
        """The raw run-config dict of one (task, arm, seed) at ``scale``.

        Parameter matching (``equal_params``, ``match``/``grow``) is resolved here into plain
        model sizes, so each run's ``config.json`` holds the widths it really trained.
        """
        spec = deep_merge(self.tasks[task], self.scale(scale).get("tasks", {}).get(task, {}))
        cfg = self._raw_config(task, arm, scale)
        equal = spec.get("equal_params", False) if arm.equal_params is None else arm.equal_params
        if equal or arm.grow:
            cfg["model"] = self._sized_model(task, arm, scale, cfg, bool(equal))
        cfg["seed"] = seed
        cfg["out_dir"] = str(out_dir)
        cfg.setdefault("train", {}).setdefault("progress", False)
        return cfg

    def probe(self, task: str, scale: str) -> dict[str, Any] | None:
        """The task's training-time sink probe settings at ``scale`` (``None``: no probe)."""
        spec = deep_merge(self.tasks[task], self.scale(scale).get("tasks", {}).get(task, {}))
        return spec.get("probe")

    def _raw_config(self, task: str, arm: Arm, scale: str) -> dict[str, Any]:
        base = {k: v for k, v in self.tasks[task].items() if k not in TASK_META_KEYS}
        over = self.scale(scale).get("tasks", {}).get(task, {})
        cfg = deep_merge(base, {k: v for k, v in over.items() if k not in TASK_META_KEYS})
        cfg = deep_merge(cfg, arm.overrides)
        cfg.setdefault("model", {})["gate"] = arm.gate
        return cfg

    def model_config(self, task: str, arm: Arm, scale: str, sized: bool = True) -> ModelConfig:
        """The ``ModelConfig`` of an arm on a task (vocabulary as the model section gives it,
        which parameter differences do not depend on); ``sized=False`` skips matching."""
        from gated_attention.train.config import RunConfig

        if sized:
            raw = self.run_config(task, arm, scale, 0, Path("."))
        else:
            raw = self._raw_config(task, arm, scale)
        return RunConfig.from_dict(raw).model_config(None)

    def _sized_model(
        self, task: str, arm: Arm, scale: str, cfg: dict[str, Any], equal: bool
    ) -> dict[str, Any]:
        """The model section with the FFN narrowed (equal params) or a dimension grown to
        match another arm's gate parameters; only changed fields are written."""
        from gated_attention.train.config import RunConfig

        model = RunConfig.from_dict(cfg).model_config(None)
        sized = model.with_equal_params() if equal else model
        if arm.grow:
            matched = self.model_config(task, self.arm(arm.match or ""), scale, sized=False)
            budget = matched.gate_parameters()
            if budget <= 0:
                raise ValueError(
                    f"arm {arm.name!r} matches arm {arm.match!r}, whose gate adds no parameters "
                    f"on task {task!r}; match an arm with a parameterised gate."
                )
            sized = sized.expanded(arm.grow, budget)
        old, new = model.to_dict(), sized.to_dict()
        section = dict(cfg["model"])
        section.update({k: v for k, v in new.items() if old[k] != v})
        return section


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
                grow=raw.get("grow"),
                equal_params=raw.get("equal_params"),
            )
        )
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique, got {names}")
    _check_matching(arms, data["tasks"])
    _check_lrs(data.get("lrs", []), "the study's lrs")
    for scale, spec in data["scales"].items():
        _check_keys(spec, SCALE_KEYS, f"scale {scale!r}")
        for task in spec.get("tasks", {}):
            if task not in data["tasks"]:
                raise ValueError(f"scale {scale!r} overrides unknown task {task!r}")
        if isinstance(spec.get("arms"), dict):
            for task in spec["arms"]:
                if task not in data["tasks"]:
                    raise ValueError(f"scale {scale!r} lists arms for unknown task {task!r}")
        _check_lrs(spec.get("lrs", []), f"scale {scale!r} lrs")
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
        lrs=list(data.get("lrs", [])),
    )
    # Validate every run config up front, so a typo fails before hours of training.
    from gated_attention.train.config import RunConfig

    for scale in study.scales:
        for task in study.tasks:
            for arm in study.arms_for(scale, task):
                raw = study.run_config(task, arm, scale, 0, Path("."))
                try:
                    RunConfig.from_dict(raw)
                except ValueError as err:
                    raise ValueError(
                        f"task {task!r}, arm {arm.name!r}, scale {scale!r}: {err}"
                    ) from None
            _sink_probe(study.probe(task, scale), f"task {task!r}, scale {scale!r}")
    return study


def _sink_probe(settings: dict[str, Any] | None, where: str) -> list[Any] | None:
    """A task's ``probe = {every = N, batch_size = B, eps = 0.3}`` as trainer callbacks."""
    if settings is None:
        return None
    from gated_attention.analysis.training import SinkProbe

    if not isinstance(settings, dict):
        raise ValueError(f"{where}: probe must be a table such as {{ every = 50 }}")
    _check_keys(settings, ("every", "batch_size", "eps"), f"{where} probe")
    return [SinkProbe(**settings)]


def _check_matching(arms: list[Arm], tasks: dict[str, Any]) -> None:
    """Validate the parameter-matching keys of arms and tasks."""
    from gated_attention.config import EXPANSION_DIMS

    names = {a.name for a in arms}
    for arm in arms:
        if arm.equal_params is not None and not isinstance(arm.equal_params, bool):
            raise ValueError(
                f"arm {arm.name!r}: equal_params must be true or false, got {arm.equal_params!r}"
            )
        if arm.grow is not None:
            if arm.grow not in EXPANSION_DIMS:
                raise ValueError(
                    f"arm {arm.name!r}: grow={arm.grow!r} is not valid; allowed: "
                    f"{', '.join(EXPANSION_DIMS)}"
                )
            if arm.match is None:
                raise ValueError(
                    f"arm {arm.name!r}: grow={arm.grow!r} needs match = '<arm>' (whose gate "
                    "parameters it spends)"
                )
        if arm.match is not None and arm.match not in names:
            raise ValueError(f"arm {arm.name!r}: match={arm.match!r} names no arm of the study")
    for task, spec in tasks.items():
        value = spec.get("equal_params", False)
        if not isinstance(value, bool):
            raise ValueError(f"task {task!r}: equal_params must be true or false, got {value!r}")


def _check_lrs(lrs: Any, where: str) -> None:
    ok = isinstance(lrs, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in lrs
    )
    if not ok:
        raise ValueError(f"{where} must be a list of positive learning rates, got {lrs!r}")
    if len(set(lrs)) != len(lrs):
        raise ValueError(f"{where} has repeated learning rates: {lrs!r}")


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
    from gated_attention.data.errors import EpochLimitError
    from gated_attention.experiments.reporting import write_json
    from gated_attention.train import RunConfig, TrainingDiverged, train

    out_dir = Path(out_dir)
    spec = study.scale(scale)
    seeds = spec.get("seeds", [0])
    jobs = [(t, a, s) for t in study.tasks for a in study.arms_for(scale, t) for s in seeds]
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
                probe = _sink_probe(study.probe(task, scale), f"task {task!r}")
                result = train(cfg, resume=resume, callbacks=probe).to_dict()
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
        except EpochLimitError:  # every arm of the task would stop the same way
            raise
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
        write_json(record_path, rec.to_dict())
        records.append(rec)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return records


def studies_dir() -> Path:
    """The study files shipped in the package (``configs/studies`` of a source checkout links
    here), so ``reproduce --study NAME`` works from a wheel as from a checkout."""
    return Path(__file__).resolve().parent / "studies"


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
