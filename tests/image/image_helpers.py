"""Constants and helpers shared by the image tests (a uniquely named module: tests/app has conftests)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = float(os.environ.get("MM_IMAGE_READY_TIMEOUT", "240"))
SAMPLE = [0.25] * 64


def app_version() -> str:
    for line in (ROOT / "Chart.yaml").read_text().splitlines():
        if line.startswith("appVersion:"):
            return line.split(":", 1)[1].strip().strip('"')
    raise AssertionError("Chart.yaml has no appVersion")


CPU_IMAGE = os.environ.get("MM_IMAGE", f"ghcr.io/manymodels/manymodels:{app_version()}-cpu")
GPU_IMAGE = os.environ.get("MM_GPU_IMAGE", f"ghcr.io/manymodels/manymodels:{app_version()}")


def wait_ready(container, url: str, timeout: float = READY_TIMEOUT_S) -> float:
    started = time.monotonic()
    wrapped = container.get_wrapped_container()
    while time.monotonic() - started < timeout:
        wrapped.reload()
        if wrapped.status != "running":
            raise AssertionError(f"container exited ({wrapped.status}):\n{logs(container)}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"not ready within {timeout:.0f} s:\n{logs(container)}")


def logs(container) -> str:
    out, err = container.get_logs()
    return (out + err).decode(errors="replace")[-6000:]
