"""The MoE preset under torchrun: 2-rank DDP and FSDP2 equal one process.

Micro-batches this small leave some experts without tokens on a rank; those experts must still
join the gradient reduction (``nn/moe.py``), else the ranks' collectives disagree. The MoE
load-balancing loss is computed per micro-batch (as each device computes it in Switch/Qwen3-MoE),
so the one-process reference runs the same micro-batches: ``grad_accum x 2`` micro-steps, which
read exactly the rows the two ranks read (``data._batching.rank_rows``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gated_attention.train import read_metrics
from tests.train.conftest import cli_env, run_cli

MOE_TOML = """
seed = 0
out_dir = "{out}"

[model]
preset = "small-moe"
gate = "sdpa-elementwise"

[data]
kind = "backcopy"
seq_len = 8
vocab_size = 64

[train]
steps = 6
batch_size = 4
grad_accum = {grad_accum}
lr = 3e-3
warmup_steps = 2
eval_every = 6
eval_batches = 2
ckpt_every = 6
progress = false

[distributed]
strategy = "{strategy}"
"""


def _run(tmp: Path, name: str, strategy: str, grad_accum: int) -> Path:
    out = tmp / name
    cfg = tmp / f"{name}.toml"
    cfg.write_text(MOE_TOML.format(out=out, strategy=strategy, grad_accum=grad_accum))
    if strategy == "none":
        run_cli("train", "--config", str(cfg))
        return out
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    cmd = [torchrun, "--nproc_per_node", "2", "-m", "gated_attention", "train", "--config"]
    proc = subprocess.run(
        [*cmd, str(cfg)], capture_output=True, text=True, env=cli_env(), timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory):
    """One-process references by the distributed runs' grad_accum (built on first use)."""
    tmp = tmp_path_factory.mktemp("moe_single")
    runs: dict[int, Path] = {}

    def get(grad_accum: int) -> Path:
        if grad_accum not in runs:
            runs[grad_accum] = _run(tmp, f"single_ga{2 * grad_accum}", "none", 2 * grad_accum)
        return runs[grad_accum]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("grad_accum", [1, 2])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_moe_two_ranks_equal_one_process(tmp_path, single_runs, strategy, grad_accum):
    single = single_runs(grad_accum)
    multi = _run(tmp_path, f"{strategy}_ga{grad_accum}", strategy, grad_accum)
    a = [r["loss"] for r in read_metrics(single / "metrics.jsonl", "train")]
    b = [r["loss"] for r in read_metrics(multi / "metrics.jsonl", "train")]
    assert len(a) == len(b) == 6
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5, (a, b)
    va = read_metrics(single / "metrics.jsonl", "eval")[-1]["val_loss"]
    vb = read_metrics(multi / "metrics.jsonl", "eval")[-1]["val_loss"]
    assert abs(va - vb) < 1e-5
    wa = load_file(str(single / "final" / "model.safetensors"))
    wb = load_file(str(multi / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=1e-5, msg=key)
