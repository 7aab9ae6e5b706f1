"""A pre-allocated key/value cache for fast incremental decoding.

:class:`StaticCache` reserves, per layer, one ``(batch, kv_heads, max_length, head_dim)`` buffer
for keys and one for values, and writes each step's new tokens into the next free slots instead
of concatenating (which :class:`~gated_attention.nn.cache.KVCache` does, copying the whole cache
every step). ``update`` returns views of the filled prefix, so attention sees exactly the keys
and values a growing cache would hold, at the cost of reserving ``max_length`` up front.

For ``torch.compile`` the cache also has a static-shape mode (:meth:`StaticCache.seek`): updates
write at tensor positions and return the whole buffers, so every decoding step has the same
shapes and compiles once; attention then needs a mask over the unfilled slots.

The interface is the one the attention layer calls: ``update(key_states, value_states,
layer_idx, cache_kwargs)`` with ``(B, K, T, D)`` tensors (``transformers``' ``Cache.update``) and
``get_seq_length(layer_idx)``. Buffers are allocated on a layer's first update with that
update's batch size, shapes, dtype and device: under autocast keys (float32 after the float32
QK-norm) and values (bf16) arrive in different dtypes, and storing each in its own dtype keeps
decoding bit-identical to :class:`~gated_attention.nn.cache.KVCache`.
"""

from __future__ import annotations

from typing import Any

import torch


class StaticCache:
    """Fixed-capacity per-layer KV buffers, filled left to right.

    Args:
        max_length: the most tokens (prompt plus generated) any layer will hold.

    Attributes:
        keys, values: per layer ``(batch, kv_heads, max_length, head_dim)`` buffers; only the
            first :meth:`get_seq_length` positions are valid.
    """

    def __init__(self, max_length: int) -> None:
        if isinstance(max_length, bool) or int(max_length) != max_length or max_length < 1:
            raise ValueError(f"StaticCache max_length must be an integer >= 1, got {max_length!r}")
        self.max_length = int(max_length)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._lengths: list[int] = []
        self.position: torch.Tensor | None = None
        """Static-shape mode (:meth:`seek`): the slots ``(T,)`` the next update writes."""

    def _allocate(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        B, K, _, D = key_states.shape
        shape = (B, K, self.max_length, D)
        # Zeros, not empty: in static-shape mode attention reads unfilled slots (masked out,
        # but uninitialised memory could hold NaN, and NaN * 0 is NaN).
        self.keys.append(key_states.new_zeros(shape))
        self.values.append(value_states.new_zeros((*shape[:3], value_states.shape[-1])))
        self._lengths.append(0)

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        cache_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``(B, K, T, D)`` keys/values of layer ``layer_idx`` into the next ``T`` slots;
        return every key/value the new queries may see, ``(B, K, cached + T, D)`` (views of
        the buffers, valid until the next update of this layer)."""
        if layer_idx == len(self.keys):
            self._allocate(key_states, value_states)
        elif layer_idx > len(self.keys):
            raise ValueError(f"StaticCache layers must be filled in order; got layer {layer_idx}")
        if self.position is not None:
            # Static shapes: write at tensor positions and return the whole buffers, so a
            # compiled decoding step sees the same shapes every step (the caller masks the
            # unfilled slots).
            self.keys[layer_idx].index_copy_(2, self.position, key_states)
            self.values[layer_idx].index_copy_(2, self.position, value_states)
            return self.keys[layer_idx], self.values[layer_idx]
        start = self._lengths[layer_idx]
        end = start + key_states.shape[2]
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if end > self.max_length:
            raise ValueError(
                f"StaticCache holds at most {self.max_length} tokens; layer {layer_idx} would "
                f"reach {end}. Create it with a larger max_length (prompt + new tokens)."
            )
        if key_states.shape[0] != keys.shape[0]:
            raise ValueError(
                f"StaticCache was allocated for batch {keys.shape[0]}, got {key_states.shape[0]}"
            )
        keys[:, :, start:end] = key_states
        values[:, :, start:end] = value_states
        self._lengths[layer_idx] = end
        return keys[:, :, :end], values[:, :, :end]

    def seek(self, position: torch.Tensor | None, length: int | None = None) -> None:
        """Enter static-shape mode: the next updates write the slots ``position`` ``(T,)``
        (int64) and return whole ``(B, K, max_length, D)`` buffers; ``length`` is the number of
        filled slots afterwards, as :meth:`get_seq_length` reports it. ``None`` returns to
        appending (after the filled slots)."""
        self.position = position
        if length is not None:
            self._lengths = [length] * len(self._lengths)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens stored for ``layer_idx``."""
        return self._lengths[layer_idx] if layer_idx < len(self._lengths) else 0

    def get_max_length(self) -> int:
        """Capacity in tokens per layer."""
        return self.max_length

    def __len__(self) -> int:
        return len(self.keys)

    def reset(self) -> None:
        """Forget every stored token (buffers are kept for reuse)."""
        self._lengths = [0] * len(self._lengths)
        self.position = None

    def reorder(self, beam_idx: torch.Tensor) -> None:
        """Select batch rows (for beam search or dropping finished sequences)."""
        self.keys = [k.index_select(0, beam_idx) for k in self.keys]
        self.values = [v.index_select(0, beam_idx) for v in self.values]
