# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
include ci/versions.env
PYTHON ?= python3
# Absolute, so that every recipe and script may `cd` anywhere and still find the venv's interpreter.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
# Each stage of `make test` reports its wall time (and `make test-cold` tabulates them).
STAGE := $(CURDIR)/ci/stage.sh
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: venv demo test test-app test-deploy test-cold lint bench-cache bench-http bench-response-cache bench-overload bench-gpu bench-batching bench-cold bench-memory clean

# The virtual environment; pip's own cache (PIP_CACHE_DIR, default ~/.cache/pip) keeps repeat installs fast.
$(VENV)/.installed: app/pyproject.toml requirements-dev.txt
	$(STAGE) venv bash -c 'set -e; $(PYTHON) -m venv $(VENV); \
	  $(PY) -m pip install -q --upgrade pip==$(PIP_VERSION); \
	  $(PY) -m pip install -q -e "app[torch,s3,gcs,azure,train]" -r requirements-dev.txt'
	touch $@

venv: $(VENV)/.installed

demo: venv ## local Ray + demo models on 127.0.0.1:8000 (MM_PORT, MM_HOST override)
	$(PY) -m manymodels.demo

lint: venv
	$(VENV)/bin/ruff check app tests bench

test-app: venv lint store-servers
	$(STAGE) app-tests ci/store-servers.sh exec $(PY) -m pytest tests/app -q -p no:cacheprovider

# deploy/azureml/ loaded offline with azure-ai-ml's own loaders; helm renders the chart it forwards to
test-deploy: venv chart-tools chart-deps
	$(STAGE) deploy-tests env MANYMODELS_REQUIRE_HELM=1 $(PY) -m pytest tests/deploy -q -p no:cacheprovider

test: test-app test-chart test-image test-e2e test-deploy

# `bash .ci/run` in a fresh clone with every cache empty (not part of `make test`; docs/testing.md)
test-cold:
	ci/test-cold.sh

bench-cache: venv
	$(PY) bench/cache_replay.py

bench-http: venv
	$(PY) bench/http_overhead.py

bench-response-cache: venv
	$(PY) bench/response_cache.py

bench-overload: venv
	$(PY) bench/overload.py

# On a GPU machine without the venv: PYTHONPATH=app python3 bench/gpu.py (see its docstring).
bench-gpu: venv
	$(PY) bench/gpu.py

bench-batching: venv
	$(PY) bench/batching.py

bench-cold: venv
	$(PY) bench/cold.py

bench-memory: venv ## replica RSS under model churn vs the cache budget (docs/benchmarks.md)
	$(PY) bench/memory.py

include ci/store.mk
include ci/chart.mk
include ci/image.mk
include ci/e2e.mk

clean:
	rm -rf $(VENV) .demo
