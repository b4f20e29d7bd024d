"""The chart's Helm lifecycle on a real kube-apiserver with the real KubeRay operator (pods by kwok).

Needs a control plane from `ci/e2e-cluster.sh up` (KUBECONFIG) and helm/kubectl on PATH. Steps:
 1. fake nodes: CPU nodes, plus for every cloud file a GPU node carrying its nodeSelector labels and the
    taints its tolerations allow; PersistentVolumes the model PVCs can bind to;
 2. server-side dry-run (strict field validation) of the chart rendered with the default values, each
    values/*.yaml and each ci/*-values.yaml;
 3. `kuberay-operator.enabled=true` (before any CRD exists): Helm installs the CRDs from the dependency's
    crds/, the operator Deployment becomes Available (kwok pod) and its RBAC exists; then uninstall;
 4. the KubeRay operator runs on the host (`ci/e2e-cluster.sh operator`, started by the caller) and
    for the default values and each values/*.yaml: `helm install`, the operator builds the RayCluster,
    head and worker pods with the resources, GPU limits, node selectors and tolerations the values ask
    for, all scheduled onto matching nodes, and the head Service; then `helm uninstall`;
 5. lifecycle on one release, with the head pods' dashboards answered by tests/e2e/dashboard_stub.py
    (MANYMODELS_E2E_DASHBOARD_STUB; see docs/e2e.md): the RayService becomes Ready on its first cluster;
    model rollout upgrade (serveConfigV2 changes, KubeRay submits it to the same RayCluster); worker
    group upgrade (only rayClusterConfig changes): KubeRay's zero-downtime path starts a pending
    RayCluster with the new spec while traffic stays on the old one, then switches to it when its Serve
    applications are RUNNING; rollback (again a new cluster, with rev 1's spec); uninstall leaves
    nothing behind.

Usage: python tests/e2e/lifecycle.py --phase operator-chart|lifecycle  (ci/e2e.sh runs both)
"""

from __future__ import annotations

import argparse
import base64
import glob
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CLOUD_FILES = sorted(glob.glob(str(ROOT / "values" / "*.yaml")))
CI_FILES = sorted(glob.glob(str(ROOT / "ci" / "*-values.yaml")))
FULLNAME = "mm-manymodels"
# tests/e2e/dashboard_stub.py, the stand-in for the kwok head pods' dashboards (set by ci/e2e.sh)
STUB = os.environ.get("MANYMODELS_E2E_DASHBOARD_STUB", "")


def say(msg: str) -> None:
    print(f"lifecycle: {msg}", flush=True)


def run(*args: str, input: str | None = None, check: bool = True) -> str:
    p = subprocess.run(args, input=input, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout


def kubectl(*args: str, **kw) -> str:
    return run("kubectl", *args, **kw)


def get(kind: str, ns: str | None = None, name: str | None = None, selector: str | None = None):
    args = ["get", kind, "-o", "json"]
    if ns:
        args += ["-n", ns]
    if name:
        args.append(name)
    if selector:
        args += ["-l", selector]
    return json.loads(kubectl(*args))


def helm(*args: str) -> str:
    return run("helm", *args)


def wait_for(what: str, check, timeout: float = 90, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except AssertionError as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last}")


# ---------------------------------------------------------------------------------------- fixtures
def node(name: str, labels: dict, taints: list, gpus: int) -> dict:
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **labels,
            },
        },
        "spec": {"taints": taints},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def taints_for(tolerations: list) -> list:
    """Taints that exactly these tolerations allow (so the test proves they are on the pods)."""
    out = []
    for t in tolerations:
        taint = {"key": t["key"], "effect": t.get("effect", "NoSchedule")}
        if t.get("operator", "Equal") == "Equal":
            taint["value"] = t.get("value", "")
        out.append(taint)
    return out


def create_nodes() -> None:
    nodes = [node(f"cpu-{i}", {}, [], 0) for i in range(2)]
    for path in CLOUD_FILES:
        values = yaml.safe_load(Path(path).read_text()) or {}
        for group, spec in (values.get("workerGroups") or {}).items():
            if spec.get("enabled") and spec.get("nodeSelector"):
                name = f"{Path(path).stem}-{group}-0"
                nodes.append(node(name, spec["nodeSelector"], taints_for(spec.get("tolerations", [])), 8))
    # PersistentVolumes the ReadWriteMany model claims bind to (no provisioner here); one per release
    # that creates a claim, as a released volume is not bound again
    pvs = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"e2e-models-{i}"},
            "spec": {
                "capacity": {"storage": "100Gi"},
                "accessModes": ["ReadWriteMany", "ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": f"/tmp/e2e-models-{i}"},
            },
        }
        for i in range(8)
    ]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all([*nodes, *pvs]))
    wait_for(
        "kwok nodes Ready",
        lambda: (
            all(
                any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
                for n in get("nodes")["items"]
            )
            and len(get("nodes")["items"]) == len(nodes)
        ),
        timeout=60,
    )
    say(f"{len(nodes)} kwok nodes Ready: {[n['metadata']['name'] for n in nodes]}")


# ------------------------------------------------------------------------------------ validation
def server_side_dry_run() -> None:
    # ci/full-values.yaml renders a PodMonitor and a ServiceMonitor: their CRDs (prometheus-operator)
    crds = os.environ["MANYMODELS_MONITORING_CRDS"]
    kubectl("apply", "--server-side", "--force-conflicts", "-f", crds)
    kubectl(
        "wait",
        "--for",
        "condition=Established",
        "--timeout",
        "60s",
        "crd/podmonitors.monitoring.coreos.com",
        "crd/servicemonitors.monitoring.coreos.com",
    )
    for extra in [None, *CLOUD_FILES, *CI_FILES]:
        # CRDs are not in the dry-run: the operator-chart step installed them through Helm already
        args = ["template", "mm", str(ROOT), "-n", "default"]
        if extra:
            args += ["-f", extra]
        manifest = helm(*args)
        # namespaced objects go to an existing namespace; strict field validation rejects unknown fields
        kubectl("apply", "--dry-run=server", "--validate=strict", "-n", "default", "-f", "-", input=manifest)
        name = Path(extra).name if extra else "default values"
        say(f"server-side dry-run (strict) accepted every object: {name}")


# ------------------------------------------------------------------------------- operator chart
def operator_chart() -> None:
    crds = {c["metadata"]["name"] for c in get("crd")["items"]}
    assert not {"rayservices.ray.io", "rayclusters.ray.io"} & crds, f"CRDs already present: {crds}"
    ns = "kuberay-system"
    helm(
        "install",
        "op",
        str(ROOT),
        "-n",
        ns,
        "--create-namespace",
        "-f",
        str(ROOT / "ci/operator-values.yaml"),
        "--set",
        "modelStore.pvc.enabled=false",
        "--set",
        "modelServer.userConfig.store.uri=s3://b/c",
    )
    crds = {c["metadata"]["name"] for c in get("crd")["items"]}
    assert {"rayclusters.ray.io", "rayservices.ray.io", "rayjobs.ray.io"} <= crds, crds
    deployments = get("deployments", ns)["items"]
    assert len(deployments) == 1, [d["metadata"]["name"] for d in deployments]
    dep = deployments[0]["metadata"]["name"]
    wait_for(
        "the operator Deployment Available",
        lambda: any(
            c["type"] == "Available" and c["status"] == "True"
            for c in get("deployment", ns, dep)["status"].get("conditions", [])
        ),
        timeout=90,
    )
    sa = get("deployment", ns, dep)["spec"]["template"]["spec"].get("serviceAccountName")
    bindings = [
        b
        for b in get("clusterrolebindings")["items"]
        if any(s.get("name") == sa and s.get("namespace") == ns for s in b.get("subjects") or [])
    ]
    assert bindings, f"no ClusterRoleBinding for the operator's ServiceAccount {sa}"
    role = bindings[0]["roleRef"]["name"]
    get("clusterrole", name=role)
    # the apiserver's RBAC says the operator may manage RayClusters and pods cluster-wide
    for verb, res, sub in [
        ("create", "rayclusters.ray.io", ""),
        ("update", "rayservices.ray.io", "status"),
        ("create", "pods", ""),
        ("delete", "services", ""),
    ]:
        out = kubectl(
            "auth",
            "can-i",
            verb,
            res,
            *(["--subresource", sub] if sub else []),
            "--as",
            f"system:serviceaccount:{ns}:{sa}",
            "-A",
            check=False,
        ).strip()
        assert out == "yes", f"operator SA may not {verb} {res}: {out}"
    say(
        f"kuberay-operator.enabled=true: CRDs established, Deployment {dep} Available (kwok pod), "
        f"ClusterRole {role} bound to {sa}; RBAC checked with `kubectl auth can-i`"
    )
    helm("uninstall", "op", "-n", ns, "--wait", "--timeout", "120s")
    wait_for(
        "operator resources gone",
        lambda: not get("deployments", ns)["items"] and not get("pods", ns)["items"],
        timeout=90,
    )
    crds = {c["metadata"]["name"] for c in get("crd")["items"]}
    assert "rayservices.ray.io" in crds  # Helm never deletes CRDs from crds/ (by design)
    say("uninstalled the operator release (its CRDs stay, as Helm keeps crds/)")
    kubectl("delete", "namespace", ns, "--wait=false")


# ------------------------------------------------------------------------------------ releases
def computed_values(release: str, ns: str) -> dict:
    return json.loads(helm("get", "values", release, "-n", ns, "--all", "-o", "json"))


def rayservice(ns: str) -> dict:
    return get("rayservice", ns, FULLNAME)


def rayclusters(ns: str) -> list[dict]:
    return get("rayclusters", ns)["items"]


def pods_of(ns: str, cluster: str) -> list[dict]:
    return get("pods", ns, selector=f"ray.io/cluster={cluster}")["items"]


def tolerated(pod_tols: list, wanted: list) -> bool:
    def norm(t):
        return (t.get("key"), t.get("operator", "Equal"), t.get("value", ""), t.get("effect", ""))

    have = {norm(t) for t in pod_tols or []}
    return all(norm(t) in have for t in wanted)


def check_cluster(ns: str, values: dict) -> dict:
    """The operator built the RayCluster as the values ask: head + every enabled group's pods."""

    def built():
        clusters = rayclusters(ns)
        assert clusters, "no RayCluster yet"
        cluster = clusters[0]["metadata"]["name"]
        expected = 1 + sum(g["replicas"] for g in values["workerGroups"].values() if g["enabled"])
        pods = pods_of(ns, cluster)
        running = [p for p in pods if p["status"].get("phase") == "Running" and p["spec"].get("nodeName")]
        assert len(running) == expected, f"{len(running)}/{expected} pods Running in {cluster}: " + str(
            [(p["metadata"]["name"], p["status"].get("phase"), p["status"].get("conditions")) for p in pods]
        )
        return clusters[0], pods

    cluster, pods = wait_for("the operator to build the RayCluster and kwok to run its pods", built, 120)
    name = cluster["metadata"]["name"]
    nodes = {n["metadata"]["name"]: n for n in get("nodes")["items"]}
    head = [p for p in pods if p["metadata"]["labels"].get("ray.io/node-type") == "head"]
    assert len(head) == 1, head
    assert_container(
        head[0],
        values["head"]["resources"],
        0,
        values["head"].get("nodeSelector") or {},
        values["head"].get("tolerations") or [],
    )
    for group, g in values["workerGroups"].items():
        if not g["enabled"]:
            continue
        workers = [p for p in pods if p["metadata"]["labels"].get("ray.io/group") == group]
        assert len(workers) == g["replicas"], (group, len(workers), g["replicas"])
        for p in workers:
            assert_container(
                p,
                g["resources"],
                g["gpus"] if g["type"] == "gpu" else 0,
                g.get("nodeSelector") or {},
                g.get("tolerations") or [],
            )
            labels = nodes[p["spec"]["nodeName"]]["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in (g.get("nodeSelector") or {}).items()), (
                p["spec"]["nodeName"],
                labels,
            )
    services = {s["metadata"]["name"] for s in get("services", ns)["items"]}
    assert f"{name}-head-svc" in services, services
    return cluster


def assert_container(pod: dict, resources: dict, gpus: int, node_selector: dict, tolerations: list) -> None:
    c = pod["spec"]["containers"][0]
    name = pod["metadata"]["name"]
    for kind in ("requests", "limits"):
        for res, qty in (resources.get(kind) or {}).items():
            assert str(c["resources"].get(kind, {}).get(res)) == str(qty), (name, kind, res, c["resources"])
    if gpus:
        assert str(c["resources"]["limits"].get("nvidia.com/gpu")) == str(gpus), (name, c["resources"])
    else:
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {}), (name, c["resources"])
    got = pod["spec"].get("nodeSelector") or {}
    assert all(got.get(k) == v for k, v in node_selector.items()), (name, got, node_selector)
    assert tolerated(pod["spec"].get("tolerations"), tolerations), (name, pod["spec"].get("tolerations"))


def install_and_check(label: str, ns: str, args: list[str]) -> None:
    t = time.monotonic()
    helm("install", "mm", str(ROOT), "-n", ns, "--create-namespace", *args)
    values = computed_values("mm", ns)
    cluster = check_cluster(ns, values)
    groups = {
        g: (v["replicas"], v["gpus"] if v["type"] == "gpu" else 0)
        for g, v in values["workerGroups"].items()
        if v["enabled"]
    }
    say(
        f"{label}: installed; RayCluster {cluster['metadata']['name']} with head + workers {groups} "
        f"(replicas, GPUs/pod) Running on matching kwok nodes, resources/selectors/tolerations as asked "
        f"({time.monotonic() - t:.1f} s)"
    )


def uninstall_and_check(ns: str, keep_pvc: bool) -> None:
    helm("uninstall", "mm", "-n", ns, "--wait", "--timeout", "120s")

    def gone():
        left = []
        for kind in (
            "rayservices",
            "rayclusters",
            "pods",
            "services",
            "serviceaccounts",
            "networkpolicies",
            "poddisruptionbudgets",
            "persistentvolumeclaims",
            "ingresses",
            "configmaps",
            "secrets",
        ):
            for o in get(kind, ns)["items"]:
                n = o["metadata"]["name"]
                if (
                    kind == "serviceaccounts"
                    and n == "default"
                    or kind == "configmaps"
                    and n == "kube-root-ca.crt"
                ):
                    continue
                if kind == "persistentvolumeclaims" and keep_pvc and n == f"{FULLNAME}-models":
                    continue
                left.append(f"{kind}/{n}")
        assert not left, left
        return True

    wait_for(f"nothing left in {ns}", gone, timeout=120)
    pvcs = [p["metadata"]["name"] for p in get("persistentvolumeclaims", ns)["items"]]
    say(
        f"uninstalled: nothing left in {ns}"
        + (f" except the kept PVC {pvcs} (modelStore.pvc.keep)" if pvcs else "")
    )


def install_matrix() -> None:
    cases = [("default values", "e2e-default", [])]
    for path in CLOUD_FILES:
        stem = Path(path).stem
        args = ["-f", path]
        values = yaml.safe_load(Path(path).read_text()) or {}
        gpu = (values.get("workerGroups") or {}).get("gpu") or {}
        if gpu.get("enabled"):
            args += ["--set", "workerGroups.gpu.replicas=1"]  # the cloud files scale GPU pods from 0
        cases.append((f"values/{stem}.yaml", f"e2e-{stem}", args))
    for label, ns, args in cases:
        install_and_check(label, ns, args)
        pvc = bool(computed_values("mm", ns)["modelStore"]["pvc"]["enabled"])
        uninstall_and_check(ns, keep_pvc=pvc)
        if pvc:
            kubectl("-n", ns, "delete", "pvc", "--all", "--wait=false")


# ------------------------------------------------------------------- RayService status and the stub
def stub(method: str, path: str) -> dict:
    req = urllib.request.Request(STUB + path, method=method)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"{}")


def stub_dashboard(ns: str, cluster: str) -> dict:
    """What the stub saw on this cluster's head dashboard (reached by its head Service's DNS name)."""
    prefix = f"{cluster}-head-svc.{ns}.svc."
    seen = {h: d for h, d in stub("GET", "/_stub/state")["dashboards"].items() if h.startswith(prefix)}
    assert len(seen) <= 1, seen
    return next(iter(seen.values()), {"configs": [], "auth": None, "held": False})


def check_submitted(ns: str, cluster: str, rs: dict) -> None:
    """KubeRay PUT exactly this RayService's serveConfigV2 (YAML -> JSON) to the cluster's dashboard,
    with the cluster's Ray auth token."""
    if not STUB:
        return
    d = stub_dashboard(ns, cluster)
    want = yaml.safe_load(rs["spec"]["serveConfigV2"])
    assert d["configs"] and d["configs"][-1] == want, f"{cluster}: last config submitted != serveConfigV2"
    if "authOptions" in rs["spec"]["rayClusterConfig"]:
        secret = get("secret", ns, cluster)
        token = base64.b64decode(secret["data"]["auth_token"]).decode()
        assert d["auth"] == f"Bearer {token}", f"{cluster}: dashboard called without the cluster's token"


def rs_status(ns: str) -> tuple[str, str, dict]:
    st = rayservice(ns).get("status") or {}
    conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
    active = (st.get("activeServiceStatus") or {}).get("rayClusterName", "")
    pending = (st.get("pendingServiceStatus") or {}).get("rayClusterName", "")
    return active, pending, conds


def service_targets(ns: str) -> tuple[str, str]:
    """The RayCluster the RayService's head and serve Services send traffic to."""
    head = get("service", ns, f"{FULLNAME}-head-svc")["spec"]["selector"]["ray.io/cluster"]
    serve = get("service", ns, f"{FULLNAME}-serve-svc")["spec"]["selector"]["ray.io/cluster"]
    return head, serve


def worker_cpu(cluster: dict) -> str:
    return cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"][
        "requests"
    ]["cpu"]


def wait_serving(ns: str, cluster: str, what: str, timeout: float = 90) -> None:
    """The RayService is Ready with `cluster` active, no pending cluster, Services pointing to it."""

    def ready():
        active, pending, conds = rs_status(ns)
        assert (active, pending) == (cluster, ""), f"active={active!r} pending={pending!r}"
        assert conds.get("Ready") == "True" and conds.get("UpgradeInProgress") == "False", conds
        assert service_targets(ns) == (cluster, cluster), service_targets(ns)
        return True

    wait_for(what, ready, timeout)


def lifecycle() -> None:
    ns = "e2e-lifecycle"
    install_and_check("lifecycle rev 1", ns, ["--set", "modelStore.pvc.keep=false"])
    rs1 = rayservice(ns)
    cluster1 = rayclusters(ns)[0]["metadata"]
    name1 = cluster1["name"]
    if STUB:
        t = time.monotonic()
        wait_serving(ns, name1, f"the RayService Ready on {name1}")
        check_submitted(ns, name1, rs1)
        say(
            f"rev 1: KubeRay submitted serveConfigV2 to {name1}'s dashboard (stub) with the cluster's auth "
            f"token; applications RUNNING -> RayService Ready, {name1} active, head/serve Services point "
            f"to it ({time.monotonic() - t:.1f} s)"
        )

    # rev 2: a model rollout -> only serveConfigV2 changes; the same RayCluster stays
    rollout = {"text-sentiment": {"aliases": {"stable": "2", "canary": "3"}}}
    helm(
        "upgrade",
        "mm",
        str(ROOT),
        "-n",
        ns,
        "--reuse-values",
        "--set-json",
        f"modelServer.userConfig.models={json.dumps(rollout)}",
    )
    rs2 = rayservice(ns)
    assert rs2["spec"]["serveConfigV2"] != rs1["spec"]["serveConfigV2"]
    assert rs2["spec"]["rayClusterConfig"] == rs1["spec"]["rayClusterConfig"], (
        "rollout touched rayClusterConfig"
    )
    served = yaml.safe_load(rs2["spec"]["serveConfigV2"])
    ms = next(d for d in served["applications"][0]["deployments"] if d["name"] == "ModelServer")
    assert ms["user_config"]["models"]["text-sentiment"]["aliases"]["stable"] == "2", ms["user_config"]
    if STUB:  # applied in place: KubeRay PUTs the new config to the running cluster's dashboard
        wait_for(
            f"rev 2's serveConfigV2 submitted to {name1}", lambda: check_submitted(ns, name1, rs2) or True, 60
        )
    time.sleep(10)  # give the operator time to (wrongly) build a new cluster
    clusters = rayclusters(ns)
    assert [c["metadata"]["uid"] for c in clusters] == [cluster1["uid"]], [
        c["metadata"]["name"] for c in clusters
    ]
    if STUB:
        wait_serving(ns, name1, f"the RayService still Ready on {name1}", 30)
    say(
        f"rev 2 (model rollout): serveConfigV2 changed, rayClusterConfig identical, RayCluster "
        f"{name1} kept (same uid, no new cluster after 10 s)"
        + ("; the new config was submitted to its dashboard in place" if STUB else "")
    )

    # rev 3: a worker-group change -> KubeRay's zero-downtime path builds a pending cluster. The stub
    # holds the new cluster's Serve applications at DEPLOYING, so the pending phase can be observed.
    if STUB:
        stub("POST", "/_stub/hold")
    t = time.monotonic()
    helm(
        "upgrade",
        "mm",
        str(ROOT),
        "-n",
        ns,
        "--reuse-values",
        "--set-string",
        "workerGroups.cpu.resources.requests.cpu=3",
    )
    rs3 = rayservice(ns)
    assert rs3["spec"]["serveConfigV2"] == rs2["spec"]["serveConfigV2"]
    assert rs3["spec"]["rayClusterConfig"] != rs2["spec"]["rayClusterConfig"]
    worker = rs3["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["requests"]["cpu"] == "3", worker["resources"]
    values3 = computed_values("mm", ns)
    expected_pods = 1 + sum(g["replicas"] for g in values3["workerGroups"].values() if g["enabled"])

    def pending_started():
        active, pending, conds = rs_status(ns)
        assert active == name1 and pending not in ("", name1), f"active={active!r} pending={pending!r}"
        assert conds.get("UpgradeInProgress") == "True", conds
        clusters = {c["metadata"]["name"]: c for c in rayclusters(ns)}
        assert set(clusters) == {name1, pending}, sorted(clusters)
        assert worker_cpu(clusters[pending]) == "3", worker_cpu(clusters[pending])
        running = [p for p in pods_of(ns, pending) if p["status"].get("phase") == "Running"]
        assert len(running) == expected_pods, f"{len(running)}/{expected_pods} pods of {pending} Running"
        # the old cluster is untouched and keeps the traffic while the new one is not ready
        old = clusters[name1]
        assert old["metadata"]["uid"] == cluster1["uid"] and worker_cpu(old) == "4", worker_cpu(old)
        assert service_targets(ns) == (name1, name1), service_targets(ns)
        if STUB:
            check_submitted(ns, pending, rs3)
        return pending

    name2 = wait_for("KubeRay to start a pending RayCluster", pending_started, timeout=90)
    say(
        f"rev 3 (worker group change): only rayClusterConfig changed (requests.cpu=3); KubeRay started "
        f"pending RayCluster {name2} (status.pendingServiceStatus, UpgradeInProgress=True, {expected_pods} "
        f"pods Running, worker requests.cpu=3"
        + (", serveConfigV2 submitted to its dashboard" if STUB else "")
        + f") while {name1} stays unchanged and keeps the head/serve Services "
        f"({time.monotonic() - t:.1f} s)"
    )
    if STUB:
        time.sleep(
            4
        )  # the pending cluster is not ready: nothing may switch yet (the operator polls every 2 s)
        assert pending_started() == name2
        t = time.monotonic()
        stub("POST", "/_stub/release")  # the new cluster's Serve applications are RUNNING now
    wait_serving(ns, name2, f"the switch to {name2}", timeout=90 if STUB else 900)
    clusters = {c["metadata"]["name"] for c in rayclusters(ns)}
    assert name1 in clusters, clusters  # kept for rayClusterDeletionDelaySeconds (60 s) after the switch
    say(
        f"rev 3: {name2}'s applications RUNNING -> KubeRay promoted it (active={name2}, no pending, "
        f"UpgradeInProgress=False, head/serve Services switched); {name1} still exists for "
        f"rayClusterDeletionDelaySeconds ({time.monotonic() - t:.1f} s)"
    )

    # rollback to rev 1 -> the RayService spec is rev 1's again, and a cluster with rev 1's spec serves
    helm("rollback", "mm", "1", "-n", ns)
    rs4 = rayservice(ns)
    assert rs4["spec"]["serveConfigV2"] == rs1["spec"]["serveConfigV2"]
    # (semantically empty fields such as `scaleStrategy: {}` may come and go with defaulting and patches)
    before, after = prune(rs1["spec"]["rayClusterConfig"]), prune(rs4["spec"]["rayClusterConfig"])
    assert before == after, diff(before, after)
    history = json.loads(helm("history", "mm", "-n", ns, "-o", "json"))
    assert [h["revision"] for h in history] == [1, 2, 3, 4] and history[-1]["status"] == "deployed", history
    assert "Rollback to 1" in history[-1]["description"], history[-1]

    def rolled_back():
        active, pending, _ = rs_status(ns)
        assert active not in (name1, name2) and not pending, f"active={active!r} pending={pending!r}"
        cluster = get("raycluster", ns, active)
        assert worker_cpu(cluster) == "4", worker_cpu(cluster)
        return cluster

    t = time.monotonic()
    back = wait_for("a new RayCluster with rev 1's spec serving", rolled_back, timeout=90 if STUB else 900)
    name3 = back["metadata"]["name"]
    wait_serving(ns, name3, f"the RayService Ready on {name3}")
    check_submitted(ns, name3, rs4)
    say(
        f"rollback to rev 1 (rev 4): RayService spec equals rev 1's (serveConfigV2 and rayClusterConfig); "
        f"again the zero-downtime path: new RayCluster {name3} with rev 1's worker spec is active "
        f"({time.monotonic() - t:.1f} s)"
    )
    uninstall_and_check(ns, keep_pvc=False)
    kubectl("delete", "namespace", ns, "--wait=false")


def prune(value):
    """Drop empty maps/lists and nulls, recursively."""
    if isinstance(value, dict):
        value = {k: prune(v) for k, v in value.items()}
        return {k: v for k, v in value.items() if v not in ({}, [], None)}
    if isinstance(value, list):
        return [prune(v) for v in value]
    return value


def diff(a, b, path: str = "") -> list[str]:
    """Paths where two JSON values differ (for assertion messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in diff(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=["operator-chart", "lifecycle"], required=True)
    args = parser.parse_args(argv)
    t = time.monotonic()
    if args.phase == "operator-chart":
        create_nodes()
        operator_chart()
        server_side_dry_run()
    else:
        install_matrix()
        lifecycle()
    say(f"phase {args.phase} PASSED in {time.monotonic() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
