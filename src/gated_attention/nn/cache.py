"""Key/value cache for incremental decoding, optionally limited to a window (StreamingLLM).

Only keys and values are cached: gate scores come from the current token (paper section 4.3),
so gating adds no cache memory. Layout per layer is ``(batch, kv_heads, seq, head_dim)`` and the
``update`` signature matches ``transformers``' ``Cache.update``, so the attention layer accepts
either this class or a ``transformers`` cache.

Windowed cache (Xiao et al. 2024, "Efficient Streaming Language Models with Attention Sinks").
With ``window = W`` and ``sink_tokens = S`` the query at absolute position ``p`` attends to the
keys at positions ``j <= p`` with ``p - j < W`` (the last ``W`` tokens, itself included) or
``j < S`` (the first ``S`` tokens, the "attention sinks"). After every update the cache keeps
exactly those tokens the next query can see: positions ``[0, S)`` and the last ``W`` positions.

* Keys keep the rotary phase of their original position (they are stored after RoPE and never
  re-rotated), and new tokens continue the absolute position count. Distances to the window are
  therefore below ``W``, while distances to the sink tokens grow with the stream (StreamingLLM
  instead re-numbers positions inside the cache; we keep the original phases on purpose, so the
  test measures what the model does with the tokens it has actually seen at those distances).
* A chunk of several new queries may be fed at once: :meth:`KVCache.attention_mask` gives each
  query exactly its own window over the kept cache plus the chunk, so feeding a sequence in
  chunks equals feeding it token by token (and equals full attention with a sliding-window
  mask). The chunk may be of any size; its keys are returned in full for that call and trimmed
  afterwards.
"""

from __future__ import annotations

from typing import Any

import torch

from gated_attention.ops.attention import causal_mask


class KVCache:
    """A growing per-layer KV cache, optionally limited to a window of recent tokens.

    Args:
        window: keep at most this many most recent tokens per layer (``None``: keep all).
        sink_tokens: with a window, also keep the first ``sink_tokens`` tokens (StreamingLLM's
            "attention sink" tokens); ignored without a window.

    Attributes:
        keys, values: per layer ``(batch, kv_heads, kept, head_dim)``.
        positions: per layer ``(kept,)`` int64, the absolute position of each kept token.
    """

    def __init__(self, window: int | None = None, sink_tokens: int = 0) -> None:
        if window is not None and (isinstance(window, bool) or int(window) != window or window < 1):
            raise ValueError(f"KVCache window must be an integer >= 1 or None, got {window!r}")
        if isinstance(sink_tokens, bool) or int(sink_tokens) != sink_tokens or sink_tokens < 0:
            raise ValueError(f"KVCache sink_tokens must be an integer >= 0, got {sink_tokens!r}")
        self.window = None if window is None else int(window)
        self.sink_tokens = int(sink_tokens) if window is not None else 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.positions: list[torch.Tensor] = []
        self._seen: list[int] = []

    @property
    def windowed(self) -> bool:
        """True when the cache drops tokens outside its window."""
        return self.window is not None

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        cache_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``(B, K, T, D)`` keys/values of layer ``layer_idx``; return every key/value the
        new queries may see: the kept cache plus the new tokens, ``(B, K, kept + T, D)``.

        With a window, the queries must be masked with :meth:`attention_mask` (computed before
        the update); the stored cache is trimmed to the sink tokens plus the last ``window``
        tokens after the keys are returned.
        """
        T = key_states.shape[2]
        if layer_idx == len(self.keys):
            seen = 0
            keys, values = key_states, value_states
            positions = torch.arange(T, device=key_states.device)
            self.keys.append(keys)
            self.values.append(values)
            self.positions.append(positions)
            self._seen.append(T)
        elif layer_idx < len(self.keys):
            seen = self._seen[layer_idx]
            keys = torch.cat((self.keys[layer_idx], key_states), dim=2)
            values = torch.cat((self.values[layer_idx], value_states), dim=2)
            new = torch.arange(seen, seen + T, device=key_states.device)
            positions = torch.cat((self.positions[layer_idx].to(new.device), new))
            self._seen[layer_idx] = seen + T
        else:
            raise ValueError(f"KVCache layers must be filled in order; got layer {layer_idx}")
        if self.window is not None:
            keep = self._keep(positions, seen + T)
            if keep is not None:
                self.keys[layer_idx] = keys.index_select(2, keep)
                self.values[layer_idx] = values.index_select(2, keep)
                self.positions[layer_idx] = positions.index_select(0, keep)
                return keys, values
        self.keys[layer_idx], self.values[layer_idx] = keys, values
        self.positions[layer_idx] = positions
        return keys, values

    def _keep(self, positions: torch.Tensor, seen: int) -> torch.Tensor | None:
        """Indices of the tokens to keep after ``seen`` tokens, or ``None`` to keep all."""
        assert self.window is not None
        visible = (positions < self.sink_tokens) | (positions >= seen - self.window)
        if bool(visible.all()):
            return None
        return visible.nonzero().squeeze(-1)

    def attention_mask(
        self, query_len: int, device: torch.device | str | None = None
    ) -> torch.Tensor | None:
        """Mask ``(1, 1, T, kept + T)`` (True = may attend) for the next ``T`` queries.

        Call before the update that adds them (every layer keeps the same positions, so one mask
        serves all layers). Returns ``None`` or the plain bottom-right causal mask when no query
        loses a key to the window, so an uncut window is bit-identical to a full cache.
        """
        seen = self.get_position(0)
        past = self.positions[0] if self.positions else torch.zeros(0, dtype=torch.long)
        past = past.to(device)
        q_pos = torch.arange(seen, seen + query_len, device=device)
        k_pos = torch.cat((past, q_pos))
        key_len = k_pos.numel()
        # The last query is the farthest from every key: if it sees all non-sink keys, every
        # query sees all keys it could see causally.
        windowed = k_pos[k_pos >= self.sink_tokens]
        last = seen + query_len - 1
        if self.window is None or windowed.numel() == 0 or last - int(windowed.min()) < self.window:
            return causal_mask(query_len, key_len, device=device)
        dist = q_pos[:, None] - k_pos[None, :]
        allowed = (dist >= 0) & ((dist < self.window) | (k_pos[None, :] < self.sink_tokens))
        return allowed[None, None]

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
