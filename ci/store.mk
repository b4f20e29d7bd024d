# Object-store emulators for the app's store tests; the root Makefile includes this file (`include ci/store.mk`).
#   make store-servers   Azurite (Azure Blob; npm registry) and fake-gcs-server (GCS; Go module proxy), pinned
#                        in ci/versions.env, cached under $${XDG_CACHE_HOME:-~/.cache}/manymodels/tools (outside
#                        the repo). The S3 server (moto) is a Python package in the venv.
# test-app runs pytest under `ci/store-servers.sh exec`, which exports MANYMODELS_AZURITE and MANYMODELS_FAKE_GCS;
# tests/app/store/store_servers.py fails (does not skip) when a server is missing, unless
# MANYMODELS_STORE_SERVERS=skip.

.PHONY: store-servers

store-servers:
	$(STAGE) store-servers ci/store-servers.sh >/dev/null
