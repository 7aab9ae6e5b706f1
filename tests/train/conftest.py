"""Helpers for training tests: small run configs and CLI subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BACKCOPY_TOML = """
seed = 0
out_dir = "{out}"

[model]
preset = "tiny"
gate = "{gate}"

[data]
kind = "backcopy"
seq_len = 32
vocab_size = 64

[train]
steps = {steps}
batch_size = 8
lr = 3e-3
warmup_steps = 5
eval_every = {eval_every}
eval_batches = 2
ckpt_every = {ckpt_every}
keep_last = 3
progress = false
"""


@pytest.fixture
def write_config(tmp_path: Path):
    def write(
        name: str = "run",
        gate: str = "sdpa-elementwise",
        steps: int = 30,
        ckpt_every: int = 10,
        eval_every: int = 10,
        extra: str = "",
    ) -> Path:
        path = tmp_path / f"{name}.toml"
        out = tmp_path / name
        path.write_text(
            BACKCOPY_TOML.format(
                out=out, gate=gate, steps=steps, ckpt_every=ckpt_every, eval_every=eval_every
            )
            + extra
        )
        return path

    return write


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cli(*args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "gated_attention", *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
