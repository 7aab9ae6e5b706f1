"""``gated-attention analyze PATH``: sinks, massive activations and gate statistics of a
checkpoint of ours (a run directory, a checkpoint or a saved model) or of a local Hugging Face
model directory, written as JSON plus plots."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

log = logging.getLogger("gated_attention.analysis")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="run dir / checkpoint of ours, or a local HF model dir")
    parser.add_argument("--out", help="output directory (default PATH/analysis)")
    parser.add_argument(
        "--text",
        help="a text file to analyse (default: the run's validation "
        "data, else the cached default corpus)",
    )
    parser.add_argument(
        "--seq-len", type=int, default=0, help="tokens per sequence (default: the run's, else 256)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eps", type=float, default=0.3, help="sink-rate threshold")
    parser.add_argument("--device", default="cpu")


HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")


def _is_ours(path: Path) -> bool:
    return (
        (path / "model_config.json").exists()
        or (path / "final" / "model_config.json").exists()
        or (path / "checkpoints").is_dir()
    )


def _windows(ids: list[int], seq_len: int, batch: int, bos: int | None) -> torch.Tensor:
    step = seq_len - (1 if bos is not None else 0)
    rows = []
    for start in range(0, len(ids) - step, step):
        chunk = ids[start : start + step]
        rows.append(([bos] if bos is not None else []) + chunk)
        if len(rows) == batch:
            break
    if not rows:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one window of {seq_len}")
    return torch.tensor(rows)


def _stream_ids(path: Path, tokenizer, needed: int) -> list[int]:
    """Token ids of the start of text file ``path``: reads a prefix that should hold ``needed``
    tokens and doubles it until it does or the file ends, so a large file is never read whole."""
    size = max(4096, 8 * needed)
    with open(path, encoding="utf-8", errors="replace") as handle:
        text = ""
        while True:
            chunk = handle.read(size - len(text))
            text += chunk
            ids = tokenizer(text)["input_ids"]
            if len(ids) > needed or not chunk:
                return ids
            size *= 2


def _text_ids(args: argparse.Namespace, tokenizer, seq_len: int, bos: int | None) -> torch.Tensor:
    if len(tokenizer) == 0:
        raise ValueError(f"the tokenizer of {args.path} has an empty vocabulary; use its real one")
    if args.text:
        # one more token than the windows use, so the last window is complete
        ids = _stream_ids(Path(args.text), tokenizer, seq_len * args.batch_size + 1)
    else:
        from gated_attention.data import load_documents, prepare_corpus

        ids = tokenizer("\n\n".join(load_documents(prepare_corpus())[-200:]))["input_ids"]
    return _windows(ids, seq_len, args.batch_size, bos)


def _check_args(args: argparse.Namespace) -> tuple[Path, Path]:
    """Refuse bad arguments and an unusable ``--out`` before any work; returns (path, out)."""
    from gated_attention.train.config import resolve_device
    from gated_attention.train.lock import check_writable

    if not 0 < args.eps < 1:
        raise ValueError(f"--eps must be in (0, 1) (a share of attention), got {args.eps}")
    if args.seq_len and args.seq_len < 2:
        raise ValueError(f"--seq-len must be at least 2 tokens, got {args.seq_len}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    resolve_device(args.device, "--device")
    path = Path(args.path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is a file; pass a run directory, checkpoint or model directory")
    if args.text:
        text = Path(args.text)
        if not text.is_file():
            what = "is a directory" if text.is_dir() else "does not exist"
            raise ValueError(f"--text {text} {what}; give a text file")
    out = Path(args.out) if args.out else path / "analysis"
    check_writable(out)
    return path, out


def _check_ids(ids: torch.Tensor, vocab_size: int, max_positions: int, where: str) -> None:
    if ids.shape[1] > max_positions:
        raise ValueError(
            f"--seq-len {ids.shape[1]} exceeds the model's max_position_embeddings="
            f"{max_positions}; pass --seq-len {max_positions} or less"
        )
    top = int(ids.max())
    if top >= vocab_size:
        raise ValueError(
            f"the tokenizer of {where} produces token id {top}, beyond the model's vocabulary "
            f"of {vocab_size}; use the tokenizer the model was trained with"
        )


def run(args: argparse.Namespace) -> int:
    from gated_attention.train.lock import RunLock

    path, out = _check_args(args)
    with RunLock(out):
        return _analyze(args, path, out)


def _analyze(args: argparse.Namespace, path: Path, out: Path) -> int:
    from gated_attention.analysis import analyze_captured, collect_hf
    from gated_attention.analysis.plots import (
        plot_first_token_mass,
        plot_gate_histograms,
        plot_max_activation,
    )

    if _is_ours(path):
        from gated_attention.analysis.probe import capture_model
        from gated_attention.train import load_model

        model = load_model(path, args.device).eval()
        cfg_file = path / "config.json"
        seq_len = args.seq_len
        if seq_len > model.cfg.max_position_embeddings:
            raise ValueError(
                f"--seq-len {seq_len} exceeds the model's max_position_embeddings="
                f"{model.cfg.max_position_embeddings}; pass a smaller --seq-len"
            )
        if cfg_file.exists() and not args.text:
            from gated_attention.train.config import RunConfig
            from gated_attention.train.datasets import build_data

            run_cfg = RunConfig.from_dict(json.loads(cfg_file.read_text()))
            if seq_len:
                run_cfg.data.seq_len = seq_len
            data = build_data(run_cfg.data)
            ids = next(iter(data.val.iter_eval_batches(args.batch_size, 1)))[0]
            mask = data.task.trigger_mask(ids) if data.task is not None else None
        else:
            from gated_attention.data import load_tokenizer

            tok_path = path / "tokenizer.json"
            if not tok_path.exists():
                raise ValueError(f"{path} has no tokenizer.json; pass a run directory")
            tok = load_tokenizer(tok_path)
            ids, mask = _text_ids(args, tok, seq_len or 256, tok.bos_token_id), None
        _check_ids(ids, model.cfg.vocab_size, model.cfg.max_position_embeddings, str(path))
        captured = capture_model(model, ids.to(args.device), query_mask=mask)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from gated_attention.train.checkpoint import check_safetensors

        if not (path / "config.json").exists():
            raise ValueError(f"{path} is neither a run/checkpoint of ours nor a HF model directory")
        if not any((path / f).exists() for f in HF_TOKENIZER_FILES):
            raise ValueError(
                f"{path} has no tokenizer ({', '.join(HF_TOKENIZER_FILES)}); copy the model's "
                "tokenizer files into it"
            )
        check_safetensors(path)
        import gated_attention.hf  # noqa: F401 - registers our model type with the Auto classes

        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
        tok = AutoTokenizer.from_pretrained(path)
        ids = _text_ids(args, tok, args.seq_len or 256, tok.bos_token_id)
        _check_ids(
            ids,
            model.get_input_embeddings().num_embeddings,
            getattr(model.config, "max_position_embeddings", 1 << 30),
            str(path),
        )
        captured = collect_hf(model, ids.to(model.device))
    report = analyze_captured(captured, eps=args.eps)
    out.mkdir(parents=True, exist_ok=True)
    data = report.to_dict()
    (out / "analysis.json").write_text(json.dumps(data, indent=1))
    plot_first_token_mass(data, out / "first_token_mass.png", floor=report.first_token_mass.floor)
    plot_max_activation(data, out / "max_activation.png")
    if report.gates is not None:
        plot_gate_histograms(data, out / "gate_histogram.png")
    print(json.dumps({"out": str(out), **report.summary()}, indent=1))
    return 0
