"""Key/value cache for incremental decoding.

Only keys and values are cached: gate scores come from the current token (paper section 4.3),
so gating adds no cache memory. Layout per layer is ``(batch, kv_heads, seq, head_dim)`` and the
``update`` signature matches ``transformers``' ``Cache.update``, so the attention layer accepts
either this class or a ``transformers`` cache.
"""

from __future__ import annotations

from typing import Any

import torch


class KVCache:
    """A growing per-layer KV cache, optionally limited to a window of recent tokens.

    Args:
        window: keep at most this many most recent tokens per layer (``None``: keep all).
        sink_tokens: with a window, also keep the first ``sink_tokens`` tokens (StreamingLLM's
            "attention sink" tokens).

    Stored keys keep the rotary phase of their original position (no re-rotation), so a
    windowed cache removes context without moving any token.
    """

    def __init__(self, window: int | None = None, sink_tokens: int = 0) -> None:
        if window is not None and window < 1:
            raise ValueError(f"KVCache window must be >= 1 or None, got {window}")
        if sink_tokens < 0:
            raise ValueError(f"KVCache sink_tokens must be >= 0, got {sink_tokens}")
        self.window = window
        self.sink_tokens = sink_tokens
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._seen: list[int] = []

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        cache_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``(B, K, T, D)`` keys/values of layer ``layer_idx``; return every key/value the
        new queries may see (the kept cache plus the new tokens)."""
        if layer_idx == len(self.keys):
            self.keys.append(key_states)
            self.values.append(value_states)
            self._seen.append(key_states.shape[2])
        elif layer_idx < len(self.keys):
            self.keys[layer_idx] = torch.cat((self.keys[layer_idx], key_states), dim=2)
            self.values[layer_idx] = torch.cat((self.values[layer_idx], value_states), dim=2)
            self._seen[layer_idx] += key_states.shape[2]
        else:
            raise ValueError(f"KVCache layers must be filled in order; got layer {layer_idx}")
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self.window is not None:
            self.keys[layer_idx], self.values[layer_idx] = self._trim(keys), self._trim(values)
        return keys, values

    def _trim(self, x: torch.Tensor) -> torch.Tensor:
        keep = self.window + self.sink_tokens
        if x.shape[2] <= keep:
            return x
        return torch.cat((x[:, :, : self.sink_tokens], x[:, :, -self.window :]), dim=2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens stored for ``layer_idx`` (after any window trimming)."""
        return self.keys[layer_idx].shape[2] if layer_idx < len(self.keys) else 0

    def get_position(self, layer_idx: int = 0) -> int:
        """Tokens seen so far by ``layer_idx``: the position of the next token."""
        return self._seen[layer_idx] if layer_idx < len(self._seen) else 0

    def __len__(self) -> int:
        return len(self.keys)

    def reorder(self, beam_idx: torch.Tensor) -> None:
        """Select batch rows (for beam search or dropping finished sequences)."""
        self.keys = [k.index_select(0, beam_idx) for k in self.keys]
        self.values = [v.index_select(0, beam_idx) for v in self.values]
