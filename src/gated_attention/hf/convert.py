"""Checkpoint converters between our ``transformers`` format and three foreign formats.

``import_checkpoint(fmt, src, dst)`` turns a ``fmt`` checkpoint directory into one that
``AutoModelForCausalLM.from_pretrained`` loads as :class:`GatedAttentionForCausalLM`;
``export_checkpoint(fmt, src, dst)`` does the reverse. Formats (PAPER.md section 5, index formulas
in ``gated_attention.hf.layouts`` and ``docs/layouts.md``):

``paper``
    The paper's released models (Qwen3 architecture, ``model_type`` ``qwen3`` or ``qwen2``): the
    G1 output gate folded into ``q_proj`` grouped per KV head, config flags
    ``headwise_attn_output_gate`` / ``elementwise_attn_output_gate`` (at most one true),
    ``qkv_bias`` (bias on q/k/v including the gate rows, none on ``o_proj``), ``use_qk_norm``
    (plain RMSNorm), sigmoid in the model dtype (``GateConfig.fp32=False``).
``qwen3``
    ``transformers`` ``Qwen3ForCausalLM``: no gate; its ``attention_bias`` puts a bias on q, k, v
    *and* ``o_proj`` (our ``attention_bias`` + ``attention_out_bias``).
``qwen3-next``
    ``transformers`` ``Qwen3NextForCausalLM`` restricted to what our model expresses: every
    ``layer_types`` entry ``full_attention`` (no Gated DeltaNet layers) and a dense MLP in every
    layer (``num_experts=0``, or every layer in ``mlp_only_layers`` / off the
    ``decoder_sparse_step`` grid). ``q_proj`` is per head ``[q_h | gate_h]`` (elementwise G1
    gate), zero-centred RMSNorm ``x_hat * (1 + w)`` for QK-norm and block norms, partial NeoX RoPE.

All other tensors share Hugging Face names in every format (``model.embed_tokens``,
``model.layers.{i}.input_layernorm`` ...); only ``q_proj``/``k_proj``/``v_proj`` <-> our fused
``qkv_proj`` changes, by moving row blocks (bit-exact). Anything a target format cannot express
raises :class:`ConversionError` naming the offending field. Tokenizer files and
``generation_config.json`` are copied along.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gated_attention.config import GateConfig, ModelConfig
from gated_attention.model import GatedLM
from gated_attention.ops.rope import ROPE_TYPES

from .configuration import GatedAttentionConfig
from .layouts import (
    merge_paper_q_proj,
    merge_qwen3_next_q_proj,
    split_paper_q_proj,
    split_qwen3_next_q_proj,
)
from .modeling import gated_lm_state_to_hf

__all__ = [
    "CARRY_FILES",
    "FORMATS",
    "ConversionError",
    "expected_shapes",
    "export_checkpoint",
    "export_state",
    "import_checkpoint",
    "import_state",
    "load_weights",
    "paper_config_from_ours",
    "paper_config_to_ours",
    "qwen3_config_to_ours",
    "qwen3_next_config_to_ours",
    "read_config",
    "save_weights",
]

log = logging.getLogger(__name__)

FORMATS = ("paper", "qwen3", "qwen3-next")
MODEL_TYPES: dict[str, tuple[str, ...]] = {
    "paper": ("qwen3", "qwen2"),
    "qwen3": ("qwen3",),
    "qwen3-next": ("qwen3_next",),
}
"""``model_type`` values each importer accepts in ``config.json``."""

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
_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


class ConversionError(ValueError):
    """A checkpoint that cannot be read or converted; the message names the file or field."""


# ---------------------------------------------------------------------- files
def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}.")


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


# ---------------------------------------------------------------------- RoPE parameters
def _rope_from_hf(params: dict[str, Any] | None, where: str) -> tuple[float, float, dict | None]:
    """(rope_theta, partial_rotary_factor, rope_scaling) from a ``transformers`` 5.x
    ``rope_parameters`` dict."""
    params = dict(params or {})
    theta = float(params.pop("rope_theta", 10000.0))
    partial = float(params.pop("partial_rotary_factor", 1.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, partial, None
    if rope_type not in ROPE_TYPES or rope_type == "ntk":
        raise ConversionError(
            f"{where}.rope_type={rope_type!r} is not supported; supported: default, linear, "
            "dynamic, yarn."
        )
    return theta, partial, params


def _rope_to_hf(cfg: ModelConfig, target: str, with_partial: bool) -> dict[str, Any]:
    scaling = dict(cfg.rope_scaling or {})
    rope_type = scaling.pop("rope_type", scaling.pop("type", "default"))
    if rope_type == "ntk":
        raise ConversionError(
            f"rope_scaling.rope_type='ntk' has no {target} equivalent; use linear, dynamic or yarn."
        )
    params: dict[str, Any] = {"rope_type": rope_type, "rope_theta": cfg.rope_theta, **scaling}
    if with_partial:
        params["partial_rotary_factor"] = cfg.partial_rotary_factor
    return params


# ---------------------------------------------------------------------- configs: import
def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConversionError(message)


def _check_model_type(fmt: str, raw: dict[str, Any], where: str) -> None:
    model_type = raw.get("model_type")
    allowed = MODEL_TYPES[fmt]
    if model_type not in allowed:
        hint = (
            " (a checkpoint of ours? use export, --to)" if model_type == "gated_attention" else ""
        )
        raise ConversionError(
            f"{where}/config.json has model_type={model_type!r}; format {fmt!r} expects "
            f"{' or '.join(repr(t) for t in allowed)}{hint}."
        )


def _common_checks(raw: dict[str, Any], fmt: str) -> None:
    act = raw.get("hidden_act", "silu")
    _require(act == "silu", f"{fmt} config hidden_act={act!r}: only 'silu' (SwiGLU) is supported.")
    _require(
        not raw.get("use_sliding_window", False),
        f"{fmt} config use_sliding_window=true: sliding-window layers are not supported.",
    )


def paper_config_to_ours(raw: dict[str, Any], has_qk_norm: bool | None = None) -> ModelConfig:
    """Our config for a paper-release ``config.json`` (``has_qk_norm``: whether the weights hold
    ``q_norm``; used when the config has no ``use_qk_norm`` flag)."""
    _common_checks(raw, "paper")
    headwise = bool(raw.get("headwise_attn_output_gate", False))
    elementwise = bool(raw.get("elementwise_attn_output_gate", False))
    if headwise and elementwise:
        raise ConversionError(
            "paper config has both headwise_attn_output_gate and elementwise_attn_output_gate "
            "true; at most one may be (the paper's code would silently pick headwise)."
        )
    required = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
    )
    for key in required:
        _require(key in raw, f"paper config.json lacks {key!r}.")
    if headwise or elementwise:
        gate = GateConfig(
            position="sdpa", granularity="headwise" if headwise else "elementwise", fp32=False
        )
    else:
        gate = GateConfig()
    params = raw.get("rope_parameters")
    if params is None:  # released configs use the 4.x keys
        scaling = raw.get("rope_scaling")
        params = {**(scaling or {}), "rope_theta": raw.get("rope_theta", 10000.0)}
    theta, partial, scaling = _rope_from_hf(params, "paper config rope_scaling")
    use_qk_norm = raw.get("use_qk_norm", True if has_qk_norm is None else has_qk_norm)
    heads = raw["num_attention_heads"]
    return ModelConfig(
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        num_hidden_layers=raw["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        intermediate_size=raw["intermediate_size"],
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        partial_rotary_factor=partial,
        rope_scaling=scaling,
        max_position_embeddings=raw.get("max_position_embeddings", 4096),
        qk_norm="rms" if use_qk_norm else "none",
        norm_type="rms",
        attention_bias=bool(raw.get("qkv_bias", False)),
        attention_out_bias=False,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        initializer_range=raw.get("initializer_range", 0.02),
        gate=gate,
    )


def qwen3_config_to_ours(raw: dict[str, Any]) -> ModelConfig:
    """Our config (no gate) for a ``transformers`` ``Qwen3Config`` ``config.json``."""
    from transformers import Qwen3Config

    _common_checks(raw, "qwen3")
    c = Qwen3Config.from_dict(raw)
    for i, layer_type in enumerate(c.layer_types):
        _require(
            layer_type == "full_attention",
            f"qwen3 config layer_types[{i}]={layer_type!r}: only full_attention layers are "
            "supported.",
        )
    theta, partial, scaling = _rope_from_hf(c.rope_parameters, "qwen3 config rope_parameters")
    return ModelConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        intermediate_size=c.intermediate_size,
        rms_norm_eps=c.rms_norm_eps,
        rope_theta=theta,
        partial_rotary_factor=partial,
        rope_scaling=scaling,
        max_position_embeddings=c.max_position_embeddings,
        qk_norm="rms",
        norm_type="rms",
        attention_bias=c.attention_bias,
        attention_out_bias=c.attention_bias,
        tie_word_embeddings=c.tie_word_embeddings,
        initializer_range=c.initializer_range,
        gate="none",
    )


def qwen3_next_config_to_ours(raw: dict[str, Any]) -> ModelConfig:
    """Our config for a dense, all-full-attention ``Qwen3NextConfig`` ``config.json``."""
    from transformers import Qwen3NextConfig

    _common_checks(raw, "qwen3-next")
    c = Qwen3NextConfig.from_dict(raw)
    for i, layer_type in enumerate(c.layer_types):
        _require(
            layer_type == "full_attention",
            f"qwen3-next config layer_types[{i}]={layer_type!r}: only full_attention layers are "
            "supported (Gated DeltaNet layers have no equivalent here).",
        )
    for i in range(c.num_hidden_layers):
        sparse = (
            i not in c.mlp_only_layers
            and c.num_experts > 0
            and (i + 1) % c.decoder_sparse_step == 0
        )
        _require(
            not sparse,
            f"qwen3-next config num_experts={c.num_experts} makes layer {i} a sparse MoE block "
            "(its sigmoid-gated shared expert differs from ours); only dense MLPs are supported: "
            "num_experts=0, or every layer in mlp_only_layers.",
        )
    theta, partial, scaling = _rope_from_hf(c.rope_parameters, "qwen3-next config rope_parameters")
    return ModelConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        intermediate_size=c.intermediate_size,
        rms_norm_eps=c.rms_norm_eps,
        rope_theta=theta,
        partial_rotary_factor=partial,
        rope_scaling=scaling,
        max_position_embeddings=c.max_position_embeddings,
        qk_norm="zero_centered",
        norm_type="zero_centered",
        attention_bias=c.attention_bias,
        attention_out_bias=c.attention_bias,
        tie_word_embeddings=c.tie_word_embeddings,
        initializer_range=c.initializer_range,
        gate=GateConfig(position="sdpa", granularity="elementwise", fp32=False),
    )


# ---------------------------------------------------------------------- configs: export
def _gate_is_output_sigmoid(gate: GateConfig) -> bool:
    """True for a plain G1 gate ``Y * sigmoid(X W_g)`` (head-specific, input-dependent)."""
    return (
        gate.position == "sdpa"
        and gate.transform == "gate"
        and gate.mode == "multiplicative"
        and gate.activation == "sigmoid"
        and gate.input_dependent
        and not gate.head_shared
    )


def _describe_gate(gate: GateConfig) -> str:
    """The variant name (``'sdpa-headwise'``, with ``fp32`` noted when off), else the dict."""
    name = dataclasses.replace(gate, fp32=True).name
    if name is None:
        return str(gate.to_dict())
    return repr(name) if gate.fp32 or not gate.enabled else f"{name!r} (fp32=False)"


MAPPED_FIELDS = frozenset(
    {
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "intermediate_size",
        "rms_norm_eps",
        "rope_theta",
        "partial_rotary_factor",
        "rope_scaling",
        "max_position_embeddings",
        "qk_norm",
        "norm_type",
        "attention_bias",
        "attention_out_bias",
        "tie_word_embeddings",
        "initializer_range",
        "gate",
        "moe",
    }
)
"""``ModelConfig`` fields the exporters translate; any other field must keep its default (a
field added to the core later is refused by name rather than silently dropped)."""


def _check_exportable(cfg: ModelConfig, target: str) -> None:
    """Raise for the first field ``target`` cannot express."""
    default = ModelConfig()
    for f in dataclasses.fields(ModelConfig):
        value = getattr(cfg, f.name)
        _require(
            f.name in MAPPED_FIELDS or value == getattr(default, f.name),
            f"{f.name}={value!r} cannot be exported to {target}: the format has no equivalent.",
        )
    gate = cfg.gate
    _require(cfg.moe is None, f"moe={cfg.moe} cannot be exported to {target}: only dense models.")
    if target == "qwen3":
        _require(
            not gate.enabled,
            f"gate={_describe_gate(gate)} cannot be exported to qwen3, which has no attention "
            "gate; the paper format holds G1 sigmoid gates, qwen3-next the elementwise one.",
        )
    elif target == "paper":
        _require(
            not gate.enabled or _gate_is_output_sigmoid(gate),
            f"gate={_describe_gate(gate)} cannot be exported to the paper's format, which holds "
            "only the G1 sigmoid gate (sdpa-elementwise or sdpa-headwise).",
        )
    else:
        _require(
            _gate_is_output_sigmoid(gate) and gate.granularity == "elementwise",
            f"gate={_describe_gate(gate)} cannot be exported to qwen3-next, which holds only an "
            "elementwise G1 sigmoid gate (sdpa-elementwise).",
        )
    norm = "zero_centered" if target == "qwen3-next" else "rms"
    _require(
        cfg.norm_type == norm,
        f"norm_type={cfg.norm_type!r} cannot be exported to {target}, which uses {norm!r} norms.",
    )
    qk_allowed = ("rms", "none") if target == "paper" else (norm,)
    _require(
        cfg.qk_norm in qk_allowed,
        f"qk_norm={cfg.qk_norm!r} cannot be exported to {target}; allowed: "
        f"{', '.join(qk_allowed)}.",
    )
    if target == "paper":
        _require(
            not cfg.attention_out_bias,
            "attention_out_bias=True cannot be exported to the paper's format (no o_proj bias).",
        )
        _require(
            cfg.partial_rotary_factor == 1.0,
            f"partial_rotary_factor={cfg.partial_rotary_factor} cannot be exported to the "
            "paper's format (full RoPE only).",
        )
    else:
        _require(
            cfg.attention_bias == cfg.attention_out_bias,
            f"attention_bias={cfg.attention_bias} with attention_out_bias="
            f"{cfg.attention_out_bias} cannot be exported to {target}, whose single "
            "attention_bias covers q, k, v and o_proj.",
        )
    if target == "qwen3":
        _require(
            cfg.partial_rotary_factor == 1.0,
            f"partial_rotary_factor={cfg.partial_rotary_factor} cannot be exported to qwen3 "
            "(full RoPE only); use qwen3-next.",
        )


def _common_fields(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "initializer_range": cfg.initializer_range,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
    }


def paper_config_from_ours(cfg: ModelConfig, extras: dict[str, Any]) -> dict[str, Any]:
    """A paper-release ``config.json`` dict (``transformers`` 4.x-style keys, as released)."""
    _check_exportable(cfg, "paper")
    scaling = dict(cfg.rope_scaling) if cfg.rope_scaling else None
    data: dict[str, Any] = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        **_common_fields(cfg),
        "rope_theta": cfg.rope_theta,
        "rope_scaling": scaling,
        "attention_bias": False,
        "qkv_bias": cfg.attention_bias,
        "use_qk_norm": cfg.qk_norm == "rms",
        "headwise_attn_output_gate": cfg.gate.enabled and cfg.gate.granularity == "headwise",
        "elementwise_attn_output_gate": cfg.gate.enabled and cfg.gate.granularity == "elementwise",
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "use_cache": True,
    }
    for key in _TOKEN_FIELDS:
        if extras.get(key) is not None:
            data[key] = extras[key]
    if extras.get("dtype") is not None:
        data["torch_dtype"] = extras["dtype"]
    return data


def _hf_config_from_ours(cfg: ModelConfig, target: str, extras: dict[str, Any]) -> Any:
    _check_exportable(cfg, target)
    kwargs: dict[str, Any] = {
        **_common_fields(cfg),
        "attention_bias": cfg.attention_bias,
        **{k: extras.get(k) for k in _TOKEN_FIELDS},
    }
    if extras.get("dtype") is not None:
        kwargs["dtype"] = extras["dtype"]
    if target == "qwen3":
        from transformers import Qwen3Config

        return Qwen3Config(
            **kwargs,
            rope_parameters=_rope_to_hf(cfg, target, with_partial=False),
            use_sliding_window=False,
            architectures=["Qwen3ForCausalLM"],
        )
    from transformers import Qwen3NextConfig

    return Qwen3NextConfig(
        **kwargs,
        rope_parameters=_rope_to_hf(cfg, target, with_partial=True),
        partial_rotary_factor=cfg.partial_rotary_factor,
        layer_types=["full_attention"] * cfg.num_hidden_layers,
        num_experts=0,  # dense SwiGLU MLP in every layer
        mlp_only_layers=[],
        architectures=["Qwen3NextForCausalLM"],
    )


# ---------------------------------------------------------------------- state dicts
SplitQ = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
MergeQ = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _gate_rows_per_head(cfg: ModelConfig) -> int:
    gate = cfg.gate
    if not gate.has_projection:
        return 0
    return 1 if gate.granularity == "headwise" else cfg.head_dim


def _q_split(fmt: str, cfg: ModelConfig) -> SplitQ:
    H, K, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    if fmt == "paper":
        dg = _gate_rows_per_head(cfg)
        return lambda w: split_paper_q_proj(w, H, K, D, dg)
    if fmt == "qwen3-next":
        return lambda w: split_qwen3_next_q_proj(w, H, D)
    return lambda w: (w, w.new_empty((0, *w.shape[1:])))


def _q_merge(fmt: str, cfg: ModelConfig) -> MergeQ:
    H, K, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    if fmt == "paper":
        return lambda q, g: merge_paper_q_proj(q, g, H, K, D)
    if fmt == "qwen3-next":
        return lambda q, g: merge_qwen3_next_q_proj(q, g, H, D)
    return lambda q, g: q


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
    ``cfg``'s shapes. ``cfg`` is the config the ``*_config_to_ours`` function returned."""
    _check_format(fmt)
    split_q = _q_split(fmt, cfg)
    out: dict[str, torch.Tensor] = {}
    attn: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, t in state.items():
        m = _ATTN_KEY.match(key)
        if m and m.group(2) != "qkv_proj":
            attn.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = t
        elif fmt == "qwen3-next" and key.startswith("mtp."):
            continue  # multi-token-prediction head: transformers ignores it too
        else:
            out[key] = t
    for (layer, kind), parts in sorted(attn.items()):
        prefix = f"model.layers.{layer}.self_attn"
        missing = [p for p in ("q_proj", "k_proj", "v_proj") if p not in parts]
        if missing:
            raise ConversionError(f"{fmt} checkpoint lacks {prefix}.{missing[0]}.{kind}.")
        try:
            q, g = split_q(parts["q_proj"])
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


def export_state(
    fmt: str, cfg: ModelConfig, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Our state dict (``GatedAttentionForCausalLM`` keys) -> ``fmt`` keys and layout."""
    _check_format(fmt)
    _check_exportable(cfg, fmt)
    _check_state(
        {k: v for k, v in state.items() if not (cfg.tie_word_embeddings and k == "lm_head.weight")},
        expected_shapes(cfg),
        "our checkpoint",
    )
    merge_q = _q_merge(fmt, cfg)
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
        out[f"{prefix}.q_proj.{kind}"] = merge_q(q, g)
        out[f"{prefix}.k_proj.{kind}"] = k
        out[f"{prefix}.v_proj.{kind}"] = v
    return out


# ---------------------------------------------------------------------- directories
def _import_config(
    fmt: str, raw: dict[str, Any], state: dict[str, torch.Tensor] | None
) -> ModelConfig:
    if fmt == "paper":
        has_qk_norm = (
            None if state is None else any(k.endswith("self_attn.q_norm.weight") for k in state)
        )
        return paper_config_to_ours(raw, has_qk_norm)
    if fmt == "qwen3":
        return qwen3_config_to_ours(raw)
    return qwen3_next_config_to_ours(raw)


def import_checkpoint(
    fmt: str, src: str | Path, dst: str | Path, overwrite: bool = False
) -> GatedAttentionConfig:
    """Convert the ``fmt`` checkpoint directory ``src`` into our format in ``dst``.

    Writes ``config.json`` (``model_type = "gated_attention"``), ``model.safetensors`` and any
    tokenizer / generation-config files found in ``src``; returns the written config.
    """
    _check_format(fmt)
    src, dst = Path(src), Path(dst)
    raw = read_config(src)
    _check_model_type(fmt, raw, str(src))
    _import_config(fmt, raw, None)  # config errors first, before reading any weights
    state = load_weights(src)
    cfg = _import_config(fmt, raw, state)
    ours = import_state(fmt, cfg, state)
    extras = {k: raw.get(k) for k in _TOKEN_FIELDS}
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
    _check_format(fmt)
    src, dst = Path(src), Path(dst)
    raw = read_config(src)
    if raw.get("model_type") != GatedAttentionConfig.model_type:
        raise ConversionError(
            f"{src}/config.json has model_type={raw.get('model_type')!r}; export needs one of ours "
            f"({GatedAttentionConfig.model_type!r}); to read a {fmt} checkpoint use import (--from)."
        )
    config = GatedAttentionConfig.from_dict(raw)
    cfg = config.to_model_config()
    extras = {k: getattr(config, k, None) for k in _TOKEN_FIELDS}
    extras["dtype"] = _dtype_name(raw)
    if cfg.gate.enabled and cfg.gate.fp32:
        log.info(
            "gate.fp32=True: the %s format computes the gate sigmoid in the model dtype; outputs "
            "differ by rounding below float32.",
            fmt,
        )
    foreign_config = (
        paper_config_from_ours(cfg, extras)
        if fmt == "paper"
        else _hf_config_from_ours(cfg, fmt, extras)
    )
    state = export_state(fmt, cfg, load_weights(src))
    _prepare_destination(src, dst, overwrite)
    if isinstance(foreign_config, dict):
        (dst / "config.json").write_text(
            json.dumps(foreign_config, indent=2, sort_keys=True) + "\n"
        )
        written = foreign_config
    else:
        foreign_config.save_pretrained(dst)
        written = read_config(dst)
    save_weights(state, dst)
    copied = _copy_extra_files(src, dst)
    log.info(
        "exported %s -> %s checkpoint %s (copied: %s)", src, fmt, dst, ", ".join(copied) or "-"
    )
    return written
