"""Schedules, parameter groups, monitors and configs of the training engine."""

import math

import pytest
import torch

from gated_attention import GatedLM
from gated_attention.train import RunConfig, SpikeMonitor, TrainConfig, load_run_config, lr_at
from gated_attention.train.config import apply_overrides
from gated_attention.train.optim import param_groups
from tests.conftest import small_cfg


def test_warmup_cosine_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, cfg) == pytest.approx(0.1)


def test_wsd_and_constant_schedules():
    wsd = TrainConfig(
        steps=100, lr=1.0, warmup_steps=0, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0
    )
    assert lr_at(50, wsd) == 1.0 and lr_at(79, wsd) == 1.0
    assert lr_at(90, wsd) == pytest.approx(0.5)
    const = TrainConfig(steps=10, lr=0.5, warmup_steps=0, schedule="constant")
    assert all(lr_at(s, const) == 0.5 for s in range(10))


def test_param_groups_skip_norms_biases_embeddings():
    model = GatedLM(small_cfg(gate="sdpa-input-independent", attention_bias=True))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert all(p.dim() == 2 for p in decay["params"])
    assert not any("norm" in n or "embed" in n or n.endswith("bias") for n in decayed)
    assert "layers.0.self_attn.qkv_proj.weight" in decayed
    assert any(n.endswith("gate_logits") for n in (names[id(p)] for p in no_decay["params"]))
    total = len(decay["params"]) + len(no_decay["params"])
    assert total == len(list(model.parameters()))


def test_spike_monitor_flags_outliers_and_round_trips():
    mon = SpikeMonitor(window=16, sigma=6.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(16):
        assert not mon.update(3.0 + 0.01 * float(torch.randn(1, generator=gen)))
    assert mon.update(5.0)
    assert not mon.update(3.0)
    assert mon.spikes == 1 and mon.spike_score == pytest.approx(1 / 18)
    other = SpikeMonitor(window=16)
    other.load_state_dict(mon.state_dict())
    assert other.update(9.0) == mon.update(9.0)


def test_run_config_errors_suggest_keys(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nstesp = 3\n")
    with pytest.raises(ValueError, match="Did you mean 'steps'"):
        load_run_config(path)
    path.write_text("[trian]\nsteps = 3\n")
    with pytest.raises(ValueError, match="Did you mean 'train'"):
        load_run_config(path)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        RunConfig.from_dict({"model": {"preset": "tiny"}, "data": {"seq_len": 4096}})
    with pytest.raises(ValueError, match=r"train\.schedule"):
        RunConfig.from_dict({"train": {"schedule": "linear"}})
    with pytest.raises(FileNotFoundError):
        load_run_config(tmp_path / "missing.toml")


def test_overrides_parse_toml_literals():
    data = apply_overrides(
        {}, ["train.lr=1e-3", "model.gate=sdpa-headwise", "data.bos=false", 'data.sources=["wiki"]']
    )
    assert data == {
        "train": {"lr": 1e-3},
        "model": {"gate": "sdpa-headwise"},
        "data": {"bos": False, "sources": ["wiki"]},
    }
    cfg = RunConfig.from_dict(data)
    assert cfg.model_config(64).gate.granularity == "headwise"
