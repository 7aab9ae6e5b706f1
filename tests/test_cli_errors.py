"""Every bad input and fault ends in one clear line (exit 2), and no run, study or cache is lost.

The table below runs each case in-process through ``gated_attention.cli.main(argv)`` and asserts
the exit code, exactly one line on stderr, no traceback, and the file or key named in it. Faults
that need a second process (locks held by a live process, signals, a file size limit) run the
CLI as a subprocess.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from gated_attention.cli import main

ROOT = Path(__file__).resolve().parents[1]

TOML = """
seed = 0
out_dir = "{out}"

[model]
preset = "tiny"
hidden_size = 32
num_hidden_layers = 1
num_attention_heads = 2
num_key_value_heads = 1
head_dim = 16
intermediate_size = 48

[data]
kind = "backcopy"
seq_len = 16
vocab_size = 32

[train]
steps = {steps}
batch_size = 4
warmup_steps = 1
eval_every = 2
eval_batches = 1
ckpt_every = {ckpt_every}
progress = false
"""


def write_config(
    path: Path, out: Path, steps: int = 4, ckpt_every: int = 2, extra: str = ""
) -> Path:
    path.write_text(TOML.format(out=out, steps=steps, ckpt_every=ckpt_every) + extra)
    return path


# ----------------------------------------------------------------------------- shared fixtures


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """One tiny trained run (checkpoints at steps 2 and 4, ``final/``), its HF export, a
    trained byte-level tokenizer, a text file and a finished "study" directory."""
    root = tmp_path_factory.mktemp("shared")
    cfg = write_config(root / "run.toml", root / "run")
    assert main(["train", "--config", str(cfg)]) == 0
    assert main(["export", str(root / "run"), str(root / "hf")]) == 0
    from gated_attention.data.tokenizer import train_tokenizer

    words = " ".join(f"w{i} x{i % 7} y{i % 13}" for i in range(400))
    train_tokenizer([words] * 20, 300, out_dir=root / "tok", min_frequency=1)
    (root / "text.txt").write_text(words * 4)
    study = root / "study"
    (study / "task" / "arm" / "seed0").mkdir(parents=True)
    (study / "task" / "arm" / "seed0" / "record.json").write_text('{"status": "ok"}')
    (study / "report.md").write_text("# report\n")
    shutil.copytree(root / "hf", root / "hf_tok")
    shutil.copy(root / "tok" / "tokenizer.json", root / "hf_tok" / "tokenizer.json")
    return {
        "root": root,
        "cfg": cfg,
        "run": root / "run",
        "hf": root / "hf",
        "hf_tok": root / "hf_tok",
        "tok": root / "tok" / "tokenizer.json",
        "text": root / "text.txt",
        "study": study,
    }


@dataclass
class Ctx:
    """What a case builds its arguments from: ``tmp`` is the case's own directory."""

    tmp: Path
    shared: dict[str, Path]

    def __getattr__(self, name: str) -> Path:
        try:
            return self.shared[name]
        except KeyError:
            raise AttributeError(name) from None

    def config(self, extra: str = "", replace: tuple[str, str] | None = None) -> str:
        path = write_config(self.tmp / "c.toml", self.tmp / "out", extra=extra)
        if replace is not None:
            path.write_text(path.read_text().replace(*replace))
        return str(path)

    def file(self, name: str = "afile", text: str = "x") -> str:
        (self.tmp / name).write_text(text)
        return str(self.tmp / name)

    def copy_run(self, name: str = "run") -> Path:
        dst = self.tmp / name
        shutil.copytree(self.run, dst, ignore=shutil.ignore_patterns(".lock", "evals", "analysis"))
        return dst

    def truncated(self, src: Path, name: str) -> Path:
        dst = self.tmp / name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
        weights = dst / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return dst

    def hold_lock(self, directory: Path) -> str:
        """Start a process that holds ``directory``'s run lock; returns its PID."""
        directory.mkdir(parents=True, exist_ok=True)
        code = (
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, str(os.getpid()).encode())\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(directory / ".lock")], stdout=subprocess.PIPE
        )
        assert proc.stdout.readline().strip() == b"held"
        _HOLDERS.append(proc)
        return str(proc.pid)


_HOLDERS: list[subprocess.Popen] = []


@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]
    names: Callable[[Ctx], str] | str | None = None
    """Text the error line must contain (the file, key or value at fault)."""
    code: int = 2
    skip: str | None = None


def _truncated_run(c: Ctx) -> Path:
    run = c.copy_run()
    weights = run / "final" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return run


def _corrupt_metrics(c: Ctx) -> Path:
    run = c.copy_run()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[0] = lines[0][:10]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def _invalid_checkpoints(c: Ctx) -> Path:
    run = c.copy_run()
    for step in (run / "checkpoints").glob("step_*"):
        (step / "trainer_state.json").write_text("{}")
    return run


def _hf_with_tokenizer(c: Ctx, truncate: bool) -> Path:
    dst = c.truncated(c.hf, "hf") if truncate else c.tmp / "hf"
    if not truncate:
        shutil.copytree(c.hf, dst)
    shutil.copy(c.tok, dst / "tokenizer.json")
    return dst


def _run_with_tokenizer(c: Ctx) -> Path:
    run = c.copy_run()
    shutil.copy(c.tok, run / "tokenizer.json")
    (run / "config.json").unlink()
    return run


def _empty_vocab_run(c: Ctx) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    run = c.copy_run()
    (run / "config.json").unlink()
    Tokenizer(WordLevel({}, unk_token=None)).save(str(run / "tokenizer.json"))
    return run


def _shard_set(c: Ctx, corrupt: bool) -> Path:
    docs = c.tmp / "docs.txt"
    docs.write_text("\n\n".join(f"document {i} " + "words " * (i % 9 + 3) for i in range(60)))
    out = c.tmp / "shards"
    argv = ["data", "prepare", "--input", str(docs), "--tokenizer", str(c.tok)]
    assert main([*argv, "--out", str(out), "--cache-dir", str(c.tmp / "cache")]) == 0
    if corrupt:
        shard = next(out.glob("shard-*.bin"))
        raw = bytearray(shard.read_bytes())
        raw[0] ^= 0xFF
        shard.write_bytes(bytes(raw))
    return out


NO_CUDA = "CUDA is available here" if torch.cuda.is_available() else None

CASES: list[Case] = [
    # ------------------------------------------------------------------ train: config files
    Case(
        "train-config-missing", lambda c: ["train", "--config", str(c.tmp / "no.toml")], "no.toml"
    ),
    Case("train-config-dir", lambda c: ["train", "--config", str(c.tmp)], "is a directory"),
    Case(
        "train-config-not-toml",
        lambda c: ["train", "--config", c.file("b.toml", "x = = 1")],
        "b.toml",
    ),
    Case(
        "train-steps-float-set",
        lambda c: ["train", "--config", c.config(), "--set", "train.steps=2.5"],
        "train.steps",
    ),
    Case(
        "train-batch-float-file",
        lambda c: ["train", "--config", c.config(replace=("batch_size = 4", "batch_size = 8.0"))],
        "train.batch_size",
    ),
    Case(
        "train-eps-string",
        lambda c: ["train", "--config", c.config(), "--set", 'model.rms_norm_eps="abc"'],
        "model.rms_norm_eps",
    ),
    Case(
        "train-set-section-train",
        lambda c: ["train", "--config", c.config(), "--set", "train=3"],
        "[train]",
    ),
    Case(
        "train-set-section-model",
        lambda c: ["train", "--config", c.config(), "--set", "model=3"],
        "[model]",
    ),
    Case(
        "train-set-section-data",
        lambda c: ["train", "--config", c.config(), "--set", "data=3"],
        "[data]",
    ),
    Case(
        "train-set-section-distributed",
        lambda c: ["train", "--set", "distributed=1"],
        "[distributed]",
    ),
    Case(
        "train-set-no-equals",
        lambda c: ["train", "--config", c.config(), "--set", "train.steps"],
        "train.steps",
    ),
    Case(
        "train-set-under-value",
        lambda c: ["train", "--config", c.config(), "--set", "seed.x=1"],
        "seed",
    ),
    Case(
        "train-device-cuda",
        lambda c: ["train", "--config", c.config(), "--set", 'train.device="cuda"'],
        "train.device",
        skip=NO_CUDA,
    ),
    Case(
        "train-device-bogus",
        lambda c: ["train", "--config", c.config(), "--set", "train.device=bogus"],
        "train.device",
    ),
    Case(
        "train-device-cuda-index",
        lambda c: ["train", "--config", c.config(), "--set", 'train.device="cuda:x"'],
        "train.device",
    ),
    Case(
        "train-unknown-key",
        lambda c: ["train", "--config", c.config(), "--set", "train.stepz=3"],
        "train.stepz",
    ),
    Case(
        "train-unknown-top-key",
        lambda c: ["train", "--config", c.config(), "--set", "sed=3"],
        "sed",
    ),
    Case(
        "train-steps-zero",
        lambda c: ["train", "--config", c.config(), "--set", "train.steps=0"],
        "train.steps",
    ),
    Case(
        "train-steps-negative",
        lambda c: ["train", "--config", c.config(), "--set", "train.steps=-1"],
        "train.steps",
    ),
    Case(
        "train-steps-bool",
        lambda c: ["train", "--config", c.config(), "--set", "train.steps=true"],
        "train.steps",
    ),
    Case(
        "train-seed-string",
        lambda c: ["train", "--config", c.config(), "--set", 'seed="x"'],
        "seed",
    ),
    Case(
        "train-lr-string",
        lambda c: ["train", "--config", c.config(), "--set", "train.lr=fast"],
        "train.lr",
    ),
    Case(
        "train-seq-len-float",
        lambda c: ["train", "--config", c.config(), "--set", "data.seq_len=1.5"],
        "data.seq_len",
    ),
    Case(
        "train-bos-string",
        lambda c: ["train", "--config", c.config(), "--set", 'data.bos="yes"'],
        "data.bos",
    ),
    Case(
        "train-sources-not-list",
        lambda c: ["train", "--config", c.config(), "--set", "data.sources=3"],
        "data.sources",
    ),
    Case(
        "train-data-kind",
        lambda c: ["train", "--config", c.config(), "--set", "data.kind=bogus"],
        "data.kind",
    ),
    Case(
        "train-schedule",
        lambda c: ["train", "--config", c.config(), "--set", "train.schedule=linear"],
        "train.schedule",
    ),
    Case(
        "train-dtype",
        lambda c: ["train", "--config", c.config(), "--set", "train.dtype=fp16"],
        "train.dtype",
    ),
    Case(
        "train-preset-int",
        lambda c: ["train", "--config", c.config(), "--set", "model.preset=3"],
        "model.preset",
    ),
    Case(
        "train-gate-bogus",
        lambda c: ["train", "--config", c.config(), "--set", "model.gate=bogus"],
        "bogus",
    ),
    Case(
        "train-hidden-float",
        lambda c: ["train", "--config", c.config(), "--set", "model.hidden_size=32.0"],
        "model.hidden_size",
    ),
    Case(
        "train-seq-len-over-max",
        lambda c: ["train", "--config", c.config(), "--set", "data.seq_len=100000"],
        "max_position_embeddings",
    ),
    Case(
        "train-grad-accum",
        lambda c: ["train", "--config", c.config(), "--set", "train.grad_accum=3"],
        "train.grad_accum",
    ),
    Case(
        "train-keep-last-zero",
        lambda c: ["train", "--config", c.config(), "--set", "train.keep_last=0"],
        "train.keep_last",
    ),
    Case(
        "train-files-no-path",
        lambda c: ["train", "--config", c.config(), "--set", "data.kind=files"],
        "data.path",
    ),
    Case(
        "train-weights-mismatch",
        lambda c: ["train", "--config", c.config(), "--set", "data.weights=[1.0]"],
        "data.weights",
    ),
    Case(
        "train-strategy",
        lambda c: ["train", "--config", c.config(), "--set", "distributed.strategy=mpi"],
        "distributed.strategy",
    ),
    Case("train-bad-argument", lambda c: ["train", "--bogus"], "--bogus"),
    # ------------------------------------------------------------------ train: outputs, locks, resume
    Case(
        "train-out-is-file", lambda c: ["train", "--config", c.config(), "--out", c.file()], "afile"
    ),
    Case(
        "train-out-under-file",
        lambda c: ["train", "--config", c.config(), "--out", c.file() + "/run"],
        "afile",
    ),
    Case(
        "train-second-writer",
        lambda c: ["train", "--config", c.config(), "--out", str(c.tmp / "busy")],
        lambda c: c.hold_lock(c.tmp / "busy"),
    ),
    Case(
        "train-existing-no-resume",
        lambda c: ["train", "--config", str(c.cfg), "--out", str(c.copy_run())],
        "--resume",
    ),
    Case(
        "train-resume-seed",
        lambda c: [
            "train",
            "--config",
            str(c.cfg),
            "--out",
            str(c.copy_run()),
            "--resume",
            "--set",
            "seed=3",
        ],
        "seed",
    ),
    Case(
        "train-resume-seq-len",
        lambda c: [
            "train",
            "--config",
            str(c.cfg),
            "--out",
            str(c.copy_run()),
            "--resume",
            "--set",
            "data.seq_len=8",
        ],
        "data.seq_len",
    ),
    Case(
        "train-resume-model",
        lambda c: [
            "train",
            "--config",
            str(c.cfg),
            "--out",
            str(c.copy_run()),
            "--resume",
            "--set",
            "model.gate=none",
        ],
        "model.gate",
    ),
    Case(
        "train-resume-schedule",
        lambda c: [
            "train",
            "--config",
            str(c.cfg),
            "--out",
            str(c.copy_run()),
            "--resume",
            "--set",
            "train.lr=1e-2",
        ],
        "train.lr",
    ),
    Case(
        "train-resume-allow-other",
        lambda c: [
            "train",
            "--config",
            str(c.cfg),
            "--out",
            str(c.copy_run()),
            "--resume",
            "--set",
            "seed=3",
            "--allow-changed",
            "train.steps",
        ],
        "--allow-changed seed",
    ),
    Case(
        "train-allow-without-resume",
        lambda c: ["train", "--config", c.config(), "--allow-changed", "seed"],
        "--resume",
    ),
    Case(
        "train-resume-all-invalid",
        lambda c: [
            "train",
            "--config",
            str(c.cfg),
            "--out",
            str(_invalid_checkpoints(c)),
            "--resume",
        ],
        "no checkpoint",
    ),
    Case(
        "train-resume-bad-metrics",
        lambda c: [
            "train",
            "--config",
            str(c.cfg),
            "--out",
            str(_corrupt_metrics(c)),
            "--resume",
            "--set",
            "train.steps=5",
            "--allow-changed",
            "train.steps",
        ],
        "metrics.jsonl",
    ),
    # ------------------------------------------------------------------ reproduce
    Case(
        "reproduce-unknown-study",
        lambda c: ["reproduce", "--study", "no-such-study"],
        "no-such-study",
    ),
    Case(
        "reproduce-scale-with-preset",
        lambda c: ["reproduce", "--preset", "smoke", "--scale", "quick"],
        "--scale",
    ),
    Case(
        "reproduce-existing-study",
        lambda c: ["reproduce", "--preset", "smoke", "--out", str(c.study)],
        "--resume",
    ),
    Case(
        "reproduce-out-is-file",
        lambda c: ["reproduce", "--preset", "smoke", "--out", c.file()],
        "afile",
    ),
    Case(
        "reproduce-out-under-file",
        lambda c: ["reproduce", "--preset", "smoke", "--out", c.file() + "/s"],
        "afile",
    ),
    Case(
        "reproduce-second-writer",
        lambda c: ["reproduce", "--preset", "smoke", "--out", str(c.tmp / "busy")],
        lambda c: c.hold_lock(c.tmp / "busy"),
    ),
    Case(
        "reproduce-study-not-toml",
        lambda c: ["reproduce", "--study", c.file("s.toml", "[[x")],
        "s.toml",
    ),
    Case("reproduce-bad-preset", lambda c: ["reproduce", "--preset", "huge"], "huge"),
    # ------------------------------------------------------------------ eval
    Case(
        "eval-window-zero",
        lambda c: ["eval", str(c.run), "--kind", "streaming", "--window", "0"],
        "--window",
    ),
    Case("eval-two-paths", lambda c: ["eval", str(c.run), str(c.run)], "one run directory"),
    Case("eval-no-config", lambda c: ["eval", str(c.tmp)], "config.json"),
    Case(
        "eval-out-is-dir", lambda c: ["eval", str(c.run), "--out", str(c.tmp)], lambda c: str(c.tmp)
    ),
    Case(
        "eval-out-under-file",
        lambda c: ["eval", str(c.run), "--out", c.file() + "/r.json"],
        "afile",
    ),
    Case(
        "eval-depth",
        lambda c: ["eval", str(c.run), "--kind", "passkey", "--depths", "2"],
        "--depths",
    ),
    Case(
        "eval-examples-zero",
        lambda c: ["eval", str(c.run), "--num-examples", "0"],
        "--num-examples",
    ),
    Case(
        "eval-tokens-per-batch",
        lambda c: ["eval", str(c.run), "--tokens-per-batch", "0"],
        "--tokens-per-batch",
    ),
    Case(
        "eval-multiplier-zero",
        lambda c: ["eval", str(c.run), "--multipliers", "0"],
        "--multipliers",
    ),
    Case("eval-device", lambda c: ["eval", str(c.run), "--device", "bogus"], "--device"),
    Case(
        "eval-device-cuda",
        lambda c: ["eval", str(c.run), "--device", "cuda"],
        "--device",
        skip=NO_CUDA,
    ),
    Case(
        "eval-study-arg",
        lambda c: ["eval", str(c.run), "--kind", "study", "--out", str(c.tmp / "s")],
        "NAME=RUN_DIR",
    ),
    Case("eval-kind", lambda c: ["eval", str(c.run), "--kind", "bogus"], "bogus"),
    Case(
        "eval-truncated-weights",
        lambda c: ["eval", str(_truncated_run(c)), "--max-tokens", "64"],
        "model.safetensors",
    ),
    Case(
        "eval-second-writer",
        lambda c: ["eval", str(c.run), "--out", str(c.tmp / "busy" / "r.json")],
        lambda c: c.hold_lock(c.tmp / "busy"),
    ),
    # ------------------------------------------------------------------ analyze
    Case("analyze-eps-negative", lambda c: ["analyze", str(c.run), "--eps", "-1"], "--eps"),
    Case("analyze-eps-above-one", lambda c: ["analyze", str(c.run), "--eps", "1.5"], "--eps"),
    Case("analyze-seq-len-one", lambda c: ["analyze", str(c.run), "--seq-len", "1"], "--seq-len"),
    Case(
        "analyze-seq-len-over-max",
        lambda c: ["analyze", str(c.run), "--seq-len", "100000", "--out", str(c.tmp / "a")],
        "max_position_embeddings",
    ),
    Case(
        "analyze-batch-zero", lambda c: ["analyze", str(c.run), "--batch-size", "0"], "--batch-size"
    ),
    Case("analyze-missing", lambda c: ["analyze", str(c.tmp / "nope")], "nope"),
    Case("analyze-path-is-file", lambda c: ["analyze", c.file()], "afile"),
    Case(
        "analyze-text-missing",
        lambda c: ["analyze", str(c.run), "--text", str(c.tmp / "t.txt")],
        "t.txt",
    ),
    Case("analyze-text-dir", lambda c: ["analyze", str(c.run), "--text", str(c.tmp)], "--text"),
    Case("analyze-device-bogus", lambda c: ["analyze", str(c.run), "--device", "gpu"], "--device"),
    Case(
        "analyze-device-cuda",
        lambda c: ["analyze", str(c.run), "--device", "cuda"],
        "--device",
        skip=NO_CUDA,
    ),
    Case("analyze-out-is-file", lambda c: ["analyze", str(c.run), "--out", c.file()], "afile"),
    Case(
        "analyze-second-writer",
        lambda c: ["analyze", str(c.run), "--out", str(c.tmp / "busy")],
        lambda c: c.hold_lock(c.tmp / "busy"),
    ),
    Case(
        "analyze-hf-no-tokenizer",
        lambda c: ["analyze", str(c.hf), "--out", str(c.tmp / "a")],
        "tokenizer",
    ),
    Case(
        "analyze-hf-truncated",
        lambda c: ["analyze", str(_hf_with_tokenizer(c, True)), "--out", str(c.tmp / "a")],
        "model.safetensors",
    ),
    Case(
        "analyze-ours-truncated",
        lambda c: [
            "analyze",
            str(c.truncated(c.run / "final", "final")),
            "--out",
            str(c.tmp / "a"),
        ],
        "model.safetensors",
    ),
    Case(
        "analyze-ids-beyond-vocab",
        lambda c: [
            "analyze",
            str(_run_with_tokenizer(c)),
            "--text",
            str(c.text),
            "--seq-len",
            "16",
            "--out",
            str(c.tmp / "a"),
        ],
        "vocabulary",
    ),
    Case(
        "analyze-empty-vocab",
        lambda c: [
            "analyze",
            str(_empty_vocab_run(c)),
            "--text",
            str(c.text),
            "--seq-len",
            "16",
            "--out",
            str(c.tmp / "a"),
        ],
        "tokenizer.json",
    ),
    Case(
        "analyze-no-tokenizer-ours",
        lambda c: ["analyze", str(c.run / "final"), "--out", str(c.tmp / "a")],
        "tokenizer.json",
    ),
    Case(
        "analyze-text-too-short",
        lambda c: [
            "analyze",
            str(_run_with_tokenizer(c)),
            "--text",
            c.file("s.txt", "w1"),
            "--seq-len",
            "16",
            "--out",
            str(c.tmp / "a"),
        ],
        "fewer than one window",
    ),
    # ------------------------------------------------------------------ data
    Case(
        "data-out-is-file",
        lambda c: ["data", "prepare", "--input", str(c.text), "--out", c.file()],
        "afile",
    ),
    Case(
        "data-cache-under-file",
        lambda c: ["data", "prepare", "--cache-dir", c.file() + "/c"],
        "afile",
    ),
    Case(
        "data-input-missing",
        lambda c: [
            "data",
            "prepare",
            "--input",
            str(c.tmp / "none.txt"),
            "--out",
            str(c.tmp / "s"),
        ],
        "none.txt",
    ),
    Case("data-verify-missing", lambda c: ["data", "verify", str(c.tmp / "none")], "none"),
    Case("data-verify-corrupt", lambda c: ["data", "verify", str(_shard_set(c, True))], "shard-"),
    Case("data-verify-not-shards", lambda c: ["data", "verify", str(c.tmp)], lambda c: str(c.tmp)),
    Case(
        "data-vocab-size",
        lambda c: [
            "data",
            "prepare",
            "--input",
            str(c.text),
            "--vocab-size",
            "3",
            "--out",
            str(c.tmp / "s"),
            "--cache-dir",
            str(c.tmp / "c"),
        ],
        "vocab",
    ),
    Case("data-no-subcommand", lambda c: ["data", "bogus"], "bogus"),
    # ------------------------------------------------------------------ convert
    Case(
        "convert-src-missing",
        lambda c: ["convert", "--from", "paper", str(c.tmp / "none"), str(c.tmp / "d")],
        "none",
    ),
    Case(
        "convert-dst-is-file", lambda c: ["convert", "--to", "qwen3", str(c.hf), c.file()], "afile"
    ),
    Case(
        "convert-truncated",
        lambda c: ["convert", "--to", "qwen3", str(c.truncated(c.hf, "hf")), str(c.tmp / "d")],
        "model.safetensors",
    ),
    Case("convert-no-direction", lambda c: ["convert", "a", "b"], "--from"),
    Case("convert-bad-format", lambda c: ["convert", "--from", "gpt9", "a", "b"], "gpt9"),
    # ------------------------------------------------------------------ export
    Case("export-run-missing", lambda c: ["export", str(c.tmp / "none"), str(c.tmp / "d")], "none"),
    Case("export-out-is-file", lambda c: ["export", str(c.run), c.file()], "afile"),
    Case("export-out-in-source", lambda c: ["export", str(c.run), str(c.run)], "source"),
    Case(
        "export-truncated",
        lambda c: ["export", str(c.truncated(c.run / "final", "final")), str(c.tmp / "d")],
        "model.safetensors",
    ),
    Case(
        "export-bad-format",
        lambda c: ["export", str(c.run), str(c.tmp / "d"), "--to", "onnx"],
        "onnx",
    ),
    # ------------------------------------------------------------------ lm-eval
    Case("lm-eval-dtype", lambda c: ["lm-eval", str(c.hf_tok), "--dtype", "bogus"], "--dtype"),
    Case("lm-eval-no-config", lambda c: ["lm-eval", str(c.tmp)], "config.json"),
    Case(
        "lm-eval-truncated",
        lambda c: ["lm-eval", str(_hf_with_tokenizer(c, True))],
        "model.safetensors",
    ),
    Case(
        "lm-eval-output-is-dir",
        lambda c: ["lm-eval", str(c.hf_tok), "--output", str(c.tmp)],
        "--output",
    ),
    Case("lm-eval-device", lambda c: ["lm-eval", str(c.hf_tok), "--device", "bogus"], "--device"),
    Case(
        "lm-eval-batch-size",
        lambda c: ["lm-eval", str(c.hf_tok), "--batch-size", "x"],
        "--batch-size",
    ),
    Case(
        "lm-eval-include-missing",
        lambda c: ["lm-eval", str(c.hf_tok), "--include-path", str(c.tmp / "none")],
        "none",
    ),
    Case("lm-eval-tasks-empty", lambda c: ["lm-eval", str(c.hf_tok), "--tasks", ","], "--tasks"),
    Case("lm-eval-limit", lambda c: ["lm-eval", str(c.hf_tok), "--limit", "0"], "--limit"),
    Case("lm-eval-no-tokenizer", lambda c: ["lm-eval", str(c.hf)], "tokenizer"),
    # ------------------------------------------------------------------ the command itself
    Case("unknown-command", lambda c: ["bogus"], "bogus"),
]


def _lm_eval_missing() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return True
    return False


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_ends_in_one_line(case: Case, shared, tmp_path, capsys) -> None:
    if case.skip:
        pytest.skip(case.skip)
    if case.id.startswith("lm-eval") and _lm_eval_missing():
        pytest.skip("lm-eval is not installed")
    ctx = Ctx(tmp_path, shared)
    try:
        argv = case.argv(ctx)
        expected = case.names(ctx) if callable(case.names) else case.names
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code
        err = capsys.readouterr().err
    finally:
        while _HOLDERS:
            proc = _HOLDERS.pop()
            proc.kill()
            proc.wait()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == case.code, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("gated-attention"), lines[0]
    if expected:
        assert expected in lines[0], lines[0]


def test_table_covers_every_subcommand() -> None:
    commands = {c.id.split("-")[0] for c in CASES}
    assert {"train", "reproduce", "eval", "analyze", "data", "convert", "export", "lm"} <= commands
    assert len(CASES) >= 80


# ----------------------------------------------------------------------------- faults


def test_reproduce_refusal_keeps_finished_runs(shared, capsys) -> None:
    study = shared["study"]
    before = {p: p.read_bytes() for p in study.rglob("*") if p.is_file() and p.name != ".lock"}
    assert main(["reproduce", "--preset", "smoke", "--out", str(study)]) == 2
    after = {p: p.read_bytes() for p in study.rglob("*") if p.is_file() and p.name != ".lock"}
    assert before == after


def test_resume_refusal_deletes_nothing(shared, tmp_path, capsys) -> None:
    run = Ctx(tmp_path, shared).copy_run()
    for step in (run / "checkpoints").glob("step_*"):
        (step / "trainer_state.json").write_text("{}")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert main(["train", "--config", str(shared["cfg"]), "--out", str(run), "--resume"]) == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_resume_with_allowed_change_continues(shared, tmp_path, capsys) -> None:
    run = Ctx(tmp_path, shared).copy_run()
    argv = ["train", "--config", str(shared["cfg"]), "--out", str(run), "--resume"]
    assert main([*argv, "--set", "train.steps=5", "--allow-changed", "train.steps"]) == 0
    assert json.loads((run / "result.json").read_text())["steps"] == 5


def test_truncated_metrics_line_dropped_on_resume(shared, tmp_path, capsys, caplog) -> None:
    run = Ctx(tmp_path, shared).copy_run()
    # a writer killed mid-line after the last checkpoint (step 4)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "train", "st')
    argv = ["train", "--config", str(shared["cfg"]), "--out", str(run), "--resume"]
    assert main([*argv, "--set", "train.steps=5", "--allow-changed", "train.steps"]) == 0
    assert "metrics.jsonl" in caplog.text and "truncated" in caplog.text
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5]


def test_stale_tmp_dirs_and_lock_of_dead_writer_are_taken_over(shared, tmp_path, capsys) -> None:
    run = Ctx(tmp_path, shared).copy_run()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    stale = run / "checkpoints" / f".tmp-step_0000006-{pid}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    (run / ".lock").write_text(f"{pid}\n")  # the dead writer's lock file (its flock died with it)
    argv = ["train", "--config", str(shared["cfg"]), "--out", str(run), "--resume"]
    assert main([*argv, "--set", "train.steps=6", "--allow-changed", "train.steps"]) == 0
    assert not stale.exists()
    assert (run / ".lock").read_text().strip() == str(os.getpid())


@pytest.mark.slow
def test_run_lock_is_reentrant_and_released(tmp_path) -> None:
    from gated_attention.train.lock import OutputError, RunLock

    with RunLock(tmp_path / "a"), RunLock(tmp_path / "a"):
        pass
    with RunLock(tmp_path / "a"):  # released: taken again
        code = "import sys; from gated_attention.train.lock import RunLock; RunLock(sys.argv[1]).acquire()"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        other = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "a")],
            capture_output=True,
            text=True,
            env=env,
        )
        assert other.returncode != 0
        assert f"in use by process {os.getpid()}" in other.stderr
        assert OutputError.__mro__[1] is ValueError


def test_prepared_data_altered_in_place_is_rebuilt(tmp_path, caplog) -> None:
    from gated_attention.data import prepare as prep

    docs = [f"document {i} " + "some words here " * (i % 5 + 1) for i in range(300)]
    entry = prep.prepare_data(tmp_path, documents=docs, vocab_size=300)
    good = entry.tokens_path.read_bytes()
    raw = bytearray(good)
    raw[10] ^= 0x01  # same size, different tokens: the size check alone passes
    entry.tokens_path.write_bytes(bytes(raw))
    prep._VERIFIED.clear()  # a new process
    again = prep.prepare_data(tmp_path, documents=docs, vocab_size=300)
    assert "does not match its recorded sha256" in caplog.text
    assert again.tokens_path.read_bytes() == good


def test_corrupt_prepared_manifest_is_rebuilt(tmp_path, caplog) -> None:
    from gated_attention.data import prepare as prep

    docs = [f"document {i} " + "other words " * (i % 4 + 1) for i in range(300)]
    entry = prep.prepare_data(tmp_path, documents=docs, vocab_size=300)
    (entry.root / prep.MANIFEST_FILE).write_text('{"format_version": 1, "tok')
    with pytest.raises(ValueError, match=r"prepared\.json"):
        prep.load_prepared(entry.root)
    again = prep.prepare_data(tmp_path, documents=docs, vocab_size=300)
    assert again.vocab_size == entry.vocab_size
    assert "prepared.json" in caplog.text


def test_analyze_text_reads_only_a_prefix(tmp_path) -> None:
    from gated_attention.cli.analyze import _stream_ids

    seen: list[int] = []

    def tokenizer(text: str) -> dict[str, list[int]]:
        seen.append(len(text))
        return {"input_ids": list(range(len(text) // 4))}

    big = tmp_path / "big.txt"
    big.write_text("word " * 2_000_000)  # 10 MB
    ids = _stream_ids(big, tokenizer, 8 * 256 + 1)
    assert len(ids) > 8 * 256
    assert max(seen) < 100_000


# ----------------------------------------------------------------------------- subprocess faults


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "gated_attention", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )


def _train_losses(run: Path) -> dict[int, float]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_checkpoint_and_resume_is_bit_exact(tmp_path, sig) -> None:
    steps = 400
    cfg = write_config(tmp_path / "c.toml", tmp_path / "full", steps=steps, ckpt_every=0)
    assert main(["train", "--config", str(cfg)]) == 0
    expected = _train_losses(tmp_path / "full")
    out = tmp_path / "stopped"
    proc = _cli(["train", "--config", str(cfg), "--out", str(out)])
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or metrics.stat().st_size < 2000):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    lines = [x for x in err.splitlines() if x.startswith("gated-attention")]
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and len(lines) == 1 and "--resume" in lines[0], err
    saved = sorted((out / "checkpoints").glob("step_*"))
    assert len(saved) == 1
    stopped_at = int(saved[0].name.split("_")[1])
    assert 0 < stopped_at < steps
    assert main(["train", "--config", str(cfg), "--out", str(out), "--resume"]) == 0
    assert _train_losses(out) == expected  # bit-identical losses, every step


@pytest.mark.slow
def test_two_train_processes_second_fails_naming_the_first(tmp_path) -> None:
    cfg = write_config(tmp_path / "c.toml", tmp_path / "run", steps=100000, ckpt_every=0)
    first = _cli(["train", "--config", str(cfg)])
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not metrics.exists():
        time.sleep(0.05)
    second = _cli(["train", "--config", str(cfg)])
    _, err = second.communicate(timeout=120)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    lines = [x for x in err.splitlines() if x.strip()]
    assert second.returncode == 2, err
    assert len(lines) == 1 and f"in use by process {first.pid}" in lines[0], err
    assert first.returncode == 128 + signal.SIGTERM
    assert list((tmp_path / "run" / "checkpoints").glob("step_*"))  # the first run is intact


@pytest.mark.slow
def test_disk_full_is_one_line(tmp_path) -> None:
    cfg = write_config(tmp_path / "c.toml", tmp_path / "run", steps=2, ckpt_every=1)

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    proc = _cli(["train", "--config", str(cfg)], preexec_fn=limit)
    _, err = proc.communicate(timeout=120)
    lines = [x for x in err.splitlines() if x.startswith("gated-attention")]
    assert proc.returncode == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert "File too large" in lines[0] and str(tmp_path / "run") in lines[0], err


def test_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    from gated_attention.train.trainer import Trainer

    def oom(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(Trainer, "train_step", oom)
    cfg = write_config(tmp_path / "c.toml", tmp_path / "run")
    assert main(["train", "--config", str(cfg)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "out of memory" in lines[0] and "train.batch_size" in lines[0]


def test_dry_run_out_is_checked(tmp_path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    cfg = write_config(tmp_path / "c.toml", tmp_path / "run")
    assert main(["train", "--config", str(cfg), "--dry-run", "--out", str(tmp_path / "afile")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "afile" in lines[0]


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only tmpfs (needs the right to mount; skipped elsewhere)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    yield ro
    subprocess.run(["umount", str(ro)], check=True)


@pytest.mark.parametrize(
    "argv",
    [
        lambda s, ro: ["train", "--config", str(s["cfg"]), "--out", str(ro / "run")],
        lambda s, ro: ["analyze", str(s["run"]), "--out", str(ro / "a")],
        lambda s, ro: ["eval", str(s["run"]), "--out", str(ro / "r.json")],
        lambda s, ro: ["reproduce", "--preset", "smoke", "--out", str(ro / "s")],
        lambda s, ro: ["export", str(s["run"]), str(ro / "e")],
    ],
    ids=["train", "analyze", "eval", "reproduce", "export"],
)
def test_read_only_output_is_one_line(argv, shared, read_only_dir, capsys) -> None:
    assert main(argv(shared, read_only_dir)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "read-only" in lines[0] and str(read_only_dir) in lines[0]


@pytest.mark.slow
def test_lm_eval_unknown_task_is_one_line(shared, capsys) -> None:
    pytest.importorskip("lm_eval")
    assert main(["lm-eval", str(shared["hf_tok"]), "--tasks", "hellaswg"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unknown task 'hellaswg'" in lines[0] and "hellaswag" in lines[0]
