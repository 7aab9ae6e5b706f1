"""Long-context evaluation: RoPE scaling, perplexity vs length, retrieval and streaming.

* :mod:`.scaling`: :func:`scaling_config`, :func:`with_rope_scaling` (evaluation-time context
  extension sharing the weights), :func:`load_model_with` (a checkpoint in a config that differs
  in RoPE fields).
* :mod:`.streams`: evaluation token streams and :func:`windows` (same tokens at every length).
* :mod:`.perplexity`: :func:`perplexity_at_lengths`, per-position loss, streamed F-Attn.
* :mod:`.retrieval`: exact-match scoring of the tasks of :mod:`gated_attention.data.retrieval`.
* :mod:`.streaming`: the StreamingLLM windowed-cache test.

The long-context study that combines them lives in :mod:`gated_attention.experiments.long_context`.
Command line: ``gated-attention eval RUN --kind ppl|passkey|recall|streaming|study``.
"""

from gated_attention.evals.perplexity import (
    first_token_mass_long,
    perplexity_at_lengths,
    token_losses,
)
from gated_attention.evals.retrieval import DEFAULT_DEPTHS, evaluate_retrieval, score_batch
from gated_attention.evals.scaling import (
    SCALING_MODES,
    load_model_with,
    scaling_config,
    with_rope_config,
    with_rope_scaling,
)
from gated_attention.evals.streaming import streaming_perplexity, windowed_token_losses
from gated_attention.evals.streams import TokenStream, run_stream, stream_from_dataset, windows

__all__ = [
    "DEFAULT_DEPTHS",
    "SCALING_MODES",
    "TokenStream",
    "evaluate_retrieval",
    "first_token_mass_long",
    "load_model_with",
    "perplexity_at_lengths",
    "run_stream",
    "scaling_config",
    "score_batch",
    "stream_from_dataset",
    "streaming_perplexity",
    "token_losses",
    "windowed_token_losses",
    "windows",
    "with_rope_config",
    "with_rope_scaling",
]
