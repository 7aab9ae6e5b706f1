"""Gated attention for large language models."""
