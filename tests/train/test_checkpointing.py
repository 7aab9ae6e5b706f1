"""Activation checkpointing in training: bit-exact against none under FSDP2 (float64) and
through the trainer's ``train.activation_checkpointing`` option."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gated_attention.train import load_run_config, read_metrics, train
from tests.train.conftest import cli_env


@pytest.mark.slow
def test_checkpointing_is_bit_exact_under_fsdp2_in_float64(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    worker = Path(__file__).with_name("fsdp_checkpointing_worker.py")
    out = tmp_path / "results.pt"
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", str(worker), str(out)],
        capture_output=True,
        text=True,
        env={**cli_env(), "PYTHONPATH": str(Path(__file__).parents[2] / "src")},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = torch.load(out)
    ref = results["none"]
    assert ref["recomputed"] == 0
    for mode in ("full", "attention"):
        assert results[mode]["recomputed"] > 0, mode  # the taps fired again in backward
        assert torch.equal(results[mode]["losses"], ref["losses"]), mode
        for key, value in ref["state"].items():
            assert torch.equal(results[mode]["state"][key], value), (mode, key)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "attention"])
def test_trainer_option_gives_the_same_losses(write_config, tmp_path, mode):
    def losses(name: str, overrides: list[str]) -> list[dict]:
        cfg = load_run_config(write_config(name, steps=3, ckpt_every=0, eval_every=0), overrides)
        train(cfg)
        return read_metrics(tmp_path / name / "metrics.jsonl")

    a = losses("none", [])
    b = losses(f"ckpt_{mode}", [f'train.activation_checkpointing="{mode}"'])
    assert [r["loss"] for r in a] == [r["loss"] for r in b] and len(a) == 3
    # the gate meter ignores the taps the recomputation fires again
    assert [r["gate_mean"] for r in a] == [r["gate_mean"] for r in b]


def test_bad_checkpointing_and_threads_are_clear_errors(write_config):
    cfg = write_config("bad", steps=2)
    with pytest.raises(ValueError, match=r"train\.activation_checkpointing='selective'"):
        load_run_config(cfg, ['train.activation_checkpointing="selective"'])
    with pytest.raises(ValueError, match=r"train\.threads"):
        load_run_config(cfg, ["train.threads=-1"])


def test_threads_option_sets_torch_threads(write_config):
    before = torch.get_num_threads()
    cfg = load_run_config(write_config("threads", steps=1, ckpt_every=0, eval_every=0))
    target = 1 if before != 1 else 2
    cfg.train.threads = target
    try:
        train(cfg)
        assert torch.get_num_threads() == target
    finally:
        torch.set_num_threads(before)
