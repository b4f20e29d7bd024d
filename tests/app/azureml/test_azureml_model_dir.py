"""AZUREML_MODEL_DIR as the store root: the catalog found at the mount or in its one subfolder (Azure ML's
layout for a model registered from a folder), MM_MODEL_ROOT first, a loud error when there is none."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from manymodels.azureml.model_dir import apply, find_catalog, is_catalog
from manymodels.errors import ConfigurationError

APP = Path(__file__).resolve().parents[3] / "app"


@pytest.fixture
def mount(tmp_path: Path, demo_catalog: Path) -> Path:
    """/var/azureml-app/azureml-models/<name>/<version>, the catalog registered from a folder 'models'."""
    version_dir = tmp_path / "azureml-models" / "catalog" / "3"
    shutil.copytree(demo_catalog / "mlp-000", version_dir / "models" / "mlp-000")
    return version_dir


def test_the_folder_models_subdirectory(mount: Path) -> None:
    assert not is_catalog(mount) and is_catalog(mount / "models")
    assert find_catalog(mount) == mount / "models"
    environ = {"AZUREML_MODEL_DIR": str(mount)}
    assert apply(environ) == str(mount / "models")
    assert environ["MM_MODEL_ROOT"] == str(mount / "models")


def test_the_mount_itself(mount: Path) -> None:
    assert find_catalog(mount / "models") == mount / "models"


def test_model_root_wins_and_nothing_set_is_no_change(mount: Path) -> None:
    environ = {"AZUREML_MODEL_DIR": str(mount), "MM_MODEL_ROOT": "/models"}
    assert apply(environ) is None and environ["MM_MODEL_ROOT"] == "/models"
    empty: dict[str, str] = {}
    assert apply(empty) is None and empty == {}


def test_no_catalog_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"x")
    (tmp_path / "weights").mkdir()
    with pytest.raises(ConfigurationError, match=r"holds no model catalog .* it holds: model.onnx, weights/"):
        apply({"AZUREML_MODEL_DIR": str(tmp_path)})
    with pytest.raises(ConfigurationError, match="is not a directory"):
        find_catalog(tmp_path / "missing")


def test_two_catalogs_ask_for_mm_model_root(mount: Path) -> None:
    shutil.copytree(mount / "models", mount / "other")
    with pytest.raises(ConfigurationError, match=r"holds 2 catalogs \(models, other\): set MM_MODEL_ROOT"):
        find_catalog(mount)


def test_serve_refuses_to_start_without_a_catalog(tmp_path: Path) -> None:
    """`python -m manymodels serve` (the image's default command) fails before starting Ray."""
    env = {k: v for k, v in os.environ.items() if k != "MM_MODEL_ROOT"}
    env.update(AZUREML_MODEL_DIR=str(tmp_path), PYTHONPATH=str(APP), RAY_USAGE_STATS_ENABLED="0")
    config = APP.parent / "images" / "serve_config.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "manymodels", "serve", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"error: AZUREML_MODEL_DIR={tmp_path} holds no model catalog" in done.stdout
    assert "starting Ray" not in done.stdout
