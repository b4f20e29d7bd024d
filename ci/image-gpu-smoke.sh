#!/usr/bin/env bash
# Smoke test of the GPU image (ghcr.io/manymodels/manymodels:<appVersion>).
#
#   ci/image-gpu-smoke.sh            # no GPU: the CUDA build imports, carries the CUDA providers and
#                                    # serves ONNX + torch models on the CPU (what `make image-gpu` runs)
#   ci/image-gpu-smoke.sh --gpu      # on a machine with an NVIDIA GPU + NVIDIA Container Toolkit:
#                                    # `docker run --gpus all`, and models must run on CUDA
#
# Uses $DOCKER / DOCKER_HOST as set (ci/image-env.sh sets both; on a GPU machine the system daemon
# with the NVIDIA runtime is the one to use: `DOCKER=docker ci/image-gpu-smoke.sh --gpu`).
# MM_GPU_IMAGE overrides the image.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # ROOT, log, chart_field
cd "$ROOT"

gpu=0
[ "${1:-}" = --gpu ] && gpu=1
DOCKER=${DOCKER:-docker}
version=$(chart_field appVersion)
image=${MM_GPU_IMAGE:-ghcr.io/manymodels/manymodels:$version}
gpu_args=()
[ "$gpu" = 1 ] && gpu_args=(--gpus all)

work=$(mktemp -d "${TMPDIR:-/tmp}/mm-gpu-smoke.XXXXXX")
name=mm-gpu-smoke-$$
cleanup() { "$DOCKER" rm -f "$name" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
chmod 777 "$work"

log "1/4 runtime check in $image (gpu=$gpu)"
"$DOCKER" run --rm "${gpu_args[@]}" -e MM_EXPECT_GPU="$gpu" "$image" python -c '
import os, onnxruntime as ort, torch
gpu = os.environ["MM_EXPECT_GPU"] == "1"
providers = ort.get_available_providers()
print("torch", torch.__version__, "cuda build", torch.version.cuda, "cuda available", torch.cuda.is_available())
print("onnxruntime", ort.__version__, providers)
assert torch.version.cuda, "torch is not a CUDA build"
assert "CUDAExecutionProvider" in providers, "onnxruntime has no CUDA provider"
assert torch.cuda.is_available() == gpu, "torch.cuda.is_available() != expected"
if gpu:
    print("device", torch.cuda.get_device_name(0))
    x = torch.randn(256, 256, device="cuda"); assert float((x @ x).sum().cpu()) == float((x @ x).sum().cpu())
'

log "2/4 demo catalog (ONNX + torch models) built inside the image"
"$DOCKER" run --rm -v "$work:/out" "$image" python -m manymodels.demo.catalog --out /out/models --mlp 2 >/dev/null

device=cpu
[ "$gpu" = 1 ] && device=cuda
log "3/4 serving it standalone (MM_DEVICE=$device)"
"$DOCKER" run -d --name "$name" "${gpu_args[@]}" --shm-size 1g -p 127.0.0.1::8000 \
    -v "$work/models:/models:ro" -e MM_DEVICE="$device" -e MM_REPLICAS=1 "$image" >/dev/null
port=$("$DOCKER" port "$name" 8000/tcp | head -1 | sed 's/.*://')
url=http://127.0.0.1:$port
for i in $(seq 1 180); do
    [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$name")" = true ] || { "$DOCKER" logs "$name" | tail -40; exit 1; }
    python3 -c "import urllib.request; urllib.request.urlopen('$url/v2/health/ready', timeout=2)" 2>/dev/null && break
    [ "$i" = 180 ] && { "$DOCKER" logs "$name" | tail -40; log "not ready in 180 s"; exit 1; }
    sleep 1
done
log "ready after ~${i} s on $url"
python3 - "$url" <<'PY'
import json, sys, urllib.request
url = sys.argv[1]
sample = [0.25] * 64
for model in ("mlp-000", "torch-mlp", "torch-script", "text-sentiment"):
    body = {"model": model, "input_data": "a great product" if model == "text-sentiment" else sample}
    req = urllib.request.Request(f"{url}/predict", json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as response:
        print(f"  {model}: HTTP {response.status} {response.read()[:120].decode()}")
PY
if [ "$gpu" = 1 ]; then
    # The models must have landed on the GPU: the replica's process holds CUDA memory.
    "$DOCKER" exec "$name" python -c '
import subprocess; out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv"], capture_output=True, text=True).stdout
print(out); assert out.strip().count("\n") >= 1, "no process holds GPU memory"' \
        || log "nvidia-smi inside the container could not confirm GPU use (check the logs)"
fi

log "4/4 SIGTERM"
started=$SECONDS
"$DOCKER" stop -t 60 "$name" >/dev/null
code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$name")
log "stopped in $((SECONDS - started)) s, exit code $code"
[ "$code" = 0 ]
log "OK"
