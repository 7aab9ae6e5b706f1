"""Dataset loaders for the bundled lm-evaluation-harness tasks (``custom_dataset`` in the YAMLs).

The data are small JSONL files next to this module, read into in-memory ``datasets`` objects: no
hub lookup and no dependence on the working directory (a ``dataset_path: json`` task would resolve
``data_files`` against the current directory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

DATA = Path(__file__).resolve().parent / "data"


def _load(name: str) -> dict[str, datasets.Dataset]:
    """``data/<name>.jsonl`` as the ``test`` split."""
    lines = (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return {"test": datasets.Dataset.from_list(rows, split=datasets.Split.TEST)}


# lm-eval passes the task metadata and dataset_kwargs as keyword arguments; none apply here.
def load_choice(**_: Any) -> dict[str, datasets.Dataset]:
    """Multiple choice: ``context``, ``choices`` (4 strings), ``label`` (index of the answer)."""
    return _load("choice")


def load_rolling(**_: Any) -> dict[str, datasets.Dataset]:
    """Whole-document perplexity: ``text``."""
    return _load("rolling")


def load_generate(**_: Any) -> dict[str, datasets.Dataset]:
    """Short-answer generation: ``prompt`` and the expected ``answer``."""
    return _load("generate")
