from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gated_attention.data import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    DataError,
    load_tokenizer,
    tokenizer_fingerprint,
    train_tokenizer,
)


def test_special_tokens_have_fixed_ids(tokenizer_dir: Path) -> None:
    tok = load_tokenizer(tokenizer_dir)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    assert len(tok) == 400
    assert (tokenizer_dir / "tokenizer.json").is_file()
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


@pytest.mark.parametrize(
    "text",
    [
        "The king walked to the castle.",
        "  leading spaces, tabs\tand\nnewlines\n\n",
        "Unicode: naïve café — 東京 🙂, and bytes never seen in training.",
    ],
)
def test_round_trip(tokenizer_dir: Path, text: str) -> None:
    tok = load_tokenizer(tokenizer_dir)
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    # encode never inserts special tokens on its own; the data pipeline adds them.
    assert tok.bos_token_id not in ids and tok.eos_token_id not in ids


def test_load_accepts_file_or_directory(tokenizer_dir: Path) -> None:
    a = load_tokenizer(tokenizer_dir)
    b = load_tokenizer(tokenizer_dir / "tokenizer.json")
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)


def test_training_is_deterministic(tmp_path: Path, documents: list[str]) -> None:
    a = train_tokenizer(documents, 350, out_dir=tmp_path / "a")
    b = train_tokenizer(iter(documents), 350, out_dir=tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    c = train_tokenizer(documents, 360, out_dir=tmp_path / "c")
    assert c.read_bytes() != a.read_bytes()


def test_training_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="vocab_size"):
        train_tokenizer(["some text"], 100, out_dir=tmp_path)
    with pytest.raises(DataError, match="zero documents"):
        train_tokenizer([], 300, out_dir=tmp_path)


def _foreign_tokenizer(path: Path, specials: list[str]) -> Path:
    """A small byte-level BPE saved as a bare tokenizer.json with the given special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["hello world"] * 10, trainer=trainer)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    return path / "tokenizer.json"


def test_gpt2_style_tokenizer_falls_back_to_endoftext(tmp_path: Path) -> None:
    file = _foreign_tokenizer(tmp_path / "gpt2", ["<|endoftext|>"])
    tok = load_tokenizer(file)
    assert tok.eos_token == tok.bos_token == tok.pad_token == "<|endoftext|>"
    assert tok.decode(tok.encode("hello world", add_special_tokens=False)) == "hello world"


def test_llama_style_tokenizer_uses_its_own_names(tmp_path: Path) -> None:
    tok = load_tokenizer(_foreign_tokenizer(tmp_path / "llama", ["<s>", "</s>", "<pad>"]))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")


def test_tokenizer_without_end_token_is_rejected(tmp_path: Path) -> None:
    file = _foreign_tokenizer(tmp_path / "bare", [])
    with pytest.raises(DataError, match="no end-of-document token"):
        load_tokenizer(file)


def test_missing_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(tmp_path)
