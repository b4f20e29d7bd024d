"""kubectl/helm helpers and RayService checks shared by the end-to-end scripts (lifecycle.py on kwok
nodes, node_path.py on a real node). Every command's failure raises AssertionError with its output."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the release is always `mm`: the RayService and its Services are named after the chart's fullname
FULLNAME = "mm-manymodels"


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


def wait_for(what: str, check, timeout: float = 90, interval: float = 1.0, errors=(AssertionError,)):
    """Polls `check` until it returns something truthy; `errors` raised meanwhile count as "not yet"."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except errors as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def computed_values(release: str, ns: str) -> dict:
    return json.loads(helm("get", "values", release, "-n", ns, "--all", "-o", "json"))


def rayservice(ns: str) -> dict:
    return get("rayservice", ns, FULLNAME)


def rayclusters(ns: str) -> list[dict]:
    return get("rayclusters", ns)["items"]


def pods_of(ns: str, cluster: str) -> list[dict]:
    return get("pods", ns, selector=f"ray.io/cluster={cluster}")["items"]


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


def wait_serving(ns: str, cluster: str, what: str, timeout: float = 90) -> None:
    """The RayService is Ready with `cluster` active, no pending cluster, Services pointing to it."""

    def ready():
        active, pending, conds = rs_status(ns)
        assert (active, pending) == (cluster, ""), f"active={active!r} pending={pending!r}"
        assert conds.get("Ready") == "True" and conds.get("UpgradeInProgress") == "False", conds
        assert service_targets(ns) == (cluster, cluster), service_targets(ns)
        return True

    wait_for(what, ready, timeout)


def uninstall_and_check(ns: str, keep_pvc: bool, users: tuple[str, ...] = ()) -> str:
    """`helm uninstall` leaves nothing of the release in `ns` (but the kept model claim and `users`, the
    "kind/name" objects the user made for it, e.g. Secrets); a summary line."""
    helm("uninstall", "mm", "-n", ns, "--wait", "--timeout", "120s")

    def gone():
        left = []
        for kind in (
            "rayservices",
            "rayjobs",
            "rayclusters",
            "cronjobs",
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
                if f"{kind}/{n}" not in users:
                    left.append(f"{kind}/{n}")
        assert not left, left
        return True

    wait_for(f"nothing left in {ns}", gone, timeout=120)
    pvcs = [p["metadata"]["name"] for p in get("persistentvolumeclaims", ns)["items"]]
    return f"uninstalled: nothing left in {ns}" + (
        f" except the kept PVC {pvcs} (modelStore.pvc.keep)" if pvcs else ""
    )


def value_change_rows() -> list[tuple[list[str], str, str]]:
    """docs/chart.md "What each value change does": (flags, effect, checked-by) of every row, the
    effect being the row's bold words (lifecycle.py and node_path.py each run the rows they check)."""
    doc = (ROOT / "docs" / "chart.md").read_text().split("## What each value change does", 1)[1]
    rows = []
    for line in doc.split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| `--") or len(cells) != 3:
            continue
        # plain whitespace split: a key's escaped dot (example\.com) must reach helm as written
        flags = [f for code in re.findall(r"`([^`]+)`", cells[0]) for f in code.split()]
        effect = re.match(r"\*\*(.+?)\*\*", cells[1])
        assert effect, f"row {line!r}: no bold effect"
        rows.append((flags, effect.group(1), cells[2]))
    assert len(rows) >= 10, rows
    return rows
