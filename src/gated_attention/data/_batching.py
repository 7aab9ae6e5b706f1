"""Argument checks and rank slicing shared by every deterministic batch source."""

from __future__ import annotations

from gated_attention.data.errors import DataError


def check_batch_args(step: int, batch_size: int, seed: int, rank: int, world_size: int) -> int:
    """Validate ``batch(step, batch_size, seed, rank, world_size)`` arguments.

    Returns the per-rank batch size ``batch_size // world_size``.
    """
    for name, value in (("step", step), ("seed", seed)):
        if int(value) != value or value < 0:
            raise DataError(f"{name} must be an integer >= 0, got {value!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise DataError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if int(world_size) != world_size or world_size < 1:
        raise DataError(f"world_size must be an integer >= 1, got {world_size!r}")
    if int(rank) != rank or not 0 <= rank < world_size:
        raise DataError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
    if batch_size % world_size:
        raise DataError(
            f"batch_size={batch_size} must be divisible by world_size={world_size} "
            "(every rank gets batch_size // world_size rows of the global batch)"
        )
    return batch_size // world_size


def rank_rows(step: int, batch_size: int, rank: int, world_size: int) -> range:
    """Global sample indices owned by ``rank`` in the global batch of ``step``.

    Rank ``r`` gets the contiguous slice ``[r * b, (r + 1) * b)`` of the global batch
    (``b = batch_size // world_size``), so concatenating the ranks' batches in rank order gives
    exactly the ``world_size=1`` batch. Global sample ``g = step * batch_size + row`` counts
    samples since the start of training.
    """
    local = batch_size // world_size
    first = step * batch_size + rank * local
    return range(first, first + local)
