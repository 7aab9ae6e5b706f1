"""Read documents (plain strings) from the places a user may keep text, as a stream.

Inputs are resolved into a sorted list of :class:`InputFile` by :func:`resolve_inputs`; each
entry of a spec may be

* a glob (``data/*.parquet``, ``shards/**/*.jsonl.zst``; sorted, an empty match is an error);
* a ``.txt`` file: documents are separated by two or more consecutive blank lines, so single
  blank lines (paragraph breaks) stay inside a document; a file without such gaps is one
  document. The file is read line by line, never whole;
* a ``.jsonl``, ``.jsonl.gz`` or ``.jsonl.zst`` file: one JSON object per line, text in
  ``text_field`` (``.zst`` needs the ``zstandard`` package);
* a ``.parquet`` file: the string column ``text_field``, read one row group at a time
  (needs ``pyarrow``);
* a directory with ``documents.jsonl`` (a corpus from :func:`~gated_attention.data.prepare_corpus`);
* a directory written by ``datasets.Dataset.save_to_disk`` (needs ``datasets``; a
  ``DatasetDict`` uses its ``split`` split; rows are read from the memory-mapped Arrow files);
* ``hf:NAME`` or ``hf:NAME:CONFIG``: a ``datasets`` builder on the Hugging Face Hub, read with
  ``streaming=True`` (needs network access when it runs; nothing else here does);
* any other directory: every ``*.txt`` file below it is one document, and every
  ``.jsonl[.gz|.zst]`` / ``.parquet`` file below it is read as above (sorted by relative path).

Matches of a glob are read like the files of a directory (a ``.txt`` match is one document).
Every input is a sequence of *records* (lines, rows, documents) numbered from 0; a position
``(input index, record index)`` names one record, which is what lets
:mod:`gated_attention.data.tokenize` resume a stream mid-way without reading it into memory.
Whitespace-only documents are skipped; a spec that yields no document at all is an error.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from gated_attention.data.errors import DataError

DocumentSpec = str | os.PathLike[str] | Sequence[str]
"""A path or glob, a list of paths and globs (see :func:`resolve_inputs`), or for
:func:`iter_documents` also a list of the documents themselves."""

HUB_PREFIX = "hf:"
_GLOB_CHARS = frozenset("*?[")
# Suffixes read as record streams when found in a directory or a glob match.
_RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
_INSTALL_HINT = "pip install 'gated-attention[data]'"
_ROWS_PER_BATCH = 1024


@dataclass(frozen=True)
class InputFile:
    """One resolved input.

    Attributes:
        path: absolute path, or ``hf:NAME[:CONFIG]`` for a Hub builder.
        kind: ``"text"`` (a ``.txt`` file split at double blank lines), ``"text-file"`` (a
            ``.txt`` file that is one document), ``"jsonl"``, ``"parquet"``, ``"saved"``
            (``save_to_disk`` directory) or ``"hub"``.
        size: bytes on disk (0 for directories and the Hub).
        mtime_ns: modification time in nanoseconds (0 for the Hub).
    """

    path: str
    kind: str
    size: int = 0
    mtime_ns: int = 0

    @property
    def name(self) -> str:
        """The file name (or the Hub spec), for messages."""
        return self.path if self.kind == "hub" else Path(self.path).name

    def identity(self) -> dict[str, Any]:
        """What a cache built from this input depends on (path, kind, size and mtime)."""
        return {"path": self.path, "kind": self.kind, "size": self.size, "mtime_ns": self.mtime_ns}


def _stat(path: Path, kind: str) -> InputFile:
    if kind == "saved":  # a directory: its Arrow files are what changes
        files = sorted(p for p in path.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in files)
        mtime = max((p.stat().st_mtime_ns for p in files), default=0)
        return InputFile(str(path.absolute()), kind, size, mtime)
    st = path.stat()
    return InputFile(str(path.absolute()), kind, st.st_size, st.st_mtime_ns)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _record_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")):
        return "jsonl"
    return None


def _resolve_path(path: Path, whole_txt: bool) -> list[InputFile]:
    """Inputs of one existing path (``whole_txt``: a ``.txt`` file is one document)."""
    if path.is_dir():
        if (path / "documents.jsonl").is_file():
            return [_stat(path / "documents.jsonl", "jsonl")]
        if _is_saved_dataset(path):
            return [_stat(path, "saved")]
        found = []
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            if file.suffix == ".txt":
                found.append(_stat(file, "text-file"))
            elif _record_kind(file):
                found.append(_stat(file, _record_kind(file)))
        if not found:
            raise DataError(
                f"directory {path} has no .txt files (nor .jsonl[.gz|.zst] or .parquet files, "
                "documents.jsonl or saved datasets data)"
            )
        return found
    kind = _record_kind(path)
    if kind is None and path.suffix == ".txt":
        kind = "text-file" if whole_txt else "text"
    if kind is None:
        raise DataError(
            f"unsupported document file {path.name!r}; use .txt, .jsonl, .jsonl.gz, .jsonl.zst "
            "or .parquet files, a directory of them, a prepared corpus directory, a datasets "
            "save_to_disk directory or hf:NAME"
        )
    return [_stat(path, kind)]


def resolve_inputs(
    spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[InputFile]:
    """The inputs named by a path, glob, ``hf:`` name or a list of them, in reading order.

    Globs are expanded (recursively for ``**``) and sorted; ``~`` and ``$VARS`` are expanded.

    Raises:
        DataError: a path that does not exist, a glob that matches nothing, an unsupported file,
            a directory with nothing to read, or an environment variable that is not set.
    """
    entries = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not entries:
        raise DataError("no document source given (an empty list of paths)")
    inputs: list[InputFile] = []
    for entry in entries:
        text = expand_path(entry)
        if text.startswith(HUB_PREFIX):
            inputs.append(InputFile(text, "hub"))
            continue
        if _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise DataError(f"no files match the glob {text!r}")
            for match in matches:
                p = Path(match)
                if p.is_dir() and not _is_saved_dataset(p):
                    continue  # e.g. data/** also yields directories; their files match too
                inputs.extend(_resolve_path(p, whole_txt=True))
            continue
        path = Path(text)
        if not path.exists():
            raise DataError(f"document source {path} does not exist")
        inputs.extend(_resolve_path(path, whole_txt=False))
    if not inputs:
        raise DataError(f"no readable files in {', '.join(map(str, entries))}")
    return inputs


def expand_path(entry: str | os.PathLike[str]) -> str:
    """``entry`` with ``~`` and ``$VARS`` expanded; an unset variable is an error naming it."""
    raw = os.fspath(entry)
    text = os.path.expandvars(os.path.expanduser(raw))
    if "$" in text:
        var = text[text.index("$") :].split("/")[0].strip("${}")
        raise DataError(
            f"data path {raw!r} names the environment variable {var}, which is not set; "
            f"export {var}=/path/to/corpus (text, JSONL, parquet or a prepared shard directory)"
        )
    return text


# --------------------------------------------------------------------------- record readers


class _ZstdReader(io.RawIOBase):
    """Decompressed bytes of a (multi-frame) ``.zst`` file; a file that ends inside a frame
    raises :class:`DataError` instead of passing for a shorter file."""

    def __init__(self, path: Path, zstandard: Any) -> None:
        self._path = path
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._dctx = zstandard.ZstdDecompressor()
        self._dobj = self._dctx.decompressobj()
        self._fed = False
        self._buffer = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while self._pos == len(self._buffer):
            self._buffer, self._pos = b"", 0
            data = self._file.read(1 << 20)
            if not data:
                if self._fed and not self._dobj.eof:
                    raise DataError(f"{self._path} could not be read (it ends inside a frame)")
                return 0
            while data:
                self._fed = True
                self._buffer += self._dobj.decompress(data)
                data = b""
                if self._dobj.eof:  # the next frame starts in the unused input
                    data = self._dobj.unused_data
                    self._dobj = self._dctx.decompressobj()
                    self._fed = False
        n = min(len(target), len(self._buffer) - self._pos)
        target[:n] = self._buffer[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def _open_text(path: Path) -> io.TextIOBase:
    """A text handle on ``path``, decompressing ``.gz`` and ``.zst`` on the fly."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError as exc:
            raise DataError(
                f"{path} is zstandard-compressed but the 'zstandard' package is not installed "
                f"({_INSTALL_HINT})"
            ) from exc
        raw = io.BufferedReader(_ZstdReader(path, zstandard), buffer_size=1 << 20)
        return io.TextIOWrapper(raw, encoding="utf-8")
    return open(path, encoding="utf-8")


def _split_text(lines: Iterator[str]) -> Iterator[str]:
    """Documents of a text stream separated by two or more blank lines (``[ \\t]*`` lines).

    Equivalent to ``re.split(r"\\n(?:[ \\t]*\\n){2,}", text)`` followed by ``str.strip`` on each
    piece, but line by line, so memory is bounded by the longest document.
    """
    doc: list[str] = []
    blanks: list[str] = []
    for line in lines:
        if line.strip(" \t\n") == "":
            blanks.append(line)
            continue
        if len(blanks) >= 2:
            yield "".join(doc).strip()
            doc = []
        elif blanks:
            doc.extend(blanks)
        blanks = []
        doc.append(line)
    yield "".join(doc).strip()


def _iter_text(path: Path, whole: bool) -> Iterator[str]:
    try:
        with _open_text(path) as handle:
            if whole:
                yield handle.read()
            else:
                yield from _split_text(handle)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _iter_jsonl(path: Path, text_field: str, start: int) -> Iterator[str | None]:
    """One item per line from line ``start`` on: the text, or ``None`` for a blank line."""
    try:
        with _open_text(path) as handle:
            for lineno, line in enumerate(islice(handle, start, None), start + 1):
                if not line.strip():
                    yield None
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno} is not valid JSON ({exc.msg})") from exc
                if not isinstance(record, dict) or text_field not in record:
                    raise DataError(
                        f"{path}:{lineno} has no {text_field!r} field (set data.text_field)"
                    )
                text = record[text_field]
                if not isinstance(text, str):
                    raise DataError(
                        f"{path}:{lineno} field {text_field!r} is {type(text).__name__}, "
                        "not a string"
                    )
                yield text
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason})") from exc
    except (OSError, EOFError) as exc:  # a truncated or damaged .gz
        raise DataError(f"{path} could not be read ({exc})") from exc
    except Exception as exc:
        if type(exc).__name__ == "ZstdError":  # a truncated or damaged .zst
            raise DataError(f"{path} could not be read ({exc})") from exc
        raise


def _require(module: str, path: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise DataError(
            f"reading {path} needs {module}, but the optional {module!r} package is not "
            f"installed ({_INSTALL_HINT})"
        ) from exc


def _check_string_column(path: str, field: str, names: list[str], type_: Any = None) -> None:
    if field not in names:
        raise DataError(
            f"{path} has no column {field!r} (columns: {', '.join(names)}); "
            "set data.text_field (--text-field) to the column holding the text"
        )
    if type_ is not None:
        import pyarrow as pa

        value = type_.value_type if pa.types.is_dictionary(type_) else type_
        if not (pa.types.is_string(value) or pa.types.is_large_string(value)):
            raise DataError(f"{path} column {field!r} has type {type_}, not string")


def _iter_parquet(path: Path, text_field: str, start: int) -> Iterator[str | None]:
    """Rows of the ``text_field`` column from row ``start`` on, one row group at a time."""
    _require("pyarrow", str(path))
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid etc.
        raise DataError(f"{path} is not a readable parquet file ({exc})") from exc
    schema = pf.schema_arrow
    names = list(schema.names)
    type_ = schema.field(text_field).type if text_field in names else None
    _check_string_column(str(path), text_field, names, type_)
    meta = pf.metadata
    skip = start
    first = 0
    while first < meta.num_row_groups and skip >= meta.row_group(first).num_rows:
        skip -= meta.row_group(first).num_rows
        first += 1
    if first == meta.num_row_groups:
        return
    batches = pf.iter_batches(
        batch_size=_ROWS_PER_BATCH,
        columns=[text_field],
        row_groups=range(first, meta.num_row_groups),
        use_threads=False,
    )
    for batch in batches:
        values = batch.column(0).to_pylist()
        if skip:
            drop = min(skip, len(values))
            values, skip = values[drop:], skip - drop
        yield from values


def _iter_saved(path: Path, text_field: str, split: str, start: int) -> Iterator[str | None]:
    datasets = _require("datasets", str(path))
    dataset = datasets.load_from_disk(str(path))
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise DataError(f"{path} has splits {sorted(dataset)}; split={split!r} is not one")
        dataset = dataset[split]
    _check_string_column(str(path), text_field, dataset.column_names)
    dataset = dataset.select_columns([text_field])
    for lo in range(start, len(dataset), _ROWS_PER_BATCH):
        yield from dataset[lo : lo + _ROWS_PER_BATCH][text_field]


def _iter_hub(spec: str, text_field: str, split: str, start: int) -> Iterator[str | None]:
    """A Hub builder with ``streaming=True``: ``hf:NAME`` or ``hf:NAME:CONFIG``."""
    datasets = _require("datasets", spec)
    name, _, config = spec[len(HUB_PREFIX) :].partition(":")
    stream = datasets.load_dataset(name, config or None, split=split, streaming=True)
    if start:
        stream = stream.skip(start)
    for row in stream:
        if text_field not in row:
            raise DataError(
                f"{spec} has no column {text_field!r} (columns: {', '.join(row)}); "
                "set data.text_field (--text-field)"
            )
        yield row[text_field]


def iter_records(
    inp: InputFile, *, text_field: str = "text", split: str = "train", start: int = 0
) -> Iterator[str | None]:
    """The records of one input from record ``start`` on: text, or ``None`` for an empty record.

    Record numbering: lines of a JSONL file, rows of a parquet file or dataset, documents of a
    ``.txt`` file (pieces between double blank lines, empty pieces included), and the single
    document of a one-document ``.txt`` file. Values that are not strings (``null`` rows)
    count as empty records.
    """
    path = Path(inp.path)
    if inp.kind == "jsonl":
        records: Iterator[Any] = _iter_jsonl(path, text_field, start)
    elif inp.kind == "parquet":
        records = _iter_parquet(path, text_field, start)
    elif inp.kind == "saved":
        records = _iter_saved(path, text_field, split, start)
    elif inp.kind == "hub":
        records = _iter_hub(inp.path, text_field, split, start)
    elif inp.kind in ("text", "text-file"):
        records = islice(_iter_text(path, whole=inp.kind == "text-file"), start, None)
    else:  # pragma: no cover - InputFile is only built here
        raise DataError(f"unknown input kind {inp.kind!r} for {inp.path}")
    for record in records:
        yield record if isinstance(record, str) else None


@dataclass(frozen=True)
class Record:
    """One non-empty document of a stream and where it came from."""

    input: int
    """Index of its input in the stream's input list."""
    index: int
    """Record index within that input (see :func:`iter_records`)."""
    text: str


def iter_stream(
    inputs: Sequence[InputFile],
    *,
    text_field: str = "text",
    split: str = "train",
    start: tuple[int, int] = (0, 0),
) -> Iterator[Record]:
    """The non-blank documents of ``inputs`` in order, from position ``start`` =
    ``(input index, record index)`` on, each with its position."""
    first_input, first_record = start
    for i in range(first_input, len(inputs)):
        skip = first_record if i == first_input else 0
        for j, text in enumerate(
            iter_records(inputs[i], text_field=text_field, split=split, start=skip), skip
        ):
            if text is not None and text.strip():
                yield Record(i, j, text)


def iter_documents(
    spec: DocumentSpec, *, text_field: str = "text", split: str = "train"
) -> Iterator[str]:
    """Yield the non-blank documents of ``spec`` (see the module docstring for accepted specs).

    Args:
        spec: a path, glob or ``hf:`` name, or a sequence of the documents themselves (for a
            list of paths, use :func:`iter_stream` on :func:`resolve_inputs` of the list).
        text_field: JSON field / column holding the text (JSONL, parquet and ``datasets``).
        split: split of a saved ``DatasetDict`` or a Hub builder.

    Raises:
        DataError: missing path, unsupported file, malformed record, or no document at all
            (raised when the iterator is exhausted without yielding).
    """
    count = 0
    if isinstance(spec, (str, os.PathLike)):
        texts: Iterator[str] = (
            r.text for r in iter_stream(resolve_inputs(spec), text_field=text_field, split=split)
        )
    else:
        texts = _checked_strings(spec)
    for text in texts:
        if text.strip():
            count += 1
            yield text
    if count == 0:
        where = spec if isinstance(spec, (str, os.PathLike)) else "the given sequence"
        raise DataError(f"no non-empty documents found in {where}")


def _checked_strings(docs: Sequence[str]) -> Iterator[str]:
    for i, text in enumerate(docs):
        if not isinstance(text, str):
            raise DataError(f"document {i} is {type(text).__name__}, not a string")
        yield text


def load_documents(
    spec: DocumentSpec, *, text_field: str = "text", split: str = "train"
) -> list[str]:
    """All non-blank documents of ``spec`` as a list (see :func:`iter_documents`)."""
    return list(iter_documents(spec, text_field=text_field, split=split))
