# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: venv demo test test-app lint bench-cache bench-http clean

# The virtual environment; pip's own cache (~/.cache/pip) keeps repeat installs fast.
$(VENV)/.installed: app/pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==24.3.1
	$(PY) -m pip install -q -e 'app[torch]' -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

demo: venv ## local Ray + demo models on 127.0.0.1:8000 (MM_PORT, MM_HOST override)
	$(PY) -m manymodels.demo

lint: venv
	$(VENV)/bin/ruff check app tests bench

test-app: venv lint
	$(PY) -m pytest tests/app -q -p no:cacheprovider

test: test-app test-chart test-image test-e2e

bench-cache: venv
	$(PY) bench/cache_replay.py

bench-http: venv
	$(PY) bench/http_overhead.py

include ci/chart.mk
include ci/image.mk
include ci/e2e.mk

clean:
	rm -rf $(VENV) .demo
