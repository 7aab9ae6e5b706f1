"""Stand-in for upstream's ``tests/exporters`` package."""
