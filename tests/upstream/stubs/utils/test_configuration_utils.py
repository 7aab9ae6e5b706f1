"""Stand-in for upstream's ``tests/utils/test_configuration_utils.py`` (not in the sdist).

Only ``config_common_kwargs`` is imported (by ``ConfigTester.check_config_arguments_init``): one
non-default value for every field of the 5.x ``PreTrainedConfig``, copied from upstream's file.
``test_upstream_stub_covers_every_base_config_field`` in ``test_transformers_common.py`` checks
it still matches the installed release.
"""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
