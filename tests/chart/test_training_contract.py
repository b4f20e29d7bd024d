"""The training RayJob against the serving pods and itself: its pods see the model store exactly as the
serving workers do (same store URI, ServiceAccount and identity, env, envFrom, volumes, PVC, pod labels),
but mount the claim read-write; the scheduled run (the ConfigMap the CronJob submits) is the same RayJob
as the on-demand one; the entrypoint is the training CLI's command line as a shell parses it."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from helm_tool import find_helm

ROOT = Path(__file__).resolve().parents[2]
KUBE_VERSION = os.environ.get("MANYMODELS_KUBE_VERSION", "1.35.0")


def render(values_file: str, *sets: str) -> list[dict]:
    cmd = [find_helm(), "template", "mm", str(ROOT), "-n", "models", "--kube-version", KUBE_VERSION]
    cmd += ["-f", str(ROOT / values_file)]
    for s in sets:
        cmd += ["--set-json", s]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, [(d["kind"], d["metadata"].get("name")) for d in docs]
    return found[0]


def scheduled_manifest(docs: list[dict]) -> dict:
    return yaml.safe_load(one(docs, "ConfigMap", "mm-manymodels-training")["data"]["rayjob.yaml"])


@pytest.fixture(scope="module")
def full() -> list[dict]:
    """Every optional feature (PVC + loader, env/envFrom/volumes, identities) with scheduled training."""
    return render("ci/full-values.yaml")


def test_training_pods_see_the_store_as_the_serving_workers_do(full):
    serving = one(full, "RayService")
    serve_config = yaml.safe_load(serving["spec"]["serveConfigV2"])
    store_uri = serve_config["applications"][0]["deployments"][0]["user_config"]["store"]["uri"]
    serve_pod = serving["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]
    job = scheduled_manifest(full)["spec"]
    assert shlex.split(job["entrypoint"])[3:5] == ["--store", store_uri]
    cluster = job["rayClusterSpec"]
    for pod in (cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]):
        spec, c = pod["spec"], pod["spec"]["containers"][0]
        serve_spec, sc = serve_pod["spec"], serve_pod["spec"]["containers"][0]
        assert spec["serviceAccountName"] == serve_spec["serviceAccountName"]
        assert (
            pod["metadata"]["annotations"]["manymodels.io/identity-checksum"]
            == (serve_pod["metadata"]["annotations"]["manymodels.io/identity-checksum"])
        )
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"] == serve_spec["securityContext"]
        assert spec.get("priorityClassName") == "manymodels-serving"
        # the global env/envFrom/volumes (the serving group appends its own: cpu-worker-env, store-creds)
        assert c.get("env") == sc.get("env")
        assert c["envFrom"] == [e for e in sc["envFrom"] if "prefix" not in e]
        volumes = {v["name"]: v for v in spec["volumes"]}
        serve_volumes = {v["name"]: v for v in serve_spec["volumes"]}
        assert volumes["ca-bundle"] == serve_volumes["ca-bundle"]
        assert volumes["models"]["persistentVolumeClaim"] == {
            **serve_volumes["models"]["persistentVolumeClaim"],
            "readOnly": False,
        }
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        serve_mounts = {m["name"]: m for m in sc["volumeMounts"]}
        assert mounts["models"] == {**serve_mounts["models"], "readOnly": False}
        assert mounts["ca-bundle"] == serve_mounts["ca-bundle"]
        assert serve_mounts["models"]["readOnly"] is True  # the serving side stays read-only
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance"):
            assert pod["metadata"]["labels"][key] == serve_pod["metadata"]["labels"][key]


def test_the_scheduled_run_is_the_on_demand_rayjob(full):
    on_demand = render("ci/full-values.yaml", 'training.schedule=""')
    rayjob = one(on_demand, "RayJob")
    assert scheduled_manifest(full)["spec"] == rayjob["spec"]
    labels = scheduled_manifest(full)["metadata"]["labels"]
    assert rayjob["metadata"]["labels"] == labels
    assert scheduled_manifest(on_demand) == scheduled_manifest(full)  # the run-now CronJob's too


def test_the_entrypoint_is_the_training_cli_command_line():
    docs = render("ci/training-values.yaml", 'training.options={"note":"it\'s a \\"test\\"","n":[1,2]}')
    words = shlex.split(one(docs, "RayJob")["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "manymodels.training"]
    flags = dict(zip(words[3::2], words[4::2], strict=False))
    assert flags["--store"] == "s3://example-models/catalog"
    assert flags["--model"] == "demo-mlp"
    assert flags["--task"] == "manymodels.training.demo:DemoTask"
    assert flags["--num-workers"] == "2"
    # the app's own command-line parser takes the rendered words as they are
    from manymodels.training.__main__ import build_parser

    args = build_parser().parse_args(words[3:])
    # --cpus-per-worker: the worker pods' CPU limit, so one Train worker per pod
    assert (args.num_workers, args.cpus_per_worker, args.use_gpu) == (2, 2.0, True)
    assert (args.min_score, args.min_improvement) == (0.8, 0.0)
    rest = words[words.index("--min-improvement") + 2 :]
    assert rest[0] == "--options-json"
    assert json.loads(rest[1]) == {"note": 'it\'s a "test"', "n": [1, 2]}
