# Chart targets; the root Makefile includes this file (`include ci/chart.mk`).
#   make chart-tools   pinned helm, helm-unittest, kubeconform, kube-linter (+ offline schemas), cached
#                      under $${XDG_CACHE_HOME:-~/.cache}/manymodels/tools (outside the repo)
#   make chart-deps    the kuberay-operator dependency assembled offline into charts/ (git-ignored)
#   make chart-lock    rewrite Chart.lock from Chart.yaml with helm's own resolver (offline)
#   make test-chart    lint, unit tests, kubeconform, kube-linter, schema + contract tests
# Uses the project's venv (the root Makefile's `venv` target): pyyaml + pytest, and the app itself for
# the chart <-> app contract test.
CHART_PYTHON ?= $(PY)

.PHONY: chart-tools chart-deps chart-lock test-chart

chart-tools: venv
	$(STAGE) chart-tools env PYTHON=$(CHART_PYTHON) ci/chart-tools.sh >/dev/null

chart-deps: venv
	PYTHON=$(CHART_PYTHON) ci/chart-deps.sh

chart-lock: venv
	PYTHON=$(CHART_PYTHON) ci/chart-deps.sh lock

test-chart: venv chart-tools chart-deps
	$(STAGE) chart-tests env PYTHON=$(CHART_PYTHON) ci/test-chart.sh
