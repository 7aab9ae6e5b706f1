"""The Bigram-Backcopy task (Guo et al. 2024, "Active-dormant attention heads").

Sequences start with BOS and otherwise follow a fixed random bigram (first-order Markov) chain,
except after a *trigger* token: the token right after a trigger copies the token right before
it. Predicting the bigram needs no attention, predicting the copy needs a previous-token head, so
a small transformer learns a head that is active on triggers and dormant (parked on BOS, an
attention sink) everywhere else; 1-3 layer models trained on it grow sinks within minutes.

Differences from the paper, which fits its chain to character bigrams of Shakespeare and uses its
most frequent characters as triggers: here the chain is random (drawn from ``seed``, nothing is
downloaded) and ``trigger_prob`` sets how often triggers appear.

Chain details (``V = vocab_size``, ids other than ``bos_id`` are *ordinary*, the last
``num_triggers`` ordinary ids are triggers, the rest are *plain*):

* each plain token moves to a plain token with probability ``1 - trigger_prob``, spread by
  random weights ``E_i ** (1 / concentration)`` with ``E_i ~ Exp(1)`` (``concentration = 1``
  is a flat Dirichlet(1) row; smaller values give peakier, easier rows), and to each trigger with
  probability ``trigger_prob / num_triggers``;
* the first token after BOS is plain (so a trigger always has a plain token before it),
  drawn from its own random row;
* the token after a trigger is the token before it, which is always plain, so copies never
  chain.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from gated_attention.data._batching import check_batch_args, rank_rows
from gated_attention.data._rng import stable_uniform

# Stream tags so training and evaluation sequences come from independent random streams.
_TRAIN_STREAM = 0
_EVAL_STREAM = 1
_CHAIN_STREAM = 2


@dataclass(frozen=True)
class BigramBackcopyTask:
    """Config and sampler of the Bigram-Backcopy task.

    Attributes:
        vocab_size: total vocabulary including BOS (>= num_triggers + 3).
        num_triggers: number of trigger tokens ``k`` (>= 1).
        seq_len: model sequence length ``T`` (>= 2); a sequence has ``T + 1`` tokens.
        bos_id: id of the BOS token at position 0, in ``[0, vocab_size)``.
        seed: seed of the Markov chain (the task itself; batch order has its own seed).
        trigger_prob: probability that a plain token is followed by a trigger, in ``(0, 1)``.
        concentration: peakiness of the bigram rows, > 0 (smaller is peakier).
    """

    vocab_size: int = 64
    num_triggers: int = 3
    seq_len: int = 256
    bos_id: int = 0
    seed: int = 0
    trigger_prob: float = 0.2
    concentration: float = 0.5
    _probs: np.ndarray = field(init=False, repr=False, compare=False)
    _cdf: np.ndarray = field(init=False, repr=False, compare=False)
    _is_trigger: np.ndarray = field(init=False, repr=False, compare=False)
    _last_support: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_triggers", "seq_len", "bos_id", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        for name in ("trigger_prob", "concentration"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if self.num_triggers < 1:
            raise ValueError(f"num_triggers must be >= 1, got {self.num_triggers}")
        if self.vocab_size < self.num_triggers + 3:
            raise ValueError(
                f"vocab_size must be >= num_triggers + 3 = {self.num_triggers + 3} (BOS, the "
                f"triggers and at least two plain tokens), got {self.vocab_size}"
            )
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {self.seq_len}")
        if not 0 <= self.bos_id < self.vocab_size:
            raise ValueError(
                f"bos_id must be in [0, vocab_size={self.vocab_size}), got {self.bos_id}"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0.0 < self.trigger_prob < 1.0:
            raise ValueError(f"trigger_prob must be in (0, 1), got {self.trigger_prob}")
        if not self.concentration > 0.0:
            raise ValueError(f"concentration must be > 0, got {self.concentration}")

        V = self.vocab_size
        ordinary = np.array([i for i in range(V) if i != self.bos_id])
        triggers = ordinary[-self.num_triggers :]
        plain = ordinary[: -self.num_triggers]
        is_trigger = np.zeros(V, dtype=bool)
        is_trigger[triggers] = True

        # probs[a, b] = P(next = b | current = a); the BOS row is the start distribution.
        probs = np.zeros((V, V), dtype=np.float64)
        exponent = 1.0 / self.concentration
        for row, a in enumerate([self.bos_id, *plain.tolist()]):
            u = stable_uniform([self.seed, _CHAIN_STREAM, row], len(plain))
            # -log(1 - u) is Exp(1); 1 - u lies in (0, 1], so the log is finite.
            weights = (-np.log1p(-u)) ** exponent
            weights /= weights.sum()
            if a == self.bos_id:
                probs[a, plain] = weights
            else:
                probs[a, plain] = (1.0 - self.trigger_prob) * weights
                probs[a, triggers] = self.trigger_prob / self.num_triggers
        # Trigger rows are never sampled from (the copy rule decides); give them the start row
        # so every row of the CDF is a valid distribution.
        probs[triggers] = probs[self.bos_id]
        cdf = np.cumsum(probs, axis=1)
        cdf[:, -1] = 1.0  # guard against round-off leaving the last bin unreachable
        # Highest id with nonzero probability per row: clamping a draw to it keeps round-off
        # near u = 1 from ever producing a token outside the row's support.
        last_support = V - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)

        object.__setattr__(self, "_probs", probs)
        object.__setattr__(self, "_cdf", cdf)
        object.__setattr__(self, "_is_trigger", is_trigger)
        object.__setattr__(self, "_last_support", last_support)

    # ------------------------------------------------------------------ structure

    @property
    def trigger_ids(self) -> tuple[int, ...]:
        """The trigger token ids (the last ``num_triggers`` ids other than BOS)."""
        return tuple(int(i) for i in np.flatnonzero(self._is_trigger))

    @property
    def plain_ids(self) -> tuple[int, ...]:
        """Ids that follow the bigram chain (neither BOS nor a trigger)."""
        mask = ~self._is_trigger
        mask[self.bos_id] = False
        return tuple(int(i) for i in np.flatnonzero(mask))

    @property
    def transition_matrix(self) -> np.ndarray:
        """``(V, V)`` bigram probabilities of plain tokens; row ``bos_id`` is the start row.

        Rows of trigger tokens are placeholders: after a trigger the copy rule applies.
        """
        probs = self._probs.copy()
        probs[list(self.trigger_ids)] = 0.0
        return probs

    def trigger_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Bool ``(B, T)``: positions whose token is a trigger, i.e. whose label is a copy.

        Args:
            input_ids: ``(B, T)`` (or any shape) token ids.
        """
        lookup = torch.from_numpy(self._is_trigger).to(input_ids.device)
        return lookup[input_ids.long()]

    # ------------------------------------------------------------------ sampling

    def _sample(self, stream: int, samples: np.ndarray, seed: int) -> np.ndarray:
        """Sequences ``(len(samples), T + 1)`` int64; row i depends only on (seed, samples[i])."""
        n, T = len(samples), self.seq_len
        u = (
            np.stack([stable_uniform([seed, stream, int(g)], T) for g in samples])
            if n
            else (np.zeros((0, T)))
        )
        x = np.empty((n, T + 1), dtype=np.int64)
        x[:, 0] = self.bos_id
        prev = np.full(n, self.bos_id, dtype=np.int64)
        for t in range(1, T + 1):
            cur = x[:, t - 1]
            drawn = (u[:, t - 1, None] >= self._cdf[cur]).sum(axis=1)
            drawn = np.minimum(drawn, self._last_support[cur])
            x[:, t] = np.where(self._is_trigger[cur], prev, drawn)
            prev = cur
        return x

    @staticmethod
    def _split(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(x[:, :-1].copy()), torch.from_numpy(x[:, 1:].copy())

    def batch(
        self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank ``rank``'s share of the global training batch for ``step``.

        Same contract as :meth:`gated_attention.data.PackedTokenDataset.batch`: the global
        batch is a pure function of ``(seed, step)`` (every sequence of it is a function of
        ``seed`` and its global sample index) and rank ``r`` gets the contiguous rows
        ``[r * b, (r + 1) * b)`` with ``b = batch_size // world_size``.

        Returns:
            ``(input_ids, labels)``, each int64 ``(batch_size // world_size, seq_len)``;
            ``input_ids[:, 0]`` is BOS and ``labels`` are the inputs shifted by one.
        """
        check_batch_args(step, batch_size, seed, rank, world_size)
        rows = rank_rows(step, batch_size, rank, world_size)
        samples = np.arange(rows.start, rows.stop, dtype=np.int64)
        return self._split(self._sample(_TRAIN_STREAM, samples, int(seed)))

    def eval_batches(
        self, batch_size: int, num_batches: int = 8, seed: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed set of evaluation batches, each ``(input_ids, labels)`` of ``(B, seq_len)``.

        Drawn from a random stream disjoint from :meth:`batch`'s, so the same ``seed`` may be
        used for both.
        """
        check_batch_args(0, batch_size, seed, 0, 1)
        if int(num_batches) != num_batches or num_batches < 0:
            raise ValueError(f"num_batches must be an integer >= 0, got {num_batches!r}")
        for b in range(int(num_batches)):
            samples = np.arange(b * batch_size, (b + 1) * batch_size, dtype=np.int64)
            yield self._split(self._sample(_EVAL_STREAM, samples, int(seed)))

    def iter_eval_batches(
        self, batch_size: int, max_batches: int | None = 8, seed: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Alias of :meth:`eval_batches` with :class:`PackedTokenDataset`'s argument names."""
        return self.eval_batches(batch_size, 8 if max_batches is None else max_batches, seed)

    # ------------------------------------------------------------------ loss floors

    def _position_marginals(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact marginals over the label positions ``1 .. T-1`` (input tokens after BOS).

        Returns ``u`` of shape ``(T-1, V)`` with ``u[t-1, a] = P(x_t = a)`` for plain ``a`` and
        ``v`` of shape ``(T-1, V, V)`` with ``v[t-1, a, c] = P(x_{t-1} = a, x_t = c)`` for
        triggers ``c``. (The chain on (previous, current) is Markov; propagating it is exact.)
        """
        V, T = self.vocab_size, self.seq_len
        trig = self._is_trigger
        plain = np.array(self.plain_ids)
        P = self.transition_matrix
        u = np.zeros((max(T - 1, 0), V))
        v = np.zeros((max(T - 1, 0), V, V))
        cur_u = P[self.bos_id].copy()  # x_1 is plain, drawn from the start row
        cur_v = np.zeros((V, V))
        for t in range(T - 1):
            u[t], v[t] = cur_u, cur_v
            nxt_u = np.zeros(V)
            nxt_u[plain] = cur_u @ P[:, plain] + cur_v[plain][:, trig].sum(axis=1)
            nxt_v = np.zeros((V, V))
            nxt_v[:, trig] = cur_u[:, None] * P[:, trig]
            cur_u, cur_v = nxt_u, nxt_v
        return u, v

    @staticmethod
    def _entropy(p: np.ndarray) -> np.ndarray:
        """Entropy in nats along the last axis."""
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(p > 0, np.log(p), 0.0)
        return -(p * logs).sum(axis=-1)

    def optimal_loss(self) -> float:
        """Best achievable mean next-token loss (nats) over the ``seq_len`` label positions.

        The Bayes-optimal model pays the entropy of the start row at position 0, the entropy of
        the current plain token's row elsewhere, and nothing at triggers (the copy is certain).
        """
        u, _ = self._position_marginals()
        row_entropy = self._entropy(self.transition_matrix)
        total = row_entropy[self.bos_id] + float((u * row_entropy).sum())
        return float(total / self.seq_len)

    def bigram_loss_floor(self) -> float:
        """Best mean loss (nats) of a model that only sees the current token (no copying).

        Equals :meth:`optimal_loss` plus, at trigger positions, the entropy of the token
        before the trigger given the trigger; the gap is what learning the back-copy removes.
        """
        _, v = self._position_marginals()
        joint = v.sum(axis=0)[:, self._is_trigger].T  # (triggers, previous token)
        mass = joint.sum(axis=1)
        cond_entropy = self._entropy(joint / np.where(mass > 0, mass, 1.0)[:, None])
        return self.optimal_loss() + float((mass * cond_entropy).sum() / self.seq_len)
