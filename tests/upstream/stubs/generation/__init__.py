"""Stand-in for upstream's ``tests/generation`` package."""
