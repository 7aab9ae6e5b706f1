"""Byte-level BPE tokenizers: training one on a corpus, and loading any ``tokenizer.json``.

Trained tokenizers use GPT-2's byte-level scheme (every byte is in the base alphabet, so any text
round-trips exactly) and reserve ids 0, 1, 2 for the special tokens :data:`BOS_TOKEN`,
:data:`EOS_TOKEN` (end of document) and :data:`PAD_TOKEN`. No special token is inserted by
``encode``; the data pipeline appends the end-of-document token itself and the dataset decides
whether a window starts with BOS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gated_attention.data.errors import DataError

if TYPE_CHECKING:  # transformers takes ~0.5 s to import; only the functions need it
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)

# Names other tokenizers use for the same roles, tried in order when a tokenizer.json has none
# of ours (GPT-2: <|endoftext|> only; Llama: <s> and </s>; Llama 3: <|begin/end_of_text|>).
_EOS_FALLBACKS = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>", "[SEP]")
_BOS_FALLBACKS = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "[CLS]")
_PAD_FALLBACKS = ("<pad>", "<|padding|>", "[PAD]")

# 256 byte symbols plus our three special tokens.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
# Token files use uint32 at most.
MAX_VOCAB_SIZE = 2**32


def _counting(documents: Iterable[str], counter: list[int]) -> Iterator[str]:
    for doc in documents:
        counter[0] += 1
        yield doc


def train_tokenizer(
    documents: Iterable[str],
    vocab_size: int = 8192,
    *,
    out_dir: str | os.PathLike[str],
    min_frequency: int = 2,
) -> Path:
    """Train a byte-level BPE tokenizer on ``documents`` and save it to ``out_dir``.

    Training is deterministic: the same documents (in the same order) and settings give a
    byte-identical ``tokenizer.json``.

    Args:
        documents: the training texts.
        vocab_size: final vocabulary size including the 256 byte symbols and 3 special tokens
            (may end up smaller when the corpus has too few distinct merges).
        out_dir: directory that receives ``tokenizer.json`` and ``tokenizer_config.json``.
        min_frequency: minimum count of a pair to be merged.

    Returns:
        Path of the saved ``tokenizer.json``.
    """
    if int(vocab_size) != vocab_size or not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise DataError(
            f"vocab_size must be an integer in [{MIN_VOCAB_SIZE}, {MAX_VOCAB_SIZE}] (256 bytes "
            f"+ {len(SPECIAL_TOKENS)} special tokens at least), got {vocab_size!r}"
        )
    if int(min_frequency) != min_frequency or min_frequency < 1:
        raise DataError(f"min_frequency must be an integer >= 1, got {min_frequency!r}")
    start = time.perf_counter()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size),
        min_frequency=int(min_frequency),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    counter = [0]
    tokenizer.train_from_iterator(_counting(documents, counter), trainer=trainer)
    if counter[0] == 0:
        raise DataError("cannot train a tokenizer on zero documents")

    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )
    # Save into a scratch directory and move the files in, tokenizer.json last, so a reader
    # never finds a tokenizer.json whose config is missing or stale.
    scratch = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=out))
    try:
        fast.save_pretrained(str(scratch))
        config_path = scratch / "tokenizer_config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text(encoding="utf-8"))
            # Recent transformers write its own backend class name here; the generic
            # PreTrainedTokenizerFast loads with AutoTokenizer on older releases as well.
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        names = sorted(p.name for p in scratch.iterdir() if p.name != "tokenizer.json")
        for name in [*names, "tokenizer.json"]:
            os.replace(scratch / name, out / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info(
        "trained a %d-token BPE tokenizer on %d documents in %.1f s -> %s",
        tokenizer.get_vocab_size(),
        counter[0],
        time.perf_counter() - start,
        out,
    )
    return out / "tokenizer.json"


def tokenizer_file(path: str | os.PathLike[str]) -> Path:
    """The ``tokenizer.json`` named by ``path`` (the file itself or its directory)."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        hint = ""
        if p.parent.is_dir() and any(p.parent.glob("*.model")):
            hint = (
                "; this directory holds a slow (sentencepiece) tokenizer: write its fast "
                "tokenizer.json with AutoTokenizer.from_pretrained(dir).save_pretrained(dir)"
            )
        raise DataError(f"tokenizer file {p} does not exist{hint}")
    return p


def _configured_token(config: dict, key: str) -> str | None:
    value = config.get(key)
    if isinstance(value, dict):  # older transformers store AddedToken dicts
        value = value.get("content")
    return value if isinstance(value, str) else None


def _pick(vocab: dict[str, int], *candidates: str | None) -> str | None:
    return next((c for c in candidates if c is not None and c in vocab), None)


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """Load a ``tokenizer.json`` (or a directory holding one) with bos/eos/pad tokens set.

    Special tokens are resolved, for each role, from the first that exists in the vocabulary:
    the ``tokenizer_config.json`` (or ``special_tokens_map.json``) next to the file, our own ``<|bos|>/<|eos|>/<|pad|>``, then
    common names of other tokenizers. A tokenizer without a BOS token (GPT-2) uses its
    end-of-text token as BOS, and one without a pad token pads with its end-of-document token;
    padded positions are masked anyway. A tokenizer with no end-of-document token is an error,
    because the packed data separates documents with it.
    """
    file = tokenizer_file(path)
    config: dict = {}
    # tokenizer_config.json first; special_tokens_map.json fills the roles it leaves out.
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        config_path = file.parent / name
        if config_path.is_file():
            try:
                loaded = json.loads(config_path.read_text(encoding="utf-8"))
            except ValueError:
                continue
            if isinstance(loaded, dict):
                config.update({k: v for k, v in loaded.items() if v is not None})
    try:
        backend = Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
        raise DataError(f"{file} is not a valid tokenizer.json ({exc})") from exc
    vocab = backend.get_vocab(with_added_tokens=True)
    eos = _pick(vocab, _configured_token(config, "eos_token"), EOS_TOKEN, *_EOS_FALLBACKS)
    if eos is None:
        raise DataError(
            f"tokenizer {file} has no end-of-document token (looked for {EOS_TOKEN!r} and "
            f"{', '.join(_EOS_FALLBACKS)}); add one as a special token"
        )
    bos = _pick(vocab, _configured_token(config, "bos_token"), BOS_TOKEN, *_BOS_FALLBACKS) or eos
    pad = _pick(vocab, _configured_token(config, "pad_token"), PAD_TOKEN, *_PAD_FALLBACKS) or eos
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(file), bos_token=bos, eos_token=eos, pad_token=pad
    )


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """SHA-256 of the tokenizer's canonical serialisation (vocab, merges, special tokens, ...).

    Two tokenizers with the same fingerprint encode every text to the same ids.
    """
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")).hexdigest()
