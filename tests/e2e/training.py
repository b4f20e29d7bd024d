"""The chart's training job on a real kube-apiserver with the real KubeRay operator (pods by kwok).

Needs the control plane, kwok nodes (GPU ones too) and the operator that `ci/e2e.sh k8s` set up
(tests/e2e/lifecycle.py --phase operator-chart, ci/e2e-cluster.sh operator). With ci/training-values.yaml
(on demand, GPU workers):
 1. `helm install`: the API server accepts the RayJob hook and the operator builds its RayCluster (head +
    GPU train workers on GPU nodes) and its submitter Job; the run-now CronJob is there, suspended;
 2. `python -m manymodels.kube_rayjob` (this checkout's app), run here with a token of the chart's training
    ServiceAccount, so with exactly its RBAC: `submit` skips while the hook's run is unfinished, creates
    a RayJob from the chart's ConfigMap once it is gone (the operator builds that one's cluster too),
    skips again; `kubectl auth can-i` shows the account may do nothing else;
 3. `helm upgrade` to a schedule: the CronJob is active and no RayJob hook is created; `kubectl create job
    --from=cronjob/...` (the documented run-now) is accepted;
 4. `kube_rayjob delete` (what the pre-delete hook runs; kwok "completes" hook pods without running them)
    removes every training RayJob through KubeRay's finalizer, with their clusters; `helm uninstall`
    leaves nothing.
kwok pods run nothing: no Ray job runs here. The real runs: tests/app/training (2 local Train workers),
tests/e2e/ray_rollout.py (this RayJob's entrypoint on a real Ray under load) and tests/e2e/node_path.py
(this RayJob's pods on the real node).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kube import ROOT, get, helm, kubectl, pods_of, uninstall_and_check, wait_for

NS = "e2e-training"
VALUES = ROOT / "ci" / "training-values.yaml"  # on demand, GPU workers
NAME = "mm-manymodels-training"  # RayJob (on demand), CronJob, ConfigMap, ServiceAccount
SELECTOR = (
    "app.kubernetes.io/component=training,app.kubernetes.io/instance=mm,app.kubernetes.io/name=manymodels"
)


def say(msg: str) -> None:
    print(f"training: {msg}", flush=True)


def rayjobs() -> dict[str, dict]:
    return {j["metadata"]["name"]: j for j in get("rayjobs", NS, selector=SELECTOR)["items"]}


def check_run(name: str, gpus: int) -> str:
    """The operator built the RayJob's cluster (head + train workers Running on matching kwok nodes)
    and, in K8sJobMode, the submitter Job; returns the cluster's name."""

    def built():
        cluster = (get("rayjob", NS, name).get("status") or {}).get("rayClusterName")
        assert cluster, f"RayJob {name}: no rayClusterName yet"
        pods = pods_of(NS, cluster)
        running = [p for p in pods if p["status"].get("phase") == "Running" and p["spec"].get("nodeName")]
        assert len(running) == 3, [(p["metadata"]["name"], p["status"].get("phase")) for p in pods]
        return cluster, running

    cluster, pods = wait_for(f"RayJob {name}'s cluster built and its pods Running", built, 120)
    nodes = {n["metadata"]["name"]: n for n in get("nodes")["items"]}
    workers = [p for p in pods if p["metadata"]["labels"].get("ray.io/group") == "train"]
    assert len(workers) == 2, workers
    for p in workers:
        c = p["spec"]["containers"][0]
        assert str(c["resources"]["limits"].get("nvidia.com/gpu")) == str(gpus), c["resources"]
        node = nodes[p["spec"]["nodeName"]]
        assert node["status"]["capacity"].get("nvidia.com/gpu"), f"{p['metadata']['name']} on a CPU node"
        assert p["spec"]["serviceAccountName"] == "mm-manymodels-worker"
        assert p["metadata"]["labels"]["app.kubernetes.io/component"] == "training-worker"
    head = [p for p in pods if p["metadata"]["labels"].get("ray.io/node-type") == "head"][0]
    assert "nvidia.com/gpu" not in head["spec"]["containers"][0]["resources"].get("limits", {})
    wait_for(f"the submitter Job of RayJob {name}", lambda: get("jobs", NS, name), 60)
    return cluster


def api_access(tmp: Path) -> list[str]:
    """--server/--ca-file/--token-file/--namespace for the chart's training ServiceAccount."""
    kc = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json"))
    cluster = kc["clusters"][0]["cluster"]
    ca = tmp / "ca.crt"
    if "certificate-authority-data" in cluster:
        ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    else:
        ca.write_text(Path(cluster["certificate-authority"]).read_text())
    token = tmp / "token"
    token.write_text(kubectl("-n", NS, "create", "token", NAME, "--duration", "10m").strip())
    return [
        "--server",
        cluster["server"],
        "--ca-file",
        str(ca),
        "--token-file",
        str(token),
        "--namespace",
        NS,
    ]


def kube_rayjob(*args: str) -> dict:
    """This checkout's `python -m manymodels.kube_rayjob` (not an installed copy); its JSON line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "app")}
    p = subprocess.run(
        [sys.executable, "-m", "manymodels.kube_rayjob", *args], capture_output=True, text=True, env=env
    )
    assert p.returncode == 0, f"kube_rayjob {args[0]} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout)


def main() -> int:
    t = time.monotonic()
    helm("install", "mm", str(ROOT), "-n", NS, "--create-namespace", "-f", str(VALUES))
    job = get("rayjob", NS, NAME)
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert job["spec"]["entrypoint"].startswith(
        "python -m manymodels.training --store s3://example-models/catalog"
    )
    cron = get("cronjob", NS, NAME)
    assert cron["spec"]["suspend"] is True and cron["spec"]["concurrencyPolicy"] == "Forbid"
    first = check_run(NAME, gpus=1)
    say(f"install (on demand): RayJob {NAME} accepted; the operator built RayCluster {first}")
    say("  (head + 2 GPU workers on GPU nodes) and the submitter Job; CronJob suspended, for run-now")

    sa = f"system:serviceaccount:{NS}:{NAME}"
    for verb, resource, allowed in [
        ("create", "rayjobs.ray.io", "yes"),
        ("list", "rayjobs.ray.io", "yes"),
        ("delete", "rayjobs.ray.io", "yes"),
        ("get", "secrets", "no"),
        ("create", "pods", "no"),
        ("create", "rayclusters.ray.io", "no"),
        ("update", "rayjobs.ray.io", "no"),
    ]:
        out = kubectl("auth", "can-i", verb, resource, "-n", NS, "--as", sa, check=False).strip()
        assert out == allowed, f"{sa} {verb} {resource}: {out}, want {allowed}"

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        access = api_access(tmp)
        manifest = tmp / "rayjob.yaml"
        manifest.write_text(get("configmap", NS, NAME)["data"]["rayjob.yaml"])
        submit = [
            "submit",
            "--manifest",
            str(manifest),
            "--selector",
            SELECTOR,
            "--history-limit",
            "1",
            *access,
        ]
        out = kube_rayjob(*submit)
        assert out["action"] == "skipped" and out["active"] == [NAME], out
        kubectl("-n", NS, "delete", "rayjob", NAME, "--timeout", "60s")  # KubeRay's finalizer, then gone
        out = kube_rayjob(*submit)
        assert out["action"] == "submitted" and out["pruned"] == [], out
        created = out["rayjob"]
        assert created.startswith(f"{NAME}-") and len(created) == len(NAME) + 6, created
        second = check_run(created, gpus=1)
        out = kube_rayjob(*submit)
        assert out == {"namespace": NS, "action": "skipped", "reason": out["reason"], "active": [created]}, (
            out
        )
        say(f"kube_rayjob submit as the training ServiceAccount: skipped while {NAME} ran, created {created}")
        say(
            f"  from the ConfigMap (the operator built RayCluster {second}), then skipped again; RBAC minimal"
        )

        notes = helm(
            "upgrade", "mm", str(ROOT), "-n", NS, "--reuse-values", "--set", "training.schedule=0 3 * * *"
        )
        assert notes
        cron = get("cronjob", NS, NAME)
        assert cron["spec"]["suspend"] is False and cron["spec"]["schedule"] == "0 3 * * *", cron["spec"]
        assert NAME not in rayjobs(), "a scheduled release created the on-demand RayJob hook"
        kubectl("-n", NS, "create", "job", f"--from=cronjob/{NAME}", "training-now")
        run_now = get("job", NS, "training-now")
        assert run_now["spec"]["template"]["spec"]["containers"][0]["args"][:2] == [
            "--manifest",
            "/etc/manymodels/training/rayjob.yaml",
        ]
        say("helm upgrade to a schedule: CronJob active, no RayJob hook; `kubectl create job")
        say("  --from=cronjob/...` accepted (kwok pods run nothing, so it submits nothing here)")

        kubectl("-n", NS, "delete", "job", "training-now", "--wait=false")
        out = kube_rayjob("delete", "--selector", SELECTOR, "--timeout", "60", *access)
        assert out["rayjobs"] == [created], out
        assert not rayjobs()
        wait_for(
            "the training RayClusters gone",
            lambda: not get("rayclusters", NS, selector="ray.io/originated-from-crd=RayJob")["items"],
            60,
        )
        say(f"kube_rayjob delete (the uninstall hook's command): {out['rayjobs']} and their clusters gone")
    say(uninstall_and_check(NS, keep_pvc=False))
    say(f"PASSED in {time.monotonic() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
