"""Version-stable random numbers for data order and synthetic data.

Exact resume needs the same batch for the same ``(seed, step)`` on every machine and NumPy
version. NumPy only promises stream stability for the bit generators and :class:`SeedSequence`,
not for ``Generator`` methods such as ``permutation`` or ``dirichlet``, so everything here is
derived from raw PCG64 output.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _raw(words: Sequence[int], n: int) -> np.ndarray:
    """``n`` raw 64-bit PCG64 outputs seeded by the non-negative integers ``words``."""
    bit_generator = np.random.PCG64(np.random.SeedSequence([int(w) for w in words]))
    return np.asarray(bit_generator.random_raw(n), dtype=np.uint64)


def stable_uniform(words: Sequence[int], n: int) -> np.ndarray:
    """``n`` float64 uniforms in ``[0, 1)``, shape ``(n,)``, from the top 53 bits of PCG64 output."""
    return (_raw(words, n) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def stable_permutation(words: Sequence[int], n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)``, shape ``(n,)`` int64.

    Sorting i.i.d. 64-bit keys gives a uniform permutation; ties (probability ~n^2 / 2^65) are
    broken by index through the stable sort, so the result is still deterministic.
    """
    return np.argsort(_raw(words, n), kind="stable").astype(np.int64)
