"""``gated-attention export`` and ``hf.export.export_model``: a run as a transformers model
directory; Auto registration on ``import gated_attention``; the README's transformers section."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3NextForCausalLM

from gated_attention import GatedLM
from gated_attention.cli import export as export_command
from gated_attention.cli import main
from gated_attention.data.tokenizer import load_tokenizer, train_tokenizer
from gated_attention.hf import GatedAttentionForCausalLM
from gated_attention.hf.convert import ConversionError
from gated_attention.hf.export import EXPORT_FORMATS, export_model
from gated_attention.train import checkpoint as ckpt
from tests.conftest import small_cfg
from tests.hf.helpers import perturb

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["To be, or not to be, that is the question.", "The quality of mercy is not strained."]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(TEXTS * 20, vocab_size=300, out_dir=out)
    return out


def _lm(vocab: int, **overrides) -> GatedLM:
    return perturb(GatedLM(small_cfg(vocab_size=vocab, **overrides)), 0.05)


def _run(tmp_path: Path, tokenizer_dir: Path, **overrides) -> tuple[Path, GatedLM]:
    """A run directory as the trainer leaves it: final/, two checkpoints, tokenizer.json."""
    run = tmp_path / "run"
    vocab = load_tokenizer(tokenizer_dir).vocab_size
    older, lm = _lm(vocab, **overrides), _lm(vocab, **overrides)
    for step, model in ((5, older), (10, lm)):
        ckpt.save_checkpoint(run / "checkpoints", step, model, None, None, {}, keep_last=3)
    ckpt.save_model(lm, run / "final")
    (run / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
    return run, lm


def test_export_formats_agree():
    assert export_command.EXPORT_FORMATS == EXPORT_FORMATS


def test_export_model_writes_a_directory_transformers_loads(tmp_path, tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    lm = _lm(tokenizer.vocab_size, gate="sdpa-elementwise")
    export_model(lm, tmp_path / "out", tokenizer=tokenizer)
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    loaded = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert type(model) is GatedAttentionForCausalLM
    ids = loaded(TEXTS[0], return_tensors="pt").input_ids
    assert ids.tolist() == [tokenizer(TEXTS[0]).input_ids]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, lm(ids).logits)
    for config in (model.config, model.generation_config):
        assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (0, 1, 2)
    assert loaded.model_max_length == lm.cfg.max_position_embeddings
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left


def test_export_model_to_another_format_and_refusals(tmp_path, tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    overrides = dict(
        gate="sdpa-elementwise", qk_norm="zero_centered", norm_type="zero_centered", head_dim=8
    )
    lm = _lm(tokenizer.vocab_size, **overrides)
    export_model(lm, tmp_path / "next", to="qwen3-next", tokenizer=tokenizer)
    theirs = Qwen3NextForCausalLM.from_pretrained(tmp_path / "next").eval()
    assert (tmp_path / "next" / "tokenizer.json").is_file()
    ids = torch.randint(0, tokenizer.vocab_size, (2, 9))
    with torch.no_grad():
        assert (theirs(ids).logits - lm(ids).logits).abs().max() <= 1e-5
    with pytest.raises(ConversionError, match="gate='sdpa-elementwise'"):
        export_model(lm, tmp_path / "qwen3", to="qwen3")
    assert not (tmp_path / "qwen3").exists()  # refused before anything is written
    with pytest.raises(ConversionError, match="not empty"):
        export_model(lm, tmp_path / "next", to="qwen3-next")
    export_model(lm, tmp_path / "next", overwrite=True)
    assert json.loads((tmp_path / "next" / "config.json").read_text())["model_type"] == (
        "gated_attention"
    )
    with pytest.raises(ConversionError, match="unknown format 'qwen4'"):
        export_model(lm, tmp_path / "x", to="qwen4")


def test_cli_exports_a_run_its_final_and_any_checkpoint(tmp_path, tokenizer_dir, capsys):
    run, lm = _run(tmp_path, tokenizer_dir, gate="sdpa-headwise")
    ids = torch.randint(0, lm.cfg.vocab_size, (1, 8))
    sources = {
        "run": run,
        "final": run / "final",
        "step10": run / "checkpoints" / "step_0000010",
        "step5": run / "checkpoints" / "step_0000005",
    }
    for name, src in sources.items():
        out = tmp_path / f"out-{name}"
        assert main(["export", str(src), str(out)]) == 0
        assert f"tokenizer {run / 'tokenizer.json'}" in capsys.readouterr().out
        model = AutoModelForCausalLM.from_pretrained(out).eval()
        AutoTokenizer.from_pretrained(out)
        want = ckpt.load_model(src)(ids).logits
        assert torch.equal(model(ids).logits, want), name
    assert not torch.equal(
        AutoModelForCausalLM.from_pretrained(tmp_path / "out-step5")(ids).logits, lm(ids).logits
    )
    # the source is never a destination, even with --overwrite
    for out in (run, run / "final"):
        assert main(["export", str(run / "final"), str(out), "--overwrite"]) == 2
        assert "would overwrite the source" in capsys.readouterr().err
    assert (run / "final" / "model.safetensors").is_file()


def test_cli_without_a_tokenizer_and_errors(tmp_path, tokenizer_dir, capsys):
    run, _ = _run(tmp_path, tokenizer_dir)
    (run / "tokenizer.json").unlink()  # a synthetic-task run has none
    assert main(["export", str(run), str(tmp_path / "out")]) == 0
    assert "no tokenizer" in capsys.readouterr().out
    assert not (tmp_path / "out" / "tokenizer.json").exists()
    assert main(["export", str(run), str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(run), str(tmp_path / "q"), "--to", "qwen3-moe"]) == 2
    assert "moe=None" in capsys.readouterr().err


# ---------------------------------------------------------------------- Auto registration
def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("saved") / "model"
    tokenizer = load_tokenizer(tokenizer_dir)
    export_model(_lm(tokenizer.vocab_size), out, tokenizer=tokenizer)
    return out


def test_pipeline_generates_from_an_exported_directory(saved):
    from transformers import pipeline

    generator = pipeline("text-generation", model=str(saved))
    assert type(generator.model) is GatedAttentionForCausalLM
    text = generator(TEXTS[0][:12], max_new_tokens=6, do_sample=False)[0]["generated_text"]
    ids = generator.tokenizer(TEXTS[0][:12], return_tensors="pt").input_ids
    want = generator.model.generate(ids, max_new_tokens=6, do_sample=False)
    assert text == generator.tokenizer.decode(want[0], skip_special_tokens=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "code",
    [
        "import gated_attention\nfrom transformers import AutoModelForCausalLM",
        "import gated_attention\nfrom transformers import AutoConfig as AutoModelForCausalLM",
        "from transformers import AutoModelForCausalLM\nimport gated_attention",
        "import gated_attention\nfrom transformers import AutoTokenizer, AutoModelForCausalLM\n"
        "AutoTokenizer.from_pretrained(PATH)",
        "import gated_attention, transformers.pipelines\n"
        "from transformers import AutoModelForCausalLM",
        "import gated_attention, peft\nfrom transformers import AutoModelForCausalLM",
    ],
    ids=["auto-model", "auto-config", "transformers-first", "tokenizer-first", "pipelines", "peft"],
)
def test_import_gated_attention_registers_the_auto_classes(saved, code):
    code = code.replace("PATH", repr(str(saved)))
    out = _python(f"{code}\nprint(type(AutoModelForCausalLM.from_pretrained({str(saved)!r})))")
    assert "GatedAttention" in out


@pytest.mark.slow
def test_registration_stays_lazy():
    code = (
        "import sys, gated_attention\n"
        "assert 'transformers' not in sys.modules\n"
        "from transformers import PreTrainedTokenizerFast\n"  # what the trainer imports
        "assert 'gated_attention.hf' not in sys.modules\n"
        "from gated_attention.cli import build_parser\n"
        "build_parser(['export'])\n"
        "assert 'gated_attention.hf' not in sys.modules\n"
        "print('lazy')"
    )
    assert "lazy" in _python(code)


# ---------------------------------------------------------------------- README
def readme_blocks(section: str = "Use with transformers") -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block in the README section ``section``."""
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", body, flags=re.S)


@pytest.mark.slow
def test_readme_transformers_section_runs_as_written_on_an_exported_run(
    tmp_path, monkeypatch, capsys
):
    blocks = readme_blocks()
    assert [lang for lang, _ in blocks] == ["bash", "python", "python", "python"]
    monkeypatch.chdir(tmp_path)
    # `make demo` writes runs/quick (the quick preset); the smoke preset writes the same layout
    # in seconds.
    assert main(["reproduce", "--preset", "smoke", "--out", "runs/quick", "--no-progress"]) == 0
    for line in blocks[0][1].strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "gated-attention"
        assert main(argv[1:]) == 0
    namespace: dict = {}
    for _, code in blocks[1:]:
        exec(compile(code, "README.md", "exec"), namespace)
    model = namespace["model"]
    assert type(model) is GatedAttentionForCausalLM and model.model.checkpointing == "full"
    assert "The king" in capsys.readouterr().out
    assert Path("runs/model-ft").is_dir()
