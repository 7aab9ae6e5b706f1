"""``gated-attention convert``: both directions, and one-line errors with exit code 2."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3ForCausalLM

from gated_attention.cli import build_parser, main
from gated_attention.cli import convert as commands
from gated_attention.hf import convert
from tests.hf.helpers import VOCAB, perturb, qwen3_config


def test_formats_agree_and_command_is_registered():
    assert commands.FORMATS == convert.FORMATS
    args = build_parser(["convert", "--to", "qwen3-next", "a", "b"]).parse_args(
        ["convert", "--to", "qwen3-next", "a", "b"]
    )
    assert (args.to_format, args.from_format, args.src, args.dst) == ("qwen3-next", None, "a", "b")


def test_convert_both_directions(tmp_path, capsys):
    ref = perturb(Qwen3ForCausalLM(qwen3_config(tie_word_embeddings=True)))
    ref.save_pretrained(tmp_path / "qwen3")
    assert (
        main(["convert", "--from", "qwen3", str(tmp_path / "qwen3"), str(tmp_path / "ours")]) == 0
    )
    assert "imported qwen3 checkpoint" in capsys.readouterr().out
    assert main(["convert", "--to", "qwen3", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    ids = torch.randint(0, VOCAB, (1, 7))
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert torch.equal(back(ids).logits, ref(ids).logits)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_errors_print_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["convert", "--from", "paper", str(tmp_path / "empty"), str(tmp_path / "x")]) == 2
    assert _error_line(capsys).startswith("gated-attention convert: error:")
    (tmp_path / "empty" / "config.json").write_text(
        json.dumps(
            {
                "model_type": "qwen3",
                "headwise_attn_output_gate": True,
                "elementwise_attn_output_gate": True,
            }
        )
    )
    code = main(["convert", "--from", "paper", str(tmp_path / "empty"), str(tmp_path / "x")])
    assert code == 2
    assert "both headwise_attn_output_gate and elementwise" in _error_line(capsys)
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    assert main(["convert", "--from", "paper", str(tmp_path / "empty"), str(tmp_path / "x")]) == 2
    assert "lacks 'vocab_size'" in _error_line(capsys)
    ref = perturb(Qwen3ForCausalLM(qwen3_config()))
    ref.save_pretrained(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "model.safetensors").write_bytes(b"not a safetensors file")
    capsys.readouterr()  # drop the progress bar of save_pretrained
    assert main(["convert", "--from", "qwen3", str(tmp_path / "corrupt"), str(tmp_path / "x")]) == 2
    assert "could not be read" in _error_line(capsys)
    assert main(["convert", "--to", "paper", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "is not a directory" in _error_line(capsys)


def test_direction_is_required_and_exclusive(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser(["convert", "--from", "paper", "--to", "qwen3", "a", "b"]).parse_args(
            ["convert", "--from", "paper", "--to", "qwen3", "a", "b"]
        )
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        build_parser(["convert", "a", "b"]).parse_args(["convert", "a", "b"])
    capsys.readouterr()
