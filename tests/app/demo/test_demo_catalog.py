from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from manymodels.demo.catalog import TORCH_STATE, build_demo_catalog, main, mlp_widths
from manymodels.runtimes import RuntimeSettings, load_model
from manymodels.store import LocalStore
from manymodels.store.manifest import ModelManifest

EXPECTED = [
    "text-sentiment",
    *(f"mlp-{i:03d}" for i in range(6)),
    "torch-mlp",
    "torch-script",
    "torch-state",
]


def manifests(root: Path) -> list[tuple[Path, ModelManifest]]:
    found = []
    for path in sorted(root.glob("*/*/manifest.json")):
        found.append((path.parent, ModelManifest.model_validate_json(path.read_text())))
    return found


def test_catalog_has_every_model_and_version(demo_catalog: Path) -> None:
    pytest.importorskip("torch")
    store = LocalStore(demo_catalog)
    assert sorted(store.list_models()) == sorted(EXPECTED)
    assert store.list_versions("text-sentiment") == ["1", "2"]
    assert store.list_versions("mlp-000") == ["1", "2"] and store.list_versions("mlp-001") == ["1"]
    for model in ("text-sentiment", "mlp-000", "mlp-004"):
        assert store.store_aliases(model) == {"stable": "1", "canary": "2"}
    assert store.store_aliases("mlp-001") == {}


def test_every_manifest_matches_its_artifact(demo_catalog: Path) -> None:
    found = manifests(demo_catalog)
    assert len(found) >= 9
    for folder, m in found:
        data = (folder / m.artifact).read_bytes()
        assert m.sha256 == hashlib.sha256(data).hexdigest(), m.name
        assert m.size_bytes == len(data)
        assert (m.name, m.version) == (folder.parent.name, folder.name)
        for spec in [*m.inputs, *m.outputs]:
            assert spec.dtype == "float32" and spec.shape[0] == -1 and len(spec.shape) == 2


def test_every_model_loads_and_honours_its_manifest(demo_catalog: Path) -> None:
    settings = RuntimeSettings(device="cpu")
    store = LocalStore(demo_catalog)
    sizes = {}
    for _, m in manifests(demo_catalog):
        factory = None
        if m.format == "torch_state_dict":  # the config names the architecture (TORCH_STATE)
            from manymodels.demo.modules import MLP

            factory = functools.partial(MLP, **TORCH_STATE["module_options"])
        model = load_model(m, store.fetch(m.name, m.version), settings, module_factory=factory)
        batch = {s.name: np.full((3, s.shape[1]), 0.1, np.float32) for s in m.inputs}
        out = model.infer(batch)
        assert list(out) == [s.name for s in m.outputs], m.name
        for spec in m.outputs:
            assert out[spec.name].shape == (3, spec.shape[1]) and out[spec.name].dtype == np.float32
        if m.outputs[-1].name == "probabilities":
            np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
        if m.name.startswith("mlp-"):
            sizes[(m.name, m.version)] = model.memory_bytes()
        model.close()
    # different hidden widths -> different footprints; a v2 keeps its v1's shape
    assert len({v for (_, version), v in sizes.items() if version == "1"}) == 6
    assert sizes[("mlp-000", "1")] == sizes[("mlp-000", "2")]


def test_mlp_widths() -> None:
    widths = mlp_widths(30, seed=0)
    assert min(widths) == 32 and max(widths) == 2048 and len(set(widths)) == 30
    assert all(w % 8 == 0 for w in widths)
    assert widths == mlp_widths(30, seed=0) and widths != mlp_widths(30, seed=1)
    assert mlp_widths(1, 0) == [32] and mlp_widths(0, 0) == []


def digests(root: Path) -> dict[str, str]:
    return {f"{m.name}:{m.version}": m.sha256 for _, m in manifests(root)}


def test_deterministic_with_seed(tmp_path: Path) -> None:
    a = build_demo_catalog(tmp_path / "a", n_mlp=3, with_torch=False, seed=7)
    build_demo_catalog(tmp_path / "b", n_mlp=3, with_torch=False, seed=7)
    build_demo_catalog(tmp_path / "c", n_mlp=3, with_torch=False, seed=8)
    assert a == ["text-sentiment", "mlp-000", "mlp-001", "mlp-002"]
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    differ = [k for k, v in digests(tmp_path / "c").items() if digests(tmp_path / "a")[k] != v]
    assert len(differ) == len(digests(tmp_path / "a"))


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--out", str(tmp_path / "store"), "--mlp", "2", "--no-torch"])
    assert "wrote 3 models" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [
        "mlp-000",
        "mlp-001",
        "text-sentiment",
    ]
    aliases = json.loads((tmp_path / "store" / "text-sentiment" / "aliases.json").read_text())
    assert aliases == {"stable": "1", "canary": "2"}
    with pytest.raises(FileExistsError):  # published versions are immutable
        main(["--out", str(tmp_path / "store"), "--mlp", "1", "--no-torch"])
