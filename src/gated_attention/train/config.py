"""Run configuration: one TOML file plus a seed describes a training run completely.

```toml
seed = 0
out_dir = "runs/tiny"

[model]            # a preset plus any ModelConfig field
preset = "tiny"
gate = "sdpa-elementwise"

[data]             # corpus (default text), backcopy (synthetic sink task) or files (yours)
kind = "corpus"
seq_len = 128
bos = true

[train]
steps = 200
batch_size = 16
lr = 3e-3

[distributed]
strategy = "none"  # none | ddp | fsdp (launch with torchrun)
```

Unknown keys are errors that suggest the closest valid key; ``--set section.key=value``
overrides any field (values parsed as TOML literals).
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gated_attention.config import ModelConfig, _suggest
from gated_attention.data.retrieval import RETRIEVAL_TASKS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DATA_KINDS = ("corpus", "backcopy", "files")
SCHEDULES = ("cosine", "wsd", "constant")
DTYPES = ("float32", "bfloat16")
STRATEGIES = ("none", "ddp", "fsdp")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager", "cudagraphs")
CHECKPOINTING = ("none", "full", "attention")
"""``train.activation_checkpointing``: as ``gated_attention.model.CHECKPOINTING``."""


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` (parsed TOML) fits the annotation ``hint``: ints are ints (``8.0`` is
    not), floats accept ints, strings are strings, booleans are booleans; types this check does
    not know (nested configs) are left to the config's own validation."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def _type_name(hint: Any) -> str:
    text = str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return text.replace("NoneType", "None")


def check_types(cls: type, data: dict[str, Any], where: str) -> None:
    """Refuse a value of the wrong type for a field of dataclass ``cls``, naming the key."""
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        hint = hints.get(key)
        if hint is not None and not _type_ok(value, hint):
            name = key if where == "run" else f"{where}.{key}"
            if hint is dict or typing.get_origin(hint) is dict:
                raise ValueError(
                    f"[{name}] must be a table of keys, got {value!r}; set one field with "
                    f"--set {name}.KEY=VALUE."
                )
            fix = ""
            if hint is int and isinstance(value, float):
                fix = " (an integer: no decimal point)"
            raise ValueError(
                f"{name} must be {_type_name(hint)}, got {value!r} ({type(value).__name__}){fix}."
            )


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(
            f"[{where}] must be a table of keys, got {data!r}; set one field with "
            f"--set {where}.KEY=VALUE."
        )
    valid = [f.name for f in fields(cls)]
    for key in data:
        if key not in valid:
            raise ValueError(
                f"unknown key {key if where == 'run' else f'{where}.{key}'}."
                f"{_suggest(key, valid)} Valid keys in [{where}]: {', '.join(valid)}."
            )
    check_types(cls, data, where)
    return cls(**data)


DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")


def resolve_device(spec: str, key: str = "train.device") -> Any:
    """The ``torch.device`` for ``spec`` (``auto``: CUDA when available, else CPU), refusing a
    device that is not valid or not available here with one line naming ``key``."""
    import torch

    if not isinstance(spec, str):
        raise ValueError(f"{key} must be a device name (str), got {spec!r}.")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = spec.partition(":")
    if kind not in DEVICE_KINDS[1:] or (index and not index.isdigit()):
        raise ValueError(
            f"{key}={spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps.{_suggest(kind, DEVICE_KINDS)}"
        )
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{key}={spec!r} but CUDA is not available here; use cpu or auto.")
        if index and int(index) >= count:
            raise ValueError(f"{key}={spec!r} but only {count} CUDA device(s) exist here.")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{key}={spec!r} but MPS is not available here; use cpu or auto.")
    return torch.device(spec)


def _choice(where: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{where}={value!r} is not valid; allowed: {', '.join(allowed)}.")


def _positive(where: str, value: Any, zero_ok: bool = False) -> None:
    bad = not isinstance(value, (int, float)) or isinstance(value, bool)
    if bad or value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{where} must be {'>= 0' if zero_ok else '> 0'}, got {value!r}.")


@dataclass
class DataConfig:
    kind: str = "corpus"
    """``corpus``: the default English corpus (fetched and cached); ``files``: your own corpus in
    ``path``; ``backcopy``: the synthetic sink task."""
    seq_len: int = 128
    bos: bool = True
    """Put a fixed BOS token at position 0 of every training window (induces sinks)."""
    sources: list[str] = field(default_factory=lambda: ["wiki", "shakespeare"])
    path: str | list[str] | None = None
    """``files``: a shard set from ``gated-attention data prepare``, or text / JSONL(.gz/.zst) /
    parquet files, globs, directories, a ``datasets`` ``save_to_disk`` directory or
    ``hf:NAME[:CONFIG]`` (tokenised into shards in the cache on first use). A list is one corpus
    read in order, or with ``weights`` a mixture. ``~`` and ``$VARS`` are expanded when the data
    is built; an unset variable is an error there."""
    weights: list[float] | None = None
    """Sampling weights that make the entries of a ``path`` list a mixture of sources (each
    tokenised on its own, sampled by weight; provenance in the run's ``data.json``)."""
    text_field: str = "text"
    """JSONL field / parquet or dataset column holding the text (``files``)."""
    dataset_split: str = "train"
    """Split of a ``datasets`` directory or ``hf:`` builder (``files``)."""
    tokenizer: str | None = None
    """An existing ``tokenizer.json`` (or a pretrained tokenizer's directory) instead of training
    one; with a prepared shard set it must be the one the shards were made with."""
    vocab_size: int = 8192
    """Vocabulary of the trained tokenizer (and of the backcopy task's token set)."""
    val_fraction: float = 0.05
    cache_dir: str | None = None
    prepare_workers: int = 0
    """Processes that tokenise a ``files`` corpus on first use (0: all cores)."""
    verify: bool = True
    """Check every shard's checksum and token ids when a run opens a shard set (one sequential
    read of the set)."""
    max_passes: float = 4.0
    """Stop before training when the run would read its training split more often than this
    (tokens read / training tokens); ``inf`` disables the check."""
    num_triggers: int = 3
    """backcopy: how many trigger tokens."""
    task_seed: int = 1234
    """backcopy: seed of the bigram chain (fixed across arms so they learn the same task)."""
    retrieval_mix: float = 0.0
    """Share of training sequences replaced by synthetic retrieval examples at the training
    length (``gated_attention.data.retrieval``); deterministic per (seed, step). 0 disables."""
    retrieval_task: str = "passkey"
    """``passkey`` (passkey retrieval) or ``recall`` (multi-query associative recall)."""
    document_mask: bool = False
    """Attend only within each document of a packed window (a block-diagonal causal mask from
    the end-of-document tokens, positions restarting at each document) instead of across the
    document boundaries that packing puts in a window. ``corpus`` and ``files`` only."""

    def __post_init__(self) -> None:
        _choice("data.kind", self.kind, DATA_KINDS)
        _positive("data.seq_len", self.seq_len)
        _positive("data.vocab_size", self.vocab_size)
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}.")
        mix = self.retrieval_mix
        if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not 0.0 <= mix <= 1.0:
            raise ValueError(f"data.retrieval_mix must be in [0, 1], got {self.retrieval_mix}.")
        _choice("data.retrieval_task", self.retrieval_task, RETRIEVAL_TASKS)
        _positive("data.max_passes", self.max_passes)
        workers = self.prepare_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"data.prepare_workers must be an integer >= 0, got {workers!r}.")
        paths = [self.path] if isinstance(self.path, str) else self.path
        if paths is not None and (
            not isinstance(paths, list)
            or not paths
            or not all(isinstance(p, str) and p for p in paths)
        ):
            raise ValueError(
                f"data.path must be a path or a non-empty list of paths, got {self.path!r}."
            )
        if self.weights is not None:
            if not isinstance(self.path, list) or len(self.weights) != len(self.path):
                raise ValueError(
                    "data.weights needs data.path to be a list with one weight per entry, got "
                    f"{len(self.weights)} weights for data.path={self.path!r}."
                )
            for w in self.weights:
                _positive("each of data.weights", w)
        if not isinstance(self.document_mask, bool):
            raise ValueError(
                f"data.document_mask must be true or false, got {self.document_mask!r}."
            )
        if self.document_mask and self.kind == "backcopy":
            raise ValueError(
                'data.document_mask needs end-of-document tokens: use data.kind = "corpus" or '
                '"files", or set data.document_mask = false for the backcopy task.'
            )
        if self.kind == "files" and not self.path:
            raise ValueError(
                'data.kind = "files" needs data.path: a shard set from `gated-attention data '
                "prepare`, or text/JSONL/parquet files or globs (see README, Data)."
            )


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 16
    """Global batch in sequences (split over ranks and accumulation micro-steps)."""
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    schedule: str = "cosine"
    decay_fraction: float = 0.2
    """wsd: share of steps in the final decay."""
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    """0 disables clipping."""
    decay_embeddings: bool = False
    """Apply weight decay to embeddings too (norms and biases never decay)."""
    dtype: str = "float32"
    """``bfloat16`` runs the forward under autocast (weights and optimizer stay fp32)."""
    compile: bool = False
    """``torch.compile`` the model's training and evaluation forwards (with the loss)."""
    compile_backend: str = "inductor"
    """``torch.compile`` backend: ``inductor`` (generates kernels), ``aot_eager`` (traces
    forward and backward like inductor, runs them eagerly: what ``--dry-run`` uses), ``eager``,
    ``cudagraphs``."""
    activation_checkpointing: str = "none"
    """``none``; ``full``: recompute each decoder block in backward (keeps only block inputs);
    ``attention``: selective, recompute only each block's attention sublayer. Same values."""
    threads: int = 0
    """torch CPU threads (``torch.set_num_threads``); 0 keeps torch's default."""
    z_loss: float = 0.0
    """Coefficient of the LM head's z-loss ``mean(logsumexp(logits)^2)`` (PaLM); 0 disables."""
    device: str = "auto"
    eval_every: int = 50
    eval_batches: int = 8
    eval_batch_size: int = 0
    """0: same as batch_size."""
    log_every: int = 1
    ckpt_every: int = 100
    keep_last: int = 2
    progress: bool = True
    tensorboard: bool = False
    spike_window: int = 128
    spike_sigma: float = 6.0
    stop_on_nonfinite: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "lr", "log_every", "eval_batches"):
            _positive(f"train.{name}", getattr(self, name))
        for name in ("warmup_steps", "weight_decay", "grad_clip", "eval_every", "ckpt_every"):
            _positive(f"train.{name}", getattr(self, name), zero_ok=True)
        _positive("train.keep_last", self.keep_last)
        _choice("train.schedule", self.schedule, SCHEDULES)
        _choice("train.dtype", self.dtype, DTYPES)
        _choice("train.activation_checkpointing", self.activation_checkpointing, CHECKPOINTING)
        _choice("train.compile_backend", self.compile_backend, COMPILE_BACKENDS)
        _positive("train.threads", self.threads, zero_ok=True)
        _positive("train.z_loss", self.z_loss, zero_ok=True)
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}.")
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"train.batch_size={self.batch_size} must be divisible by "
                f"train.grad_accum={self.grad_accum}."
            )


@dataclass
class DistributedConfig:
    strategy: str = "none"
    """``ddp`` (DistributedDataParallel) or ``fsdp`` (FSDP2 ``fully_shard`` per block); both
    need a ``torchrun`` launch. gloo on CPU, nccl on GPU."""
    backend: str = "auto"

    def __post_init__(self) -> None:
        _choice("distributed.strategy", self.strategy, STRATEGIES)
        _choice("distributed.backend", self.backend, ("auto", "gloo", "nccl"))


@dataclass
class RunConfig:
    seed: int = 0
    out_dir: str = "runs/train"
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self) -> None:
        sections = {"data": DataConfig, "train": TrainConfig, "distributed": DistributedConfig}
        for name, cls in sections.items():
            if not isinstance(getattr(self, name), cls):
                setattr(self, name, _build(cls, getattr(self, name), name))
        if not isinstance(self.model, dict):
            raise ValueError(
                f"[model] must be a table of keys, got {self.model!r}; set one field with "
                "--set model.KEY=VALUE."
            )
        self.model_config(vocab_size=None)  # validate the model section early

    def model_config(self, vocab_size: int | None) -> ModelConfig:
        """The model config; ``vocab_size`` (from the tokenizer/task) fills it unless the
        model section sets it."""
        spec = dict(self.model)
        preset = spec.pop("preset", None)
        if preset is not None and not isinstance(preset, str):
            raise ValueError(f"model.preset must be a preset name (str), got {preset!r}.")
        check_types(ModelConfig, spec, "model")
        if vocab_size is not None and "vocab_size" not in spec:
            spec["vocab_size"] = vocab_size
        if "max_position_embeddings" not in spec and preset is None:
            spec.setdefault("max_position_embeddings", max(self.data.seq_len, 128))
        try:
            cfg = ModelConfig.from_preset(preset, **spec) if preset else ModelConfig.from_dict(spec)
        except ValueError as err:
            raise ValueError(f"[model] {err}") from None
        if self.data.seq_len > cfg.max_position_embeddings:
            raise ValueError(
                f"data.seq_len={self.data.seq_len} exceeds the model's maximum "
                f"max_position_embeddings={cfg.max_position_embeddings}; lower data.seq_len or "
                f"raise model.max_position_embeddings."
            )
        if vocab_size is not None and cfg.vocab_size < vocab_size:
            raise ValueError(
                f"model.vocab_size={cfg.vocab_size} is smaller than the tokenizer's "
                f"{vocab_size} tokens; remove model.vocab_size to use the tokenizer's size."
            )
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return _build(cls, data, "run")


def parse_value(text: str) -> Any:
    """A ``--set`` value as a TOML literal (``3e-3``, ``true``, ``"x"``, ``[1, 2]``); bare
    words that are not TOML literals are taken as strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {part} is not a section")
        node[parts[-1]] = parse_value(value.strip())
    return data


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML run config (or defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"config {path} is a directory; give a TOML file (see configs/)")
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text())
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not a text (TOML) file") from None
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path} is not valid TOML: {err}") from None
    apply_overrides(data, overrides or [])
    return RunConfig.from_dict(data)
