"""Stand-in for upstream's ``tests/utils`` package."""
