"""Checkpoint formats the converters read and write, one :class:`CheckpointFormat` object each
(``base``), registered by name in ``gated_attention.hf.convert.REGISTRY``."""
