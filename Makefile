# rechat developer targets. Every target builds what it needs from python3 alone.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: run test conformance bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# setup.py builds the optional C helper rechat/_fused.c in place (rechat.speedups).
$(STAMP): pyproject.toml setup.py rechat/_fused.c | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

## run: serve the bundled example sessions offline (no API key, no network)
run: $(STAMP)
	$(BIN)/rechat replay sessions/

## test: unit, end-to-end, property and browser tests (installs Debian's chromium when missing)
test: $(STAMP)
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium"
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## conformance: openai-python 3.3.1's own suite through `rechat record`, then `rechat replay`
conformance: $(STAMP)
	$(BIN)/python tests/conformance/run.py --replay

## bench: side-by-side throughput and latency figures (see docs/performance.md)
bench: $(STAMP)
	$(BIN)/python bench/bench_proxy.py

clean:
	rm -rf $(VENV) .cache build *.egg-info rechat/*.so
