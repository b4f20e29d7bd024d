#!/usr/bin/env bash
# ci/stage.sh NAME COMMAND... : run one stage of `make test` and report its wall time (ci/lib.sh timed).
# The Makefiles wrap each stage in it; `make test-cold` reads the times from MANYMODELS_STAGE_LOG.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ $# -ge 2 ]] || { echo "usage: $0 NAME COMMAND..." >&2; exit 2; }
timed "$@"
