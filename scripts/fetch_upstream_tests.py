"""Fetch the generic model tests that ship with the ``transformers`` release we test against.

The ``transformers`` source distribution on PyPI contains the top-level ``tests/*.py`` files of its
release (``test_modeling_common.py`` with ``ModelTesterMixin``, ``test_configuration_common.py``
with ``ConfigTester``, ...). ``tests/upstream/`` runs those mixins against our Hugging Face classes,
so this script downloads the sdist once, at set-up time, and unpacks only those files into a
git-ignored cache; the tests themselves then need no network::

    python scripts/fetch_upstream_tests.py            # the installed transformers version
    python scripts/fetch_upstream_tests.py --sdist transformers-5.24.0.tar.gz   # offline

Result: ``.cache/upstream/transformers-<version>/tests/`` with the upstream files, an empty
``__init__.py`` (upstream's repository has one; the sdist omits it, and ``ConfigTester`` imports
its own directory as a package through it), the release's ``LICENSE`` and ``SOURCE.txt`` (file
name and SHA-256 of the sdist). Running it again is a no-op once that directory is complete.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = ROOT / ".cache" / "upstream"
# Written last: its presence means the unpack finished (an interrupted run leaves no half tree).
STAMP = "SOURCE.txt"
# The files tests/upstream/ needs; their absence in an sdist means the layout changed.
REQUIRED = ("test_modeling_common.py", "test_configuration_common.py")


def upstream_dir(version: str, dest: Path = DEFAULT_DEST) -> Path:
    """Where the tests of ``transformers==version`` are unpacked."""
    return dest / f"transformers-{version}" / "tests"


def download_sdist(version: str, into: Path) -> Path:
    """Download the ``transformers==version`` source distribution from PyPI with pip."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"transformers=={version}",
        "--dest",
        str(into),
    ]
    subprocess.run(cmd, check=True)
    found = sorted(into.glob(f"transformers-{version}.tar.gz"))
    if not found:
        raise FileNotFoundError(f"pip did not produce transformers-{version}.tar.gz in {into}")
    return found[0]


def unpack_tests(sdist: Path, version: str, target: Path) -> list[str]:
    """Copy ``transformers-<version>/tests/*.py`` (top level only) and ``LICENSE`` from ``sdist``
    into ``target``; returns the test file names. Members are read, never extracted, so no path
    in the archive can write outside ``target``."""
    prefix = f"transformers-{version}/"
    names: list[str] = []
    target.mkdir(parents=True)
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.startswith(prefix):
                continue
            rel = member.name[len(prefix) :]
            parts = rel.split("/")
            if len(parts) == 2 and parts[0] == "tests" and parts[1].endswith(".py"):
                out = target / parts[1]
                names.append(parts[1])
            elif rel == "LICENSE":
                out = target / "LICENSE"
            else:
                continue
            source = tar.extractfile(member)
            assert source is not None  # a regular file member always has content
            out.write_bytes(source.read())
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        raise FileNotFoundError(f"{sdist.name} has no tests/{', tests/'.join(missing)}")
    (target / "__init__.py").write_text("")
    return sorted(names)


def fetch(version: str, dest: Path = DEFAULT_DEST, sdist: Path | None = None) -> Path:
    """Make sure the upstream tests of ``transformers==version`` are unpacked; return their dir."""
    target = upstream_dir(version, dest)
    if (target / STAMP).is_file():
        print(f"upstream transformers {version} tests: cached in {target}")
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        tmp_path = Path(tmp)
        archive = sdist if sdist is not None else download_sdist(version, tmp_path / "sdist")
        staging = tmp_path / "tests"
        names = unpack_tests(archive, version, staging)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        (staging / STAMP).write_text(
            f"{archive.name} sha256={digest}\n"
            f"top-level tests/*.py of the transformers {version} source distribution on PyPI\n"
        )
        if target.exists():  # a previous run stopped before its stamp
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(target)
    print(f"upstream transformers {version} tests: {len(names)} files in {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--version",
        default=None,
        help="transformers version (default: the installed one, which the tests must match)",
    )
    parser.add_argument(
        "--dest", type=Path, default=DEFAULT_DEST, help=f"cache folder (default: {DEFAULT_DEST})"
    )
    parser.add_argument(
        "--sdist", type=Path, default=None, help="use this sdist file instead of downloading"
    )
    args = parser.parse_args(argv)
    version = args.version or importlib.metadata.version("transformers")
    fetch(version, args.dest, args.sdist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
