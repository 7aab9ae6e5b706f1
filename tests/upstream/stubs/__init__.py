"""Stand-ins for the ``transformers`` test modules that ``test_modeling_common.py`` and
``test_configuration_common.py`` import but the PyPI source distribution does not ship.

They are found through the ``transformers_tests`` package's second search path (see
``tests/upstream/_upstream.py``); pytest does not collect them (``tests/upstream/conftest.py``).
"""
