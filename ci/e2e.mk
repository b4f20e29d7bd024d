# End-to-end targets; the root Makefile includes this file (`include ci/e2e.mk`) and adds test-e2e to test.
#   make e2e-tools      kube-apiserver/controller-manager/scheduler/kubectl, etcd, kwok, KubeRay operator
#                       (+ CRDs) built from the Go module proxy, cached under
#                       $${XDG_CACHE_HOME:-~/.cache}/manymodels/tools/<tool>-<version> (outside the repo)
#   make test-e2e       the three parts below (docs/e2e.md)
#   make test-e2e-k8s   helm install/upgrade/rollback/uninstall on a real apiserver + KubeRay operator (kwok pods)
#   make test-e2e-ray   the chart's serveConfigV2 on a real local Ray; model rollout under load
#   make test-e2e-node  a real one-node cluster (kubelet, containerd, kube-proxy, CoreDNS; root) running the
#                       CPU image and the KubeRay operator as pods: the README's user path end to end
# Needs chart-deps (the offline kuberay-operator dependency) from ci/chart.mk and the project venv.
E2E_PYTHON ?= $(PY)

.PHONY: e2e-tools test-e2e test-e2e-k8s test-e2e-ray test-e2e-node

e2e-tools: venv
	$(STAGE) e2e-tools env PYTHON=$(E2E_PYTHON) ci/e2e-tools.sh >/dev/null

test-e2e: test-e2e-k8s test-e2e-ray test-e2e-node

test-e2e-k8s: venv chart-deps e2e-tools
	$(STAGE) e2e-k8s env PYTHON=$(E2E_PYTHON) ci/e2e.sh k8s

test-e2e-ray: venv chart-deps chart-tools
	$(STAGE) e2e-ray env PYTHON=$(E2E_PYTHON) ci/e2e.sh ray

test-e2e-node: venv chart-deps e2e-tools image image-gpu-build
	$(STAGE) e2e-node ci/image-env.sh env PYTHON=$(E2E_PYTHON) ci/e2e.sh node
