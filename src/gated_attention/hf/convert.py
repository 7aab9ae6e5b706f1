"""Checkpoint converters between our ``transformers`` format and the formats of
``gated_attention.hf.formats``, by name in :data:`REGISTRY` (``paper``, ``qwen3``, ``qwen3-moe``,
``qwen3-next``).

``import_checkpoint(fmt, src, dst)`` writes a directory that ``AutoModelForCausalLM`` loads as
:class:`GatedAttentionForCausalLM`; ``export_checkpoint(fmt, src, dst)`` does the reverse. Only
``q_proj``/``k_proj``/``v_proj`` <-> our fused ``qkv_proj`` changes, by moving row blocks
(bit-exact, ``docs/layouts.md``); all other tensors keep their Hugging Face names. What a target
cannot express raises :class:`ConversionError` naming the field. Tokenizer files and
``generation_config.json`` are copied along.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gated_attention.config import ModelConfig
from gated_attention.model import GatedLM

from .configuration import GatedAttentionConfig
from .formats.base import SHARED_FIELDS, TOKEN_FIELDS, CheckpointFormat, ConversionError, require
from .formats.paper import PaperFormat
from .formats.qwen3 import Qwen3Format
from .formats.qwen3_moe import Qwen3MoeFormat
from .formats.qwen3_next import Qwen3NextFormat
from .modeling import gated_lm_state_to_hf

__all__ = [
    "CARRY_FILES",
    "FORMATS",
    "REGISTRY",
    "ConversionError",
    "check_exportable",
    "expected_shapes",
    "export_checkpoint",
    "export_state",
    "get_format",
    "import_checkpoint",
    "per_expert_weights",
    "import_state",
    "load_weights",
    "read_config",
    "save_weights",
]

log = logging.getLogger(__name__)

REGISTRY: dict[str, CheckpointFormat] = {
    f.name: f for f in (PaperFormat(), Qwen3Format(), Qwen3MoeFormat(), Qwen3NextFormat())
}
"""The formats by the name ``import_checkpoint``, ``export_checkpoint`` and the CLI take."""
FORMATS = tuple(REGISTRY)
WEIGHTS_NAME = "model.safetensors"
CARRY_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
"""Files copied unchanged from source to destination when present."""

_ATTN_KEY = re.compile(
    r"^model\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|qkv_proj)\.(weight|bias)$"
)
_FUSED_EXPERTS = re.compile(r"^(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$")


# ---------------------------------------------------------------------- files
def get_format(name: str) -> CheckpointFormat:
    """The format registered as ``name``."""
    if name not in REGISTRY:
        raise ConversionError(f"unknown format {name!r}; choose one of: {', '.join(REGISTRY)}.")
    return REGISTRY[name]


def read_config(directory: str | Path) -> dict[str, Any]:
    """The raw ``config.json`` of a checkpoint directory."""
    path = Path(directory)
    if not path.is_dir():
        raise ConversionError(f"{path} is not a directory.")
    file = path / "config.json"
    if not file.is_file():
        raise ConversionError(f"{path} has no config.json.")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{file} is not valid JSON: {err}.") from err
    if not isinstance(data, dict):
        raise ConversionError(f"{file} must hold a JSON object.")
    return data


def load_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint: ``model.safetensors``, a sharded
    ``model.safetensors.index.json``, or ``pytorch_model.bin``."""
    path = Path(directory)
    single = path / WEIGHTS_NAME
    index = path / f"{WEIGHTS_NAME}.index.json"
    legacy = path / "pytorch_model.bin"
    if single.is_file():
        return _read_tensors(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text()).get("weight_map")
        except (json.JSONDecodeError, AttributeError) as err:
            raise ConversionError(f"{index} is not a valid index: {err}.") from err
        if not isinstance(weight_map, dict):
            raise ConversionError(f"{index} has no weight_map.")
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (path / shard).is_file():
                raise ConversionError(f"{index} names shard {shard}, which is missing.")
            state.update(_read_tensors(path / shard))
        return state
    if legacy.is_file():
        return _read_tensors(legacy)
    raise ConversionError(
        f"{path} has no weights: expected {WEIGHTS_NAME}, {WEIGHTS_NAME}.index.json or "
        "pytorch_model.bin."
    )


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        if file.suffix == ".safetensors":
            return load_file(file)
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt file raises library-specific errors
        raise ConversionError(f"{file} could not be read: {err}.") from err


def save_weights(state: dict[str, torch.Tensor], directory: str | Path) -> Path:
    """Write ``state`` as one ``model.safetensors`` (tensors that are views into a larger
    storage are copied, as safetensors stores each tensor on its own)."""
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        t = t.detach()
        owns_storage = t.is_contiguous() and (
            t.untyped_storage().nbytes() == t.numel() * t.element_size()
        )
        out[key] = t if owns_storage else t.contiguous().clone()
    file = Path(directory) / WEIGHTS_NAME
    save_file(out, file, metadata={"format": "pt"})
    return file


def _copy_extra_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in CARRY_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


def _prepare_destination(src: Path, dst: Path, overwrite: bool) -> None:
    if dst.resolve() == src.resolve():
        raise ConversionError(f"destination {dst} is the source directory; choose another.")
    if dst.exists() and not dst.is_dir():
        raise ConversionError(f"destination {dst} exists and is not a directory.")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise ConversionError(
            f"destination {dst} is not empty (pass overwrite=True / --overwrite)."
        )
    dst.mkdir(parents=True, exist_ok=True)


def _dtype_name(raw: dict[str, Any]) -> str | None:
    dtype = raw.get("dtype", raw.get("torch_dtype"))
    return str(dtype).removeprefix("torch.") if dtype is not None else None


# ---------------------------------------------------------------------- configs
def _import_config(
    fmt: CheckpointFormat, raw: dict[str, Any], state: dict[str, torch.Tensor] | None
) -> ModelConfig:
    act = raw.get("hidden_act", "silu")
    name = fmt.name
    require(act == "silu", f"{name} config hidden_act={act!r}: only 'silu' (SwiGLU) is supported.")
    require(
        not raw.get("use_sliding_window", False),
        f"{name} config use_sliding_window=true: sliding-window layers are not supported.",
    )
    return fmt.config_to_ours(raw, state)


def _check_model_type(fmt: CheckpointFormat, raw: dict[str, Any], where: str) -> None:
    model_type = raw.get("model_type")
    if model_type not in fmt.model_types:
        hint = (
            " (a checkpoint of ours? use export, --to)" if model_type == "gated_attention" else ""
        )
        raise ConversionError(
            f"{where}/config.json has model_type={model_type!r}; format {fmt.name!r} expects "
            f"{' or '.join(repr(t) for t in fmt.model_types)}{hint}."
        )


MAPPED_FIELDS = frozenset(SHARED_FIELDS) | {
    "rope_theta",
    "partial_rotary_factor",
    "rope_scaling",
    "qk_norm",
    "norm_type",
    "attention_bias",
    "attention_out_bias",
    "gate",
    "moe",
}
"""``ModelConfig`` fields the exporters translate; any other field must keep its default (a
field added to the core later is refused by name rather than silently dropped)."""


def check_exportable(cfg: ModelConfig, fmt: CheckpointFormat) -> None:
    """Raise for the first field ``fmt`` cannot express."""
    default = ModelConfig()
    for f in dataclasses.fields(ModelConfig):
        value = getattr(cfg, f.name)
        require(
            f.name in MAPPED_FIELDS or value == getattr(default, f.name),
            f"{f.name}={value!r} cannot be exported to {fmt.name}: the format has no equivalent.",
        )
    fmt.check_exportable(cfg)


# ---------------------------------------------------------------------- state dicts
def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a ``GatedAttentionForCausalLM`` checkpoint of ``cfg`` holds, with its shape
    (``lm_head.weight`` omitted when tied, as ``save_pretrained`` writes it)."""
    meta = GatedLM(cfg, device="meta")
    shapes = {k: tuple(v.shape) for k, v in gated_lm_state_to_hf(meta.state_dict()).items()}
    if cfg.tie_word_embeddings:
        shapes.pop("lm_head.weight")
    return shapes


def _check_state(
    state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], what: str
) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s), e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s), e.g. {', '.join(unexpected[:3])}")
    if wrong:
        problems.append(
            "shape mismatch: "
            + "; ".join(
                f"{k} is {tuple(state[k].shape)}, expected {expected[k]}" for k in wrong[:3]
            )
        )
    if problems:
        raise ConversionError(f"{what} does not match its config: " + "; ".join(problems) + ".")


def import_state(
    fmt: str, cfg: ModelConfig, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A ``fmt`` state dict -> ours (``GatedAttentionForCausalLM`` keys), checked against
    ``cfg``'s shapes. ``cfg`` is the config the format's ``config_to_ours`` returned."""
    form = get_format(fmt)
    out: dict[str, torch.Tensor] = {}
    attn: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, t in per_expert_weights(state).items():
        m = _ATTN_KEY.match(key)
        if m and m.group(2) != "qkv_proj":
            attn.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = t
        elif not key.startswith(form.ignored_prefixes):
            out[key] = t
    for (layer, kind), parts in sorted(attn.items()):
        prefix = f"model.layers.{layer}.self_attn"
        missing = [p for p in ("q_proj", "k_proj", "v_proj") if p not in parts]
        if missing:
            raise ConversionError(f"{fmt} checkpoint lacks {prefix}.{missing[0]}.{kind}.")
        try:
            q, g = form.split_q(cfg, parts["q_proj"])
        except ValueError as err:
            raise ConversionError(
                f"{fmt} checkpoint {prefix}.q_proj.{kind}: {err} Check the config's heads, "
                "head_dim and gate flags."
            ) from err
        out[f"{prefix}.qkv_proj.{kind}"] = torch.cat((q, parts["k_proj"], parts["v_proj"], g))
    if cfg.tie_word_embeddings:
        out.pop("lm_head.weight", None)  # tied: transformers ignores a stored copy
    _check_state(out, expected_shapes(cfg), f"{fmt} checkpoint")
    return out


def per_expert_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with ``transformers``' in-memory fused expert tensors (``experts.gate_up_proj``
    ``(E, 2I, H)``, ``experts.down_proj`` ``(E, H, I)``) split into the per-expert
    ``experts.{e}.{gate,up,down}_proj.weight`` tensors its checkpoints (and ours) hold."""
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        m = _FUSED_EXPERTS.match(key)
        if m is None:
            out[key] = t
            continue
        prefix = m.group(1)
        for e, w in enumerate(t.unbind(0)):
            if m.group(2) == "down_proj":
                out[f"{prefix}.{e}.down_proj.weight"] = w
            else:
                gate, up = w.chunk(2, dim=0)
                out[f"{prefix}.{e}.gate_proj.weight"] = gate
                out[f"{prefix}.{e}.up_proj.weight"] = up
    return out


def export_state(
    fmt: str, cfg: ModelConfig, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Our state dict (``GatedAttentionForCausalLM`` keys) -> ``fmt`` keys and layout."""
    form = get_format(fmt)
    check_exportable(cfg, form)
    _check_state(
        {k: v for k, v in state.items() if not (cfg.tie_word_embeddings and k == "lm_head.weight")},
        expected_shapes(cfg),
        "our checkpoint",
    )
    sizes = [cfg.q_size, cfg.kv_size, cfg.kv_size, cfg.gate_size]
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        m = _ATTN_KEY.match(key)
        if cfg.tie_word_embeddings and key == "lm_head.weight":
            continue
        if not m:
            out[key] = t
            continue
        prefix, kind = f"model.layers.{m.group(1)}.self_attn", m.group(3)
        q, k, v, g = t.split(sizes)
        out[f"{prefix}.q_proj.{kind}"] = form.merge_q(cfg, q, g)
        out[f"{prefix}.k_proj.{kind}"] = k
        out[f"{prefix}.v_proj.{kind}"] = v
    return out


# ---------------------------------------------------------------------- directories
def import_checkpoint(
    fmt: str, src: str | Path, dst: str | Path, overwrite: bool = False
) -> GatedAttentionConfig:
    """Convert the ``fmt`` checkpoint directory ``src`` into our format in ``dst``.

    Writes ``config.json`` (``model_type = "gated_attention"``), ``model.safetensors`` and any
    tokenizer / generation-config files found in ``src``; returns the written config.
    """
    form = get_format(fmt)
    src, dst = Path(src), Path(dst)
    raw = read_config(src)
    _check_model_type(form, raw, str(src))
    _import_config(form, raw, None)  # config errors first, before reading any weights
    state = load_weights(src)
    cfg = _import_config(form, raw, state)
    ours = import_state(fmt, cfg, state)
    extras = {k: raw.get(k) for k in TOKEN_FIELDS}
    config = GatedAttentionConfig.from_model_config(
        cfg, **extras, dtype=_dtype_name(raw), architectures=["GatedAttentionForCausalLM"]
    )
    _prepare_destination(src, dst, overwrite)
    config.save_pretrained(dst)
    save_weights(ours, dst)
    copied = _copy_extra_files(src, dst)
    log.info(
        "imported %s checkpoint %s -> %s (copied: %s)", fmt, src, dst, ", ".join(copied) or "-"
    )
    return config


def export_checkpoint(
    fmt: str, src: str | Path, dst: str | Path, overwrite: bool = False
) -> dict[str, Any]:
    """Convert our checkpoint directory ``src`` into the ``fmt`` format in ``dst``; returns the
    written ``config.json`` as a dict."""
    form = get_format(fmt)
    src, dst = Path(src), Path(dst)
    raw = read_config(src)
    if raw.get("model_type") != GatedAttentionConfig.model_type:
        raise ConversionError(
            f"{src}/config.json has model_type={raw.get('model_type')!r}; export needs one of ours "
            f"({GatedAttentionConfig.model_type!r}); to read a {fmt} checkpoint use import (--from)."
        )
    config = GatedAttentionConfig.from_dict(raw)
    cfg = config.to_model_config()
    extras = {**{k: getattr(config, k, None) for k in TOKEN_FIELDS}, "dtype": _dtype_name(raw)}
    if cfg.gate.enabled and cfg.gate.fp32:
        log.info(
            "gate.fp32=True: the %s format computes the gate sigmoid in the model dtype; outputs "
            "differ by rounding below float32.",
            fmt,
        )
    check_exportable(cfg, form)
    foreign = form.config_from_ours(cfg, extras)
    state = export_state(fmt, cfg, load_weights(src))
    _prepare_destination(src, dst, overwrite)
    if isinstance(foreign, dict):
        (dst / "config.json").write_text(json.dumps(foreign, indent=2, sort_keys=True) + "\n")
    else:
        foreign.save_pretrained(dst)
    save_weights(state, dst)
    copied = _copy_extra_files(src, dst)
    log.info(
        "exported %s -> %s checkpoint %s (copied: %s)", src, fmt, dst, ", ".join(copied) or "-"
    )
    return read_config(dst)
