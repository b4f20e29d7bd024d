# The serving image (issue 4): included by the root Makefile. Everything runs against a private dockerd
# started by ci/image-env.sh (stopped again afterwards), with a local stand-in base image; see docs/image.md.
IMAGE_PY ?= $(PY)
# The venv the image tests run in (pytest + testcontainers); `make test-image IMAGE_PY=... IMAGE_VENV=`
# runs them with another interpreter.
IMAGE_VENV ?= venv
IMAGE_PYTEST ?= -q -p no:cacheprovider

.PHONY: image image-gpu image-gpu-build test-image image-shell image-clean

image: ## build the CPU image (ghcr.io/manymodels/manymodels:<appVersion>-cpu)
	$(STAGE) image ci/image-env.sh ci/image-build.sh cpu

image-gpu: image-gpu-build ## build the GPU image (…:<appVersion>) on the stand-in base and check it without a GPU
	ci/image-env.sh ci/image-gpu-smoke.sh

# The GPU image alone: the real-node e2e runs the training RayJob's pods in it (torch; ~7 GB of CUDA wheels)
image-gpu-build:
	$(STAGE) image-gpu ci/image-env.sh ci/image-build.sh gpu

test-image: $(IMAGE_VENV) image ## build the CPU image and test it as a container (pytest + testcontainers)
	$(STAGE) image-tests ci/image-env.sh env MM_IMAGE_REQUIRED=1 $(IMAGE_PY) -m pytest tests/image $(IMAGE_PYTEST)

image-shell: ## a shell with DOCKER_HOST pointing at the private daemon (it stops when the shell exits)
	ci/image-env.sh bash

image-clean: ## remove the private daemon's data (images, build cache, stand-in base)
	rm -rf "$${MM_DOCKER_DIR:-$${XDG_CACHE_HOME:-$$HOME/.cache}/manymodels/docker}"
