"""Cost of verifying prepared token data on first use: seconds per GB.

    python benchmarks/checksum_cost.py [--mb 512] [--rounds 3]

Writes a random uint16 token file of ``--mb`` MB and, in interleaved rounds (so machine drift
affects all alike), times a plain read, the verification the data cache runs
(``data.shards._hash_and_max``: SHA-256 plus the largest token id, one pass), and the same pass
with xxh3 (when ``xxhash`` is installed) and BLAKE2b in place of SHA-256. Prints the median
seconds per GB of each and its ratio to the plain read. The file is read from the page cache
after the first round, so the numbers are the hashing cost, not the disk's.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gated_attention.data.shards import _hash_and_max

CHUNK = 1 << 22


def _read(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(CHUNK):
            pass


def _hash_with(factory: Callable[[], object]) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        digest = factory()
        top = -1
        with open(path, "rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
                top = max(top, int(np.frombuffer(block, dtype="<u2").max()))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    methods: dict[str, Callable[[Path], None]] = {
        "read only": _read,
        "sha256 + max id (used)": lambda p: _hash_and_max(p, np.dtype("<u2")),
        "blake2b + max id": _hash_with(hashlib.blake2b),
    }
    try:
        import xxhash

        methods["xxh3_64 + max id"] = _hash_with(xxhash.xxh3_64)
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens.bin"
        rng = np.random.default_rng(0)
        with open(path, "wb") as handle:
            for _ in range(args.mb):
                handle.write(rng.integers(0, 8192, 1 << 19, dtype="<u2").tobytes())
        gb = path.stat().st_size / 1e9
        _read(path)  # into the page cache
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.rounds):
            for name, fn in methods.items():
                start = time.perf_counter()
                fn(path)
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["read only"]) / gb
    print(f"{args.mb} MB token file, median of {args.rounds} interleaved rounds")
    for name, values in times.items():
        per_gb = statistics.median(values) / gb
        print(f"  {name:24s} {per_gb:6.2f} s/GB  ({per_gb / base:5.1f} x read)")


if __name__ == "__main__":
    main()
