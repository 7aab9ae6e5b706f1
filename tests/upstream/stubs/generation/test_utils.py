"""Stand-in for upstream's ``tests/generation/test_utils.py`` (not in the sdist).

``test_modeling_common`` imports ``GenerationTesterMixin`` only for
``test_generation_tester_mixin_inheritance``, a guard that every generative model's test class
inherits the real mixin. Our test classes do not inherit this stand-in (that would fake the
guard); ``tests/upstream/conftest.py`` deselects the guard instead, and our own ``generate`` tests
live in ``tests/hf/test_generate.py``.
"""


class GenerationTesterMixin:
    """Empty stand-in: adds no tests."""
