"""The helm binary for the chart tests that render the chart from Python (one lookup for all of them)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def find_helm() -> str:
    """$HELM, helm on PATH, or the one ci/chart-tools.sh installed; with the KubeRay dependency
    assembled. Missing either skips the test, or fails it under MANYMODELS_REQUIRE_HELM=1 (CI)."""
    found = os.environ.get("HELM") or shutil.which("helm")
    if not found:
        tools = subprocess.run([str(ROOT / "ci/chart-tools.sh"), "path"], capture_output=True, text=True)
        for folder in tools.stdout.strip().split(":"):
            if folder and (Path(folder) / "helm").exists():
                found = str(Path(folder) / "helm")
                break
    required = os.environ.get("MANYMODELS_REQUIRE_HELM") == "1"
    if not found:
        if required:
            pytest.fail("helm not found: run ci/chart-tools.sh")
        pytest.skip("helm not installed (ci/chart-tools.sh installs it)")
    if not (ROOT / "charts/kuberay-operator/Chart.yaml").exists():
        if required:
            pytest.fail("charts/kuberay-operator missing: run ci/chart-deps.sh")
        pytest.skip("dependency not materialised (ci/chart-deps.sh)")
    return found
