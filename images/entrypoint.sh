#!/bin/bash
# manymodels image entrypoint.
#   (no arguments)         serve $MM_CONFIG (the bundled config) on $MM_HOST:$MM_PORT with the catalog
#                          mounted at $MM_MODEL_ROOT (unset: the catalog in $AZUREML_MODEL_DIR, else
#                          /models), until SIGTERM/SIGINT; with $MM_FORWARD_URL set, forward Azure ML's
#                          routes to that serve Service instead (docs/azureml.md)
#   demo [--models DIR]    build the demo catalog (if missing) and serve it
#   anything else          run as given: `ray start ...` (KubeRay), `bash`, `python ...`
# KubeRay sets the container command itself (/bin/bash -lc -- "ray start ..."), bypassing this file.
set -euo pipefail

if [ $# -gt 0 ] && [ "$1" != serve ] && [ "$1" != demo ]; then
    exec "$@"
fi
if [ $# -eq 0 ] && [ -n "${MM_FORWARD_URL:-}" ]; then
    exec python -m manymodels forward   # one uvicorn process, no Ray: it handles SIGTERM itself
fi
if [ $# -eq 0 ]; then
    set -- serve --config "${MM_CONFIG:-/opt/manymodels/etc/serve_config.yaml}"
fi
# (with only AZUREML_MODEL_DIR set, `python -m manymodels serve` finds the catalog in it, or fails loudly)
root="${MM_MODEL_ROOT:-/models}"
if [ "$1" = serve ] && { [ -n "${MM_MODEL_ROOT:-}" ] || [ -z "${AZUREML_MODEL_DIR:-}" ]; } \
    && [ "${root#*://}" = "$root" ] && [ -z "$(ls -A "$root" 2>/dev/null)" ]; then
    echo "[manymodels] warning: no model catalog at MM_MODEL_ROOT=$root (mount one, e.g." \
         "-v \$PWD/models:/models:ro, or run the 'demo' command)" >&2
fi

# Stay PID 1 as a tiny init: reap the orphans Ray's processes leave behind (bash reaps every child it
# is handed) and pass SIGTERM on as SIGINT to `python -m manymodels`, whose supervisor
# (manymodels/supervisor.py) runs the server in a session of its own and stops it in one orderly step
# (application deleted while Ray is alive, then Ray shut down, exit 0).
python -m manymodels "$@" &
child=$!
trap 'kill -INT "$child" 2>/dev/null || true' TERM INT
status=0
while :; do
    wait "$child" && status=0 || status=$?
    kill -0 "$child" 2>/dev/null || break
done
exit "$status"
