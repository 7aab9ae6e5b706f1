"""Stand-in for upstream's ``tests/exporters/test_export.py`` (not in the sdist).

``ModelTesterMixin`` derives from ``ExportTesterMixin``, whose ``torch.export`` tests are not
available offline; this empty base contributes no tests.
"""


class ExportTesterMixin:
    """Empty stand-in: adds no tests."""
