"""``python -m manymodels.kube_rayjob``: the chart's training RayJobs through the Kubernetes API.

    python -m manymodels.kube_rayjob submit --manifest FILE --selector SEL [--history-limit N]
    python -m manymodels.kube_rayjob delete --selector SEL [--timeout S]
        [--server URL --token-file FILE --ca-file FILE --namespace NS]   (default: in-cluster)

KubeRay's RayJob (v1.6) has no schedule, and its RayCronJob is an alpha feature gate off by default,
so the chart schedules training with a plain CronJob whose pod runs ``submit``: it creates one RayJob
from the manifest the chart rendered into a ConfigMap (``metadata.generateName``: a new name each
run), unless a RayJob matching SEL is still unfinished -- a CronJob's concurrencyPolicy only sees its
own short-lived pods, so this is what keeps two training runs from publishing at once -- and then
deletes the oldest finished ones beyond ``--history-limit``. ``delete`` (the chart's pre-delete hook)
deletes every RayJob matching SEL and waits until KubeRay has removed them (its finalizer stops the
Ray job first), so ``helm uninstall`` leaves no training cluster running.

Credentials: the pod's ServiceAccount (token, CA and namespace under
/var/run/secrets/kubernetes.io/serviceaccount, the API server from KUBERNETES_SERVICE_HOST/PORT), or
the explicit flags (tests, or a run from a workstation with ``kubectl create token``). Prints one JSON
line; exit status 0, 1 when the API refuses or a wait times out, 2 for a mistake the caller can fix.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
API = "/apis/ray.io/v1/namespaces/{namespace}/rayjobs"
# JobDeploymentStatus values after which KubeRay does nothing more with a RayJob (v1.6)
FINISHED = frozenset({"Complete", "Failed", "ValidationFailed"})


class UsageError(Exception):
    """A mistake in the arguments or the manifest (exit status 2)."""


class ApiError(Exception):
    """The API server refused a request (exit status 1)."""


@dataclass(frozen=True)
class Target:
    server: str
    token: str
    namespace: str
    ca_file: str | None


def in_cluster_target() -> Target:
    sa_dir = SA_DIR
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host or not (sa_dir / "token").is_file():
        raise UsageError(
            "not in a pod with a ServiceAccount token (KUBERNETES_SERVICE_HOST, "
            f"{sa_dir}/token): pass --server, --token-file, --ca-file and --namespace"
        )
    if ":" in host:  # an IPv6 service address
        host = f"[{host}]"
    return Target(
        server=f"https://{host}:{port}",
        token=(sa_dir / "token").read_text().strip(),
        namespace=(sa_dir / "namespace").read_text().strip(),
        ca_file=str(sa_dir / "ca.crt"),
    )


def client_for(target: Target, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    verify: ssl.SSLContext | bool = True
    if target.ca_file:
        verify = ssl.create_default_context(cafile=target.ca_file)
    return httpx.Client(
        base_url=target.server,
        headers={"Authorization": f"Bearer {target.token}", "Accept": "application/json"},
        verify=verify,
        timeout=30.0,
        transport=transport,
    )


def parse_selector(selector: str) -> dict[str, str]:
    """An equality-based label selector ("k=v,k2=v2") as a dict; the only kind the chart renders."""
    out: dict[str, str] = {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, sep, value = term.partition("=")
        if not sep or not key or value.startswith("=") or key.endswith("!"):
            raise UsageError(f"--selector {selector!r}: use key=value[,key=value...] (got {term!r})")
        out[key.strip()] = value.strip()
    if not out:
        raise UsageError("--selector is empty: it would match every RayJob in the namespace")
    return out


def finished(job: dict[str, Any]) -> bool:
    return (job.get("status") or {}).get("jobDeploymentStatus") in FINISHED


def _name(job: dict[str, Any]) -> str:
    return job["metadata"]["name"]


class RayJobs:
    """RayJobs of one namespace (create, list by label selector, delete)."""

    def __init__(self, client: httpx.Client, namespace: str) -> None:
        self.client = client
        self.path = API.format(namespace=namespace)

    def _check(self, response: httpx.Response, what: str) -> httpx.Response:
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise ApiError(f"{what}: HTTP {response.status_code}: {message}")
        return response

    def list(self, selector: str) -> list[dict[str, Any]]:
        r = self.client.get(self.path, params={"labelSelector": selector})
        return self._check(r, f"list rayjobs -l {selector}").json().get("items") or []

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self._check(self.client.post(self.path, json=manifest), "create rayjob").json()

    def delete(self, name: str) -> None:
        r = self.client.request("DELETE", f"{self.path}/{name}", json={"propagationPolicy": "Background"})
        if r.status_code != 404:  # already gone: what was asked
            self._check(r, f"delete rayjob {name}")


def load_manifest(path: Path, selector: dict[str, str]) -> dict[str, Any]:
    try:
        manifest = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"--manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != "RayJob":
        raise UsageError(f"--manifest {path}: not a RayJob manifest")
    meta = manifest.get("metadata") or {}
    if not meta.get("generateName") or meta.get("name"):
        raise UsageError(
            f"--manifest {path}: needs metadata.generateName (and no name): each run is a new RayJob"
        )
    labels = meta.get("labels") or {}
    missing = {k: v for k, v in selector.items() if labels.get(k) != v}
    if missing:
        # a RayJob the selector does not match would escape the concurrency check, pruning and uninstall
        raise UsageError(f"--manifest {path}: its labels lack {missing} of --selector")
    return manifest


def submit(jobs: RayJobs, manifest: dict[str, Any], selector: str, history_limit: int) -> dict[str, Any]:
    """Creates one RayJob unless one is unfinished; prunes finished ones beyond history_limit."""
    existing = jobs.list(selector)
    active = sorted(_name(j) for j in existing if not finished(j))
    if active:
        return {"action": "skipped", "reason": "a training RayJob is still running", "active": active}
    created = _name(jobs.create(manifest))
    done = sorted(
        (j for j in existing if finished(j)),
        key=lambda j: (j["metadata"].get("creationTimestamp", ""), _name(j)),
        reverse=True,
    )
    pruned = [_name(j) for j in done[history_limit:]]
    for name in pruned:
        jobs.delete(name)
    return {"action": "submitted", "rayjob": created, "pruned": pruned}


def delete_all(jobs: RayJobs, selector: str, timeout_s: float, poll_s: float = 2.0) -> dict[str, Any]:
    """Deletes every RayJob matching selector and waits until they are gone (finalizers done)."""
    names = sorted(_name(j) for j in jobs.list(selector))
    for name in names:
        jobs.delete(name)
    deadline = time.monotonic() + timeout_s
    while left := sorted(_name(j) for j in jobs.list(selector)):
        if time.monotonic() >= deadline:
            raise ApiError(f"still there after {timeout_s:.0f} s (is the KubeRay operator running?): {left}")
        time.sleep(poll_s)
    return {"action": "deleted", "rayjobs": names}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m manymodels.kube_rayjob", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--selector", required=True, help="label selector of this release's training RayJobs")
    common.add_argument("--server", help="API server URL (default: in-cluster)")
    common.add_argument(
        "--token-file", type=Path, help="bearer token file (default: the pod's ServiceAccount)"
    )
    common.add_argument("--ca-file", help="CA bundle of the API server (default: the pod's)")
    common.add_argument("--namespace", help="namespace (default: the pod's)")
    s = sub.add_parser("submit", parents=[common], help="create a RayJob from a manifest, prune old ones")
    s.add_argument("--manifest", type=Path, required=True, help="RayJob YAML with metadata.generateName")
    s.add_argument("--history-limit", type=int, default=3, help="finished RayJobs to keep (default 3)")
    d = sub.add_parser("delete", parents=[common], help="delete every matching RayJob and wait")
    d.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    return p


def _target(args: argparse.Namespace) -> Target:
    explicit = (args.server, args.token_file, args.namespace)
    if not any(explicit):
        return in_cluster_target()
    if not all(explicit):
        raise UsageError("--server, --token-file and --namespace go together (and --ca-file, or system CAs)")
    try:
        token = args.token_file.read_text().strip()
    except OSError as exc:
        raise UsageError(f"--token-file: {exc}") from exc
    return Target(server=args.server, token=token, namespace=args.namespace, ca_file=args.ca_file)


def main(argv: Sequence[str] | None = None, transport: httpx.BaseTransport | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        selector = parse_selector(args.selector)
        if args.command == "submit" and args.history_limit < 0:
            raise UsageError("--history-limit must be >= 0")
        manifest = load_manifest(args.manifest, selector) if args.command == "submit" else None
        target = _target(args)
        with client_for(target, transport) as client:
            jobs = RayJobs(client, target.namespace)
            if manifest is not None:
                result = submit(jobs, manifest, args.selector, args.history_limit)
            else:
                result = delete_all(jobs, args.selector, args.timeout)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ApiError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"namespace": target.namespace, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
