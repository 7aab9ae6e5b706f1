"""Read documents (plain strings) from the places a user may keep text.

Accepted specs, checked in this order:

* a sequence of strings (used as is);
* a directory with ``documents.jsonl`` (a corpus from :func:`~gated_attention.data.prepare_corpus`);
* a directory written by ``datasets.Dataset.save_to_disk`` (needs the optional ``datasets``
  package; a ``DatasetDict`` uses its ``split`` split);
* any other directory: every ``*.txt`` file below it (recursively, sorted by relative path) is
  one document;
* a ``.jsonl`` file: one JSON object per line, text in ``text_field``;
* a ``.txt`` file: documents are separated by two or more consecutive blank lines, so single
  blank lines (paragraph breaks) stay inside a document; a file without such gaps is one document.

Whitespace-only documents are skipped; a spec that yields no document at all is an error.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from gated_attention.data.errors import DataError

DocumentSpec = str | os.PathLike[str] | Sequence[str]

_TXT_SEPARATOR = re.compile(r"\n(?:[ \t]*\n){2,}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno} is not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or text_field not in record:
                raise DataError(f"{path}:{lineno} has no {text_field!r} field (text_field)")
            text = record[text_field]
            if not isinstance(text, str):
                raise DataError(
                    f"{path}:{lineno} field {text_field!r} is {type(text).__name__}, not a string"
                )
            yield text


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _iter_saved_dataset(path: Path, text_field: str, split: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            f"{path} is a Hugging Face datasets directory but the optional 'datasets' package "
            "is not installed (pip install datasets)"
        ) from exc
    dataset = datasets.load_from_disk(str(path))
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise DataError(f"{path} has splits {sorted(dataset)}; split={split!r} is not one")
        dataset = dataset[split]
    if text_field not in dataset.column_names:
        raise DataError(
            f"{path} has columns {dataset.column_names}; text_field={text_field!r} is not one"
        )
    for batch in dataset.select_columns([text_field]).iter(batch_size=1024):
        yield from (t for t in batch[text_field] if isinstance(t, str))


def _iter_raw(spec: DocumentSpec, text_field: str, split: str) -> Iterator[str]:
    if not isinstance(spec, (str, os.PathLike)):
        for i, text in enumerate(spec):
            if not isinstance(text, str):
                raise DataError(f"document {i} is {type(text).__name__}, not a string")
            yield text
        return
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"document source {path} does not exist")
    if path.is_dir():
        if (path / "documents.jsonl").is_file():
            yield from _iter_jsonl(path / "documents.jsonl", "text")
        elif _is_saved_dataset(path):
            yield from _iter_saved_dataset(path, text_field, split)
        else:
            files = sorted(path.rglob("*.txt"))
            if not files:
                raise DataError(
                    f"directory {path} has no .txt files, documents.jsonl or saved datasets data"
                )
            for file in files:
                yield _read_text(file)
    elif path.suffix == ".jsonl":
        yield from _iter_jsonl(path, text_field)
    elif path.suffix == ".txt":
        yield from (doc.strip() for doc in _TXT_SEPARATOR.split(_read_text(path)))
    else:
        raise DataError(
            f"unsupported document file {path.name!r}; use a .txt or .jsonl file, a directory of "
            ".txt files, a prepared corpus directory or a datasets save_to_disk directory"
        )


def iter_documents(
    spec: DocumentSpec, *, text_field: str = "text", split: str = "train"
) -> Iterator[str]:
    """Yield the non-blank documents of ``spec`` (see the module docstring for accepted specs).

    Args:
        spec: a path or a sequence of strings.
        text_field: JSON field / dataset column holding the text (``.jsonl`` and ``datasets``).
        split: split of a saved ``DatasetDict``.

    Raises:
        DataError: missing path, unsupported file, malformed record, or no document at all
            (raised when the iterator is exhausted without yielding).
    """
    count = 0
    for text in _iter_raw(spec, text_field, split):
        if text.strip():
            count += 1
            yield text
    if count == 0:
        where = spec if isinstance(spec, (str, os.PathLike)) else "the given sequence"
        raise DataError(f"no non-empty documents found in {where}")


def load_documents(
    spec: DocumentSpec, *, text_field: str = "text", split: str = "train"
) -> list[str]:
    """All non-blank documents of ``spec`` as a list (see :func:`iter_documents`)."""
    return list(iter_documents(spec, text_field=text_field, split=split))
