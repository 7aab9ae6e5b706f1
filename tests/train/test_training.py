"""End-to-end training: exact resume after SIGKILL, torchrun DDP/FSDP2, bad input."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gated_attention import GatedLM
from gated_attention.train import TrainerCallback, load_model, load_run_config, read_metrics, train
from gated_attention.train.checkpoint import latest_checkpoint, list_checkpoints
from tests.train.conftest import cli_env, run_cli


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")]


@pytest.mark.slow
def test_train_in_process_writes_run_directory(write_config):
    cfg = load_run_config(write_config(steps=20))
    result = train(cfg)
    out = Path(cfg.out_dir)
    for name in ("config.json", "model_config.json", "metrics.jsonl", "data.json", "result.json"):
        assert (out / name).exists(), name
    assert len(list_checkpoints(out / "checkpoints")) == 2
    evals = read_metrics(out / "metrics.jsonl", "eval")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] + 0.5
    assert result.final_val_loss == evals[-1]["val_loss"]
    model = load_model(out)
    assert isinstance(model, GatedLM) and model.cfg.gate.position == "sdpa"
    records = read_metrics(out / "metrics.jsonl")
    assert 0 < records[0]["gate_mean"] < 1


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(write_config, tmp_path):
    steps = 300
    ref_cfg = write_config("reference", steps=steps, ckpt_every=25, eval_every=100)
    run_cli("train", "--config", str(ref_cfg))
    killed_cfg = write_config("killed", steps=steps, ckpt_every=25, eval_every=100)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gated_attention", "train", "--config", str(killed_cfg)],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(out / "checkpoints")) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = list_checkpoints(out / "checkpoints")
    assert done and not (out / "final").exists(), "the run must be killed mid-way"
    killed_at = int(done[-1].name.split("_")[1])
    assert killed_at < steps
    run_cli("train", "--config", str(killed_cfg), "--resume")
    assert _losses(out) == _losses(tmp_path / "reference")  # exact, not approximate
    assert len(_losses(out)) == steps


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_matches_single_process(write_config, tmp_path, strategy):
    single = write_config("single", steps=12, ckpt_every=6, eval_every=6)
    run_cli("train", "--config", str(single))
    multi = write_config(
        f"multi_{strategy}",
        steps=12,
        ckpt_every=6,
        eval_every=6,
        extra=f'\n[distributed]\nstrategy = "{strategy}"\n',
    )
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    proc = subprocess.run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "-m",
            "gated_attention",
            "train",
            "--config",
            str(multi),
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _losses(tmp_path / "single"), _losses(tmp_path / f"multi_{strategy}")
    assert len(a) == len(b) == 12
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    va = read_metrics(tmp_path / "single" / "metrics.jsonl", "eval")[-1]["val_loss"]
    vb = read_metrics(tmp_path / f"multi_{strategy}" / "metrics.jsonl", "eval")[-1]["val_loss"]
    assert abs(va - vb) < 1e-5
    m1, m2 = load_model(tmp_path / "single"), load_model(tmp_path / f"multi_{strategy}")
    ids = torch.randint(0, 64, (2, 16))
    torch.testing.assert_close(m1(ids).logits, m2(ids).logits, rtol=1e-4, atol=1e-4)
    # and the distributed run resumes from its own checkpoint format
    resumed = subprocess.run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "-m",
            "gated_attention",
            "train",
            "--config",
            str(multi),
            "--resume",
            "--set",
            "train.steps=14",
            "--allow-changed",
            "train.steps",
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(_losses(tmp_path / f"multi_{strategy}")) == 14


def _one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [x for x in proc.stderr.strip().splitlines() if "error:" in x]
    assert len(lines) == 1 and pattern in lines[0], proc.stderr


@pytest.mark.slow
def test_bad_input_gives_one_line_errors(write_config, tmp_path):
    cfg = write_config(steps=10, ckpt_every=5)
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace("steps = 10", "stpes = 10"))
    _one_line_error(run_cli("train", "--config", str(bad), check=False), "Did you mean 'steps'")
    _one_line_error(
        run_cli("train", "--config", str(cfg), "--set", "data.seq_len=4096", check=False),
        "max_position_embeddings",
    )
    _one_line_error(
        run_cli(
            "train",
            "--config",
            str(cfg),
            "--set",
            'data.kind="files"',
            "--set",
            f'data.path="{tmp_path / "nowhere.txt"}"',
            check=False,
        ),
        "nowhere.txt",
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    _one_line_error(
        run_cli(
            "train",
            "--config",
            str(cfg),
            "--set",
            'data.kind="files"',
            "--set",
            f'data.path="{empty}"',
            "--set",
            f'data.cache_dir="{tmp_path}/c"',
            check=False,
        ),
        "error",
    )
    run_cli("train", "--config", str(cfg))
    # a changed config is refused, naming the keys; even when the change is allowed, an
    # incompatible model cannot load this run's checkpoint
    changed = ["--resume", "--set", 'model.gate="none"', "--set", "train.steps=12"]
    _one_line_error(
        run_cli("train", "--config", str(cfg), *changed, check=False),
        "model.gate: 'sdpa-elementwise' -> 'none'",
    )
    allowed = ["--allow-changed", "model.gate", "--allow-changed", "train.steps"]
    _one_line_error(
        run_cli("train", "--config", str(cfg), *changed, *allowed, check=False),
        "different model",
    )
    # not resuming over existing checkpoints by accident
    _one_line_error(run_cli("train", "--config", str(cfg), check=False), "--resume")


@pytest.mark.slow
def test_corrupted_checkpoint_falls_back_to_previous(write_config, tmp_path):
    cfg = load_run_config(write_config(steps=20, ckpt_every=10))
    train(cfg)
    root = Path(cfg.out_dir) / "checkpoints"
    newest = list_checkpoints(root)[-1]
    weights = newest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert latest_checkpoint(root).name == "step_0000010"
    from gated_attention.train import CheckpointError

    with pytest.raises(CheckpointError, match="checksum"):
        load_model(newest)
    cfg2 = load_run_config(write_config(steps=20, ckpt_every=10))
    result = train(cfg2, resume=True)  # resumes from step 10, redoes 10..20
    assert result.steps == 20
    assert json.loads((Path(cfg2.out_dir) / "result.json").read_text())["steps"] == 20


@pytest.mark.slow
def test_corpus_shorter_than_one_window(write_config, tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("A short document with a handful of words.\n")
    cfg = write_config(steps=2)
    proc = run_cli(
        "train",
        "--config",
        str(cfg),
        "--set",
        'data.kind="files"',
        "--set",
        f'data.path="{text}"',
        "--set",
        "data.vocab_size=300",
        "--set",
        f'data.cache_dir="{tmp_path}/cache"',
        check=False,
    )
    _one_line_error(proc, "window")


class _Counter(TrainerCallback):
    """Adds a running count to each step record; its state rides in checkpoints."""

    state_key = "counter"

    def __init__(self) -> None:
        self.count, self.events = 0, []

    def on_step_end(self, trainer, record):
        self.count += 1
        record["count"] = self.count

    def on_eval(self, trainer, val_loss):
        self.events.append(("eval", trainer.step))

    def on_checkpoint(self, trainer, path):
        self.events.append(("ckpt", path.name))

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


@pytest.mark.slow
def test_user_callbacks_add_metrics_and_resume_their_state(write_config):
    cfg = load_run_config(write_config(steps=10, ckpt_every=5, eval_every=5))
    first = _Counter()
    train(load_run_config(write_config(steps=5, ckpt_every=5, eval_every=5)), callbacks=[first])
    assert first.events == [("eval", 5), ("ckpt", "step_0000005")]
    out = Path(cfg.out_dir)
    state = json.loads(
        (list_checkpoints(out / "checkpoints")[-1] / "trainer_state.json").read_text()
    )
    assert list(state)[2:5] == ["rng", "spikes", "counter"] and state["counter"] == {"count": 5}
    train(cfg, resume=True, callbacks=[second := _Counter()], allow_changed=("train.steps",))
    assert [r["count"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 11))
    assert second.count == 10
    with pytest.raises(ValueError, match="state_key"):
        train(cfg, callbacks=[type("Bad", (TrainerCallback,), {"state_key": "step"})()])
