from __future__ import annotations

import json
from pathlib import Path

import pytest

from gated_attention.data import DataError, iter_documents, load_documents


def test_txt_file_splits_on_two_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("First doc.\n\nStill first.\n\n\nSecond doc.\n\n  \n\n\n\nThird.\n")
    assert load_documents(path) == ["First doc.\n\nStill first.", "Second doc.", "Third."]


def test_directory_of_txt_files(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("two\n\n\nstill two")
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "blank.txt").write_text("  \n")
    (tmp_path / "notes.md").write_text("ignored")
    assert load_documents(tmp_path) == ["one", "two\n\n\nstill two"]


def test_jsonl_with_custom_field(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    rows = [{"body": "alpha"}, {"body": ""}, {"body": "beta"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_documents(path, text_field="body") == ["alpha", "beta"]
    with pytest.raises(DataError, match="no 'text' field"):
        load_documents(path)


def test_prepared_corpus_directory(tmp_path: Path) -> None:
    lines = [json.dumps({"text": t, "source": "x"}) for t in ("one", "two")]
    (tmp_path / "documents.jsonl").write_text("\n".join(lines) + "\n")
    assert load_documents(tmp_path) == ["one", "two"]


def test_sequence_of_strings() -> None:
    assert load_documents(["a", " ", "b"]) == ["a", "b"]


def test_errors_are_one_line(tmp_path: Path) -> None:
    cases = {
        tmp_path / "missing.txt": "does not exist",
        tmp_path / "data.csv": "unsupported document file",
        tmp_path / "empty.txt": "no non-empty documents",
        tmp_path / "bad.jsonl": "is not valid JSON",
        tmp_path / "emptydir": "has no .txt files",
    }
    (tmp_path / "data.csv").write_text("a,b")
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    (tmp_path / "emptydir").mkdir()
    for path, message in cases.items():
        with pytest.raises(DataError, match=message) as exc:
            load_documents(path)
        assert "\n" not in str(exc.value)


def test_iterator_is_lazy(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("one\n\n\ntwo")
    it = iter_documents(path)
    assert next(it) == "one"
    assert list(it) == ["two"]


def test_saved_hf_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["x", "y"]}).save_to_disk(str(tmp_path / "ds"))
    assert load_documents(tmp_path / "ds") == ["x", "y"]


def test_saved_hf_dataset_without_datasets_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "state.json").write_text("{}")
    (tmp_path / "ds" / "dataset_info.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match="'datasets' package is not installed"):
        load_documents(tmp_path / "ds")
