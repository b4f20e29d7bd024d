"""The chart's install shapes on a real kube-apiserver with the real KubeRay operator (pods by kwok).

Needs a control plane from `ci/e2e-cluster.sh up` (KUBECONFIG) and helm/kubectl on PATH. Steps:
 1. fake nodes: CPU nodes, plus for every cloud file a GPU node carrying its nodeSelector labels and the
    taints its tolerations allow; PersistentVolumes the model PVCs can bind to;
 2. server-side dry-run (strict field validation) of the chart rendered with each values/*.yaml and each
    ci/*-values.yaml (ci/minimal-values.yaml: the defaults plus a catalog, which they lack by design);
 3. `kuberay-operator.enabled=true` (before any CRD exists): Helm installs the CRDs from the dependency's
    crds/, the operator Deployment becomes Available (kwok pod) and its RBAC exists; then uninstall;
 4. the KubeRay operator runs on the host (`ci/e2e-cluster.sh operator`, started by the caller) and
    for the default values (+ ci/minimal-values.yaml) and each values/*.yaml: `helm install`, the
    operator builds the RayCluster, head and worker pods with the resources, GPU limits, node selectors
    and tolerations the values ask for, all scheduled onto matching nodes, and the head Service; then
    `helm uninstall`;
The lifecycle itself (Ready, model rollout in place, cluster change, rollback, uninstall) runs with real
pods on a real node: tests/e2e/node_path.py (make test-e2e-node). kwok stays for what it is good at:
every cloud file's scheduling shape on many (fake) nodes.

Usage: python tests/e2e/lifecycle.py --phase PHASE  (ci/e2e.sh runs operator-chart, install-matrix,
value-changes and node-shapes, in that order)
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

import yaml
from kube import (
    ROOT,
    computed_values,
    get,
    helm,
    kubectl,
    pods_of,
    rayclusters,
    rayservice,
    uninstall_and_check,
    value_change_rows,
    wait_for,
)

CLOUD_FILES = sorted(glob.glob(str(ROOT / "values" / "*.yaml")))
CI_FILES = sorted(glob.glob(str(ROOT / "ci" / "*-values.yaml")))


def say(msg: str) -> None:
    print(f"lifecycle: {msg}", flush=True)


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
    # ci/full-values.yaml renders a PodMonitor, a ServiceMonitor and a PrometheusRule: their CRDs
    # (prometheus-operator)
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
        "crd/prometheusrules.monitoring.coreos.com",
    )
    # the bare defaults do not render (no catalog); ci/minimal-values.yaml stands for them
    for extra in [*CLOUD_FILES, *CI_FILES]:
        # CRDs are not in the dry-run: the operator-chart step installed them through Helm already
        manifest = helm("template", "mm", str(ROOT), "-n", "default", "-f", extra, *site_args(extra))
        # namespaced objects go to an existing namespace; strict field validation rejects unknown fields
        kubectl("apply", "--dry-run=server", "--validate=strict", "-n", "default", "-f", "-", input=manifest)
        name = Path(extra).name
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
    notes = helm("install", "mm", str(ROOT), "-n", ns, "--create-namespace", *args)
    assert "WARNING: no node can take" not in notes, notes
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


def site_args(values_file: str) -> list[str]:
    """A cloud file comes with what a user adds to it (ci/sites/<cloud>.yaml: the identity and bucket
    it leaves empty, without which it does not render by design)."""
    site = ROOT / "ci" / "sites" / Path(values_file).name
    return ["-f", str(site)] if site.exists() else []


def install_matrix() -> None:
    # the defaults plus the one value they lack, the catalog (object storage; the bare defaults do not render)
    minimal = str(ROOT / "ci/minimal-values.yaml")
    cases = [("default values + ci/minimal-values.yaml", "e2e-default", ["-f", minimal])]
    for path in CLOUD_FILES:
        stem = Path(path).stem
        args = ["-f", path, *site_args(path)]
        values = yaml.safe_load(Path(path).read_text()) or {}
        gpu = (values.get("workerGroups") or {}).get("gpu") or {}
        if gpu.get("enabled"):
            args += ["--set", "workerGroups.gpu.replicas=1"]  # the cloud files scale GPU pods from 0
        cases.append((f"values/{stem}.yaml", f"e2e-{stem}", args))
    for label, ns, args in cases:
        install_and_check(label, ns, args)
        pvc = bool(computed_values("mm", ns)["modelStore"]["pvc"]["enabled"])
        say(uninstall_and_check(ns, keep_pvc=pvc))
        if pvc:
            kubectl("-n", ns, "delete", "pvc", "--all", "--wait=false")


# ---------------------------------------------------------------------------------- node shapes
SHAPES = ROOT / "ci" / "node-shapes.yaml"


def millicores(q: str) -> int:
    return int(q[:-1]) if q.endswith("m") else int(float(q) * 1000)


def mebibytes(q: str) -> int:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}
    for suffix, factor in units.items():
        if q.endswith(suffix):
            return int(float(q[: -len(suffix)]) * factor)
    return int(q) // 2**20


def shape_node(name: str, shape: dict, daemonsets: dict) -> dict:
    """A kwok node offering pods exactly what the shape's allocatable leaves after the DaemonSets."""
    taints = [{"value": "", **t} for t in shape.get("taints", [])]
    n = node(name, shape["labels"], taints, shape.get("gpus", 0))
    free = {
        "cpu": f"{millicores(shape['allocatable']['cpu']) - millicores(daemonsets['cpu'])}m",
        "memory": f"{mebibytes(shape['allocatable']['memory']) - mebibytes(daemonsets['memory'])}Mi",
        "pods": "110",
        "ephemeral-storage": "100Gi",
    }
    if shape.get("gpus"):
        free["nvidia.com/gpu"] = str(shape["gpus"])
    n["status"] = {"capacity": free, "allocatable": free}
    return n


def check_docs_table(shapes: dict) -> None:
    """docs/chart.md's "GPU node shapes" table shows every shape with this file's numbers."""
    doc = (ROOT / "docs" / "chart.md").read_text()
    for cloud, spec in shapes.items():
        for shape in [spec["cpu_pool"], *spec["gpu"]]:
            a = shape["allocatable"]
            row = f"| {cloud} | {shape['name']} |"
            line = next((ln for ln in doc.splitlines() if ln.startswith(row)), None)
            assert line is not None, f"docs/chart.md has no row starting {row!r}"
            assert f"{a['cpu']} / {a['memory']}" in line, (line, a)


def node_shapes() -> None:
    """Every cloud file, on each GPU shape of ci/node-shapes.yaml (plus its CPU pool for the head and
    CPU workers), with as many GPU workers as the node has GPUs: every pod is scheduled."""
    shapes = yaml.safe_load(SHAPES.read_text())
    check_docs_table(shapes)
    nodes, cases = [], []
    for cloud, spec in shapes.items():
        pool = spec["cpu_pool"]
        nodes.append(shape_node(f"shape-{cloud}-cpu-pool", pool, spec["daemonsets"]))
        for i, shape in enumerate(spec["gpu"]):
            nodes.append(shape_node(f"shape-{cloud}-gpu-{i}", shape, spec["daemonsets"]))
            cases.append((cloud, i, spec, shape))
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(nodes))
    say(f"{len(nodes)} kwok nodes shaped as in ci/node-shapes.yaml")
    key = "node\\.kubernetes\\.io/instance-type"
    for cloud, i, spec, shape in cases:
        ns = f"e2e-shape-{cloud}-{i}"
        pool_type = spec["cpu_pool"]["labels"]["node.kubernetes.io/instance-type"]
        gpu_type = shape["labels"]["node.kubernetes.io/instance-type"]
        gpus = shape["gpus"]
        values = str(ROOT / spec["values"])
        args = ["-f", values, *site_args(values), "--set", f"workerGroups.gpu.replicas={gpus}"]
        args += ["--set", f"workerGroups.gpu.maxReplicas={max(gpus, 2)}"]
        # pin each pod to this case's nodes (the instance-type label every cloud sets)
        pins = {"head": pool_type, "workerGroups.cpu": pool_type, "workerGroups.gpu": gpu_type}
        for path, kind in pins.items():
            args += ["--set", f"{path}.nodeSelector.{key}={kind}"]
        install_and_check(f"values/{cloud}.yaml on {shape['name']}", ns, args)
        say(uninstall_and_check(ns, keep_pvc=False))
    too_big(cases[0][2], cases[0][3], key)


def too_big(spec: dict, shape: dict, key: str) -> None:
    """A GPU worker bigger than the node type it selects is reported by `helm install` itself."""
    ns = "e2e-shape-too-big"
    cpu = millicores(shape["allocatable"]["cpu"]) + 1000
    out = helm(
        "install", "mm", str(ROOT), "-n", ns, "--create-namespace", "-f", str(ROOT / spec["values"]),
        *site_args(str(ROOT / spec["values"])),
        "--set", "workerGroups.gpu.replicas=1",
        "--set", f"workerGroups.gpu.nodeSelector.{key}={shape['labels']['node.kubernetes.io/instance-type']}",
        "--set", f"workerGroups.gpu.resources.requests.cpu={cpu}m",
        "--set", f"workerGroups.gpu.resources.limits.cpu={cpu}m",
    )  # fmt: skip
    assert "WARNING: no node can take a gpu worker pod" in out, out
    assert "head pod" not in out and "cpu worker" not in out, out
    say(f"a {cpu}m GPU worker on {shape['name']}: helm install warned {out.split('WARNING: ')[1][:90]!r}...")
    say(uninstall_and_check(ns, keep_pvc=False))


# -------------------------------------------------------------------------------- value changes
# What each row's effect looks like from outside: a new RayCluster or not, and the upgrade notes.
EFFECTS = {
    "in place": (False, "changes the Serve config only"),
    "new cluster": (True, "builds a NEW cluster"),
    "no Ray change": (False, "changes neither the Ray cluster nor the Serve config"),
    "ignored": (False, "IGNORES cluster changes"),
}


def pending_cluster(ns: str) -> str:
    return (rayservice(ns).get("status") or {}).get("pendingServiceStatus", {}).get("rayClusterName", "")


def value_changes() -> None:
    """Every e2e-k8s row of the table, applied in order to one live release (`--reuse-values`, so each
    row changes only what it names): a new RayCluster appears exactly for "new cluster" rows, and the
    notes of that `helm upgrade` say which row it was."""
    ns = "e2e-changes"
    # The head is kept unschedulable (a nodeSelector no node has): with a Ready head, KubeRay would call
    # its dashboard (unreachable on kwok), fail and requeue before deciding on a new cluster; with a head
    # that is not Ready it goes on to compare the cluster hash, exactly as it does for a serving cluster.
    helm(
        "install", "mm", str(ROOT), "-n", ns, "--create-namespace",
        "--set", "modelStore.pvc.enabled=false", "--set-string", "modelServer.userConfig.store.uri=s3://e2e/models",
        "--set-string", "head.nodeSelector.e2e\\.manymodels\\.io/no-such-node=true",
    )  # fmt: skip
    seen = set(wait_for("the first RayCluster", lambda: {c["metadata"]["name"] for c in rayclusters(ns)}, 60))
    rows = [r for r in value_change_rows() if "e2e-k8s" in r[2]]
    for flags, effect, _ in rows:
        assert effect in EFFECTS, f"{flags}: effect {effect!r} is none of {list(EFFECTS)}"
    for flags, effect, _ in rows:
        new_cluster, note = EFFECTS[effect]
        t = time.monotonic()
        notes = helm("upgrade", "mm", str(ROOT), "-n", ns, "--reuse-values", *flags)
        assert note in notes, f"{flags}: the notes do not say {note!r}:\n{notes}"
        if new_cluster:
            # the operator names the new pending cluster in the RayService's status, then builds it
            pending = wait_for(
                f"a new pending cluster after {flags}",
                lambda: (p := pending_cluster(ns)) not in seen and p,
                60,
            )
            wait_for(
                f"RayCluster {pending}",
                lambda pending=pending: pending in {c["metadata"]["name"] for c in rayclusters(ns)},
                60,
            )
            seen.add(pending)
        else:
            # the "new cluster" rows show the operator acting within ~2 s of the upgrade; 5 s of nothing is
            # a no (KubeRay's status carries no observedGeneration update for a reconcile that changes
            # nothing, so there is no positive signal to wait for)
            time.sleep(5)
            names = {c["metadata"]["name"] for c in rayclusters(ns)}
            assert pending_cluster(ns) in seen and names <= seen, (
                f"{flags} ({effect}) built a new RayCluster: {names}"
            )
        say(f"{' '.join(flags)}: {effect}, as docs/chart.md says ({time.monotonic() - t:.1f} s)")
    say(f"{len(rows)} value changes behaved as the table says")
    say(uninstall_and_check(ns, keep_pvc=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--phase", choices=["operator-chart", "install-matrix", "value-changes", "node-shapes"], required=True
    )
    args = parser.parse_args(argv)
    t = time.monotonic()
    if args.phase == "operator-chart":
        create_nodes()
        operator_chart()
        server_side_dry_run()
    elif args.phase == "install-matrix":
        install_matrix()
    elif args.phase == "value-changes":
        value_changes()
    else:
        node_shapes()
    say(f"phase {args.phase} PASSED in {time.monotonic() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
