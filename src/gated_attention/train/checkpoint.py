"""Checkpoints that survive being killed: atomic, checksummed, rotated.

A checkpoint is a directory ``checkpoints/step_0000100/`` holding

- ``model.safetensors``: the weights (tied ``lm_head`` stored once, as ``embed_tokens``);
- ``model_config.json``: the :class:`~gated_attention.ModelConfig`;
- ``optimizer.pt``: optimizer state (or ``dcp/`` for FSDP2's sharded state);
- ``trainer_state.json``: step, RNG states, callback states, data position, run config;
- ``manifest.json``: sha256 of every file above, written last.

Everything is written into a temporary sibling directory, fsynced and renamed into place, so a
checkpoint directory either exists complete or not at all. A file whose checksum does not match
the manifest makes the checkpoint invalid; resuming then falls back to the previous one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gated_attention.config import ModelConfig
from gated_attention.model import GatedLM

log = logging.getLogger("gated_attention.train")

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupted or incompatible."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict safe for safetensors: contiguous CPU tensors, tied head dropped."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    cfg = getattr(model, "cfg", None)
    if cfg is not None and cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return state


def save_model(
    model: GatedLM, path: str | Path, state: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write ``model.safetensors`` and ``model_config.json`` into directory ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    target = path / MODEL_FILE
    try:
        save_file(state if state is not None else model_state(model), str(target))
    except Exception as err:  # safetensors' SafetensorError wraps the OS error in its text
        found = re.search(r"os error (\d+)", str(err))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(target)) from None
    (path / CONFIG_FILE).write_text(model.cfg.to_json())
    return path


def torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` that reports a failed write (disk full, file size limit, read-only file
    system) as the ``OSError`` naming ``path``, not torch's ``unexpected pos`` RuntimeError."""
    try:
        with open(path, "wb") as handle:
            torch.save(obj, handle)
    except RuntimeError as err:
        cause = err.__context__
        if isinstance(cause, OSError) and cause.errno is not None:
            raise OSError(cause.errno, os.strerror(cause.errno), str(path)) from None
        raise


def load_model(path: str | Path, device: str | torch.device = "cpu") -> GatedLM:
    """Load a model saved by :func:`save_model`, a checkpoint, or a run directory (its
    ``final/`` export, else its latest valid checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if path.is_dir() and not (path / MODEL_FILE).exists():
        if (path / "final" / MODEL_FILE).exists():
            path = path / "final"
        else:
            latest = latest_checkpoint(path / "checkpoints")
            if latest is None:
                raise CheckpointError(
                    f"{path} holds no {MODEL_FILE}, no final/ export and no valid checkpoint"
                )
            path = latest
    if (path / MANIFEST).exists():
        verify_checkpoint(path)
    if not (path / CONFIG_FILE).exists():
        raise CheckpointError(f"{path} has weights but no {CONFIG_FILE}")
    cfg = ModelConfig.from_json((path / CONFIG_FILE).read_text())
    model = GatedLM(cfg)
    check_safetensors(path / MODEL_FILE)
    load_weights(model, load_file(str(path / MODEL_FILE)), source=str(path))
    return model.to(device)


def check_safetensors(path: str | Path) -> None:
    """Check that ``path`` (a ``.safetensors`` file, or every one in a directory) is complete:
    its header parses and its tensors fit in the file. Reads the headers only; a truncated or
    corrupt file raises :class:`CheckpointError` naming it."""
    from safetensors import safe_open

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # safetensors raises its own SafetensorError (not exported)
            raise CheckpointError(
                f"{file} is truncated or corrupt ({err}); re-create or re-download it"
            ) from None


def load_weights(model: GatedLM, state: dict[str, torch.Tensor], source: str = "") -> None:
    """Load a state dict, allowing only the tied ``lm_head`` to be absent; shape mismatches
    are reported by name."""
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(value.shape)} but the model expects "
                f"{tuple(own[key].shape)}; the checkpoint comes from a different model config"
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if model.cfg.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit the model (missing: {missing[:5]}, unexpected: "
            f"{unexpected[:5]}); the checkpoint comes from a different model config"
        )


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint directories under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and (p / MANIFEST).exists())


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check every file against the manifest; returns the manifest."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {path} has no readable manifest ({err})") from None
    for name, digest in manifest["files"].items():
        f = path / name
        if not f.exists():
            raise CheckpointError(f"checkpoint {path} is missing {name}")
        if _sha256(f) != digest:
            raise CheckpointError(
                f"checkpoint {path}: {name} does not match its checksum (corrupted file)"
            )
    return manifest


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest checkpoint that passes verification (warning about any that fail)."""
    for path in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as err:
            log.warning("skipping invalid checkpoint: %s", err)
    return None


def save_checkpoint(
    root: str | Path,
    step: int,
    model: GatedLM,
    weights: dict[str, torch.Tensor] | None,
    optimizer_state: dict[str, Any] | None,
    trainer_state: dict[str, Any],
    keep_last: int,
    extra_writer: Any = None,
) -> Path:
    """Atomically write checkpoint ``step`` under ``root`` and keep the newest ``keep_last``.

    ``extra_writer(tmp_dir)`` may write more files (e.g. a sharded optimizer) before the
    manifest is sealed.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, tmp, weights)
    if optimizer_state is not None:
        torch_save(optimizer_state, tmp / "optimizer.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
    if extra_writer is not None:
        extra_writer(tmp)
    files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_stale_tmp(root: str | Path) -> list[Path]:
    """Remove the temporary directories (``.tmp-step_*-PID``, ``.dcp-step_*``) that writers
    killed mid-checkpoint left under ``root``; returns what was removed. Only directories of
    processes that no longer run are removed (the caller holds the run lock)."""
    root = Path(root)
    removed = []
    for tmp in sorted([*root.glob(".tmp-step_*"), *root.glob(".dcp-step_*")]):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    if removed:
        log.warning("removed %d unfinished checkpoint write(s) in %s", len(removed), root)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


FREE_ON_RESUME = (
    "out_dir",
    "data.cache_dir",
    "data.prepare_workers",
    "data.verify",
    "train.device",
    "train.threads",
    "train.progress",
    "train.tensorboard",
    "train.log_every",
    "train.eval_every",
    "train.eval_batches",
    "train.eval_batch_size",
    "train.ckpt_every",
    "train.keep_last",
    "train.compile",
    "train.compile_backend",
    "train.activation_checkpointing",
    "train.stop_on_nonfinite",
    "distributed.strategy",
    "distributed.backend",
)
"""Run-config keys a resumed run may change freely: where and how it runs, not what it computes
(the model, data, seed and schedule keys must match, or be named in ``allow_changed``)."""


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and prefix + key != "model.rope_scaling":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _shown(config: dict[str, Any], key: str) -> str:
    return repr(config[key]) if key in config else "(unset)"


def check_resume_config(
    path: Path, stored: dict[str, Any], current: dict[str, Any], allow_changed: tuple[str, ...]
) -> list[str]:
    """Refuse to resume checkpoint ``path`` (written under run config ``stored``) with a
    ``current`` config that changes what the run computes, naming the keys; keys listed in
    ``allow_changed`` may differ. Returns the changed keys that were allowed."""
    a, b = _flatten(stored), _flatten(current)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    changed = [k for k in changed if k not in FREE_ON_RESUME]
    refused = [
        k for k in changed if k not in allow_changed and k.split(".")[0] not in allow_changed
    ]
    if refused:
        diff = "; ".join(f"{k}: {_shown(a, k)} -> {_shown(b, k)}" for k in refused)
        flags = " ".join(f"--allow-changed {k}" for k in refused)
        raise CheckpointError(
            f"--resume: the run config differs from checkpoint {path} ({diff}); resume with the "
            f"original config, or accept the change with {flags}"
        )
    for k in changed:
        log.warning("resuming with %s changed: %s -> %s", k, _shown(a, k), _shown(b, k))
    return changed


def read_trainer_state(path: Path) -> dict[str, Any]:
    return json.loads((path / "trainer_state.json").read_text())


def check_compatible(path: Path, cfg: ModelConfig) -> None:
    """Raise if the checkpoint's model config differs from ``cfg`` (naming the fields)."""
    stored = ModelConfig.from_json((path / CONFIG_FILE).read_text())
    if stored != cfg:
        a, b = stored.to_dict(), cfg.to_dict()
        diff = [f"{k}: checkpoint {a[k]!r} vs config {b[k]!r}" for k in a if a[k] != b[k]]
        raise CheckpointError(
            f"checkpoint {path} was written for a different model ({'; '.join(diff)}); "
            "use a fresh out_dir or the original config"
        )
