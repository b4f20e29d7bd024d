"""``python -m manymodels.kube_rayjob`` (the chart's training CronJob and uninstall hook) against a fake
RayJob API behind httpx.MockTransport: it answers like kube-apiserver (generateName, equality label
selectors, 404 on a missing object, a finalizer that keeps a deleted object until "the operator" runs).
tests/e2e/lifecycle.py runs the same commands against a real kube-apiserver and KubeRay operator."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from manymodels.kube_rayjob import main

NS = "models"
SELECTOR = "app.kubernetes.io/instance=mm,app.kubernetes.io/component=training"
LABELS = {"app.kubernetes.io/instance": "mm", "app.kubernetes.io/component": "training"}
PATH = f"/apis/ray.io/v1/namespaces/{NS}/rayjobs"


class FakeApi:
    """RayJobs of one namespace; every request is recorded (method, path, labelSelector)."""

    def __init__(self, token: str = "t0k3n") -> None:
        self.token = token
        self.jobs: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.finalizers = False  # when set, a DELETE only marks the object (the operator removes it)
        self._serial = itertools.count()

    def add(self, name: str, status: str | None, created: str, labels: dict | None = None) -> None:
        meta = {"name": name, "namespace": NS, "labels": dict(LABELS if labels is None else labels)}
        meta["creationTimestamp"] = created
        self.jobs[name] = {"metadata": meta, "status": {"jobDeploymentStatus": status} if status else {}}

    def operator_pass(self) -> None:
        for name in [n for n, j in self.jobs.items() if j["metadata"].get("deletionTimestamp")]:
            del self.jobs[name]

    def handler(self, request: httpx.Request) -> httpx.Response:
        selector = request.url.params.get("labelSelector")
        self.requests.append((request.method, request.url.path, selector))
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return httpx.Response(401, json={"kind": "Status", "message": "Unauthorized"})
        if request.url.path == PATH and request.method == "GET":
            want = dict(t.split("=", 1) for t in (selector or "").split(",") if t)
            items = [j for j in self.jobs.values() if want.items() <= j["metadata"]["labels"].items()]
            return httpx.Response(200, json={"kind": "RayJobList", "items": items})
        if request.url.path == PATH and request.method == "POST":
            body = json.loads(request.content)
            meta = body["metadata"]
            name = meta.get("name") or f"{meta['generateName']}{next(self._serial):05d}"
            meta.update(name=name, namespace=NS, creationTimestamp=f"2030-01-01T00:00:{len(self.jobs):02d}Z")
            meta.pop("generateName", None)
            self.jobs[name] = body
            return httpx.Response(201, json=body)
        name = request.url.path.rsplit("/", 1)[1]
        if request.method == "DELETE" and request.url.path == f"{PATH}/{name}":
            if name not in self.jobs:
                return httpx.Response(404, json={"kind": "Status", "message": f'rayjobs "{name}" not found'})
            if self.finalizers:
                self.jobs[name]["metadata"]["deletionTimestamp"] = "now"
            else:
                del self.jobs[name]
            return httpx.Response(200, json={"kind": "Status", "status": "Success"})
        return httpx.Response(405, json={"message": f"unexpected {request.method} {request.url.path}"})


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "rayjob.yaml"
    job = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"generateName": "mm-manymodels-training-", "labels": {**LABELS, "extra": "x"}},
        "spec": {"entrypoint": "python -m manymodels.training --model demo"},
    }
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.fixture
def creds(tmp_path: Path) -> list[str]:
    token = tmp_path / "token"
    token.write_text("t0k3n\n")
    return ["--server", "https://api.test:6443", "--token-file", str(token), "--namespace", NS]


def run(api: FakeApi, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict | str]:
    rc = main(argv, transport=httpx.MockTransport(api.handler))
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else err)


def test_submit_creates_a_new_rayjob_and_prunes_finished_ones_beyond_the_limit(api, manifest, creds, capsys):
    api.add("old-1", "Complete", "2029-01-01T00:00:01Z")
    api.add("old-2", "Failed", "2029-01-01T00:00:02Z")
    api.add("old-3", "ValidationFailed", "2029-01-01T00:00:03Z")
    api.add(
        "someone-else", "Complete", "2028-01-01T00:00:00Z", labels={"app.kubernetes.io/instance": "other"}
    )
    argv = ["submit", "--manifest", str(manifest), "--selector", SELECTOR, "--history-limit", "2", *creds]
    rc, out = run(api, argv, capsys)
    assert rc == 0, out
    assert out == {
        "namespace": NS,
        "action": "submitted",
        "rayjob": "mm-manymodels-training-00000",
        "pruned": ["old-1"],
    }
    created = api.jobs["mm-manymodels-training-00000"]
    assert created["spec"]["entrypoint"] == "python -m manymodels.training --model demo"
    assert created["metadata"]["labels"]["extra"] == "x"
    # the two newest finished ones stay, and nothing outside the selector is touched
    assert sorted(api.jobs) == ["mm-manymodels-training-00000", "old-2", "old-3", "someone-else"]
    assert (("GET", PATH, SELECTOR)) in api.requests


def test_submit_skips_while_a_training_rayjob_is_unfinished(api, manifest, creds, capsys):
    api.add("running", "Running", "2029-01-01T00:00:01Z")
    api.add("new", None, "2029-01-01T00:00:02Z")  # no status yet: the operator has not seen it
    api.add("done", "Complete", "2029-01-01T00:00:00Z")
    argv = ["submit", "--manifest", str(manifest), "--selector", SELECTOR, "--history-limit", "0", *creds]
    rc, out = run(api, argv, capsys)
    assert rc == 0, out
    assert out == {
        "namespace": NS,
        "action": "skipped",
        "reason": "a training RayJob is still running",
        "active": ["new", "running"],
    }
    assert sorted(api.jobs) == ["done", "new", "running"]  # nothing created, nothing pruned
    assert [m for m, *_ in api.requests] == ["GET"]


def test_delete_removes_every_matching_rayjob_and_waits_for_the_finalizers(api, creds, capsys, monkeypatch):
    api.add("a", "Running", "2029-01-01T00:00:01Z")
    api.add("b", "Complete", "2029-01-01T00:00:02Z")
    api.add("keep", "Running", "2029-01-01T00:00:03Z", labels={"app.kubernetes.io/instance": "other"})
    api.finalizers = True
    polls = []

    def sleep(seconds: float) -> None:  # each poll lets "the operator" finish one round
        polls.append(seconds)
        api.operator_pass()

    monkeypatch.setattr("manymodels.kube_rayjob.time.sleep", sleep)
    rc, out = run(api, ["delete", "--selector", SELECTOR, *creds], capsys)
    assert rc == 0, out
    assert out == {"namespace": NS, "action": "deleted", "rayjobs": ["a", "b"]}
    assert sorted(api.jobs) == ["keep"]
    assert len(polls) == 1


def test_delete_fails_when_the_rayjobs_never_go(api, creds, capsys, monkeypatch):
    api.add("stuck", "Running", "2029-01-01T00:00:01Z")
    api.finalizers = True  # and no operator pass ever happens
    monkeypatch.setattr("manymodels.kube_rayjob.time.sleep", lambda s: None)
    rc, err = run(api, ["delete", "--selector", SELECTOR, "--timeout", "0", *creds], capsys)
    assert rc == 1
    assert "still there after 0 s (is the KubeRay operator running?): ['stuck']" in err


@pytest.mark.parametrize(
    "change, message",
    [
        ({"metadata": {"name": "fixed", "labels": LABELS}}, "needs metadata.generateName"),
        ({"metadata": {"generateName": "x-", "labels": {}}}, "its labels lack"),
        ({"kind": "RayCluster"}, "not a RayJob manifest"),
    ],
)
def test_submit_refuses_a_manifest_it_would_lose_track_of(api, manifest, creds, capsys, change, message):
    job = yaml.safe_load(manifest.read_text())
    job.update(change)
    manifest.write_text(yaml.safe_dump(job))
    rc, err = run(api, ["submit", "--manifest", str(manifest), "--selector", SELECTOR, *creds], capsys)
    assert rc == 2 and message in err, err
    assert api.requests == []


@pytest.mark.parametrize("selector", ["", "app!=x", "a==b", "plainkey"])
def test_a_selector_that_is_not_key_value_pairs_is_refused(api, creds, capsys, selector):
    rc, err = run(api, ["delete", "--selector", selector, *creds], capsys)
    assert rc == 2 and "--selector" in err, err
    assert api.requests == []


def test_api_refusals_exit_1_with_the_servers_message(api, manifest, creds, capsys):
    api.token = "another"
    rc, err = run(api, ["submit", "--manifest", str(manifest), "--selector", SELECTOR, *creds], capsys)
    assert rc == 1
    assert "list rayjobs -l" in err and "HTTP 401: Unauthorized" in err


def test_in_cluster_credentials_come_from_the_service_account_mount(
    api, manifest, tmp_path, capsys, monkeypatch
):
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("t0k3n")
    (sa / "namespace").write_text(NS)
    monkeypatch.setattr("manymodels.kube_rayjob.SA_DIR", sa)
    seen = []

    def client_for(target, transport=None):  # the CA file does not exist here: no TLS context
        seen.append((target.server, target.ca_file))
        headers = {"Authorization": f"Bearer {target.token}"}
        return httpx.Client(
            base_url=target.server, headers=headers, transport=httpx.MockTransport(api.handler)
        )

    monkeypatch.setattr("manymodels.kube_rayjob.client_for", client_for)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    rc, out = run(api, ["submit", "--manifest", str(manifest), "--selector", SELECTOR], capsys)
    assert rc == 0, out
    assert out["action"] == "submitted" and out["namespace"] == NS
    assert seen == [("https://10.0.0.1:443", str(sa / "ca.crt"))]


def test_outside_a_pod_without_flags_it_says_which_flags(api, manifest, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr("manymodels.kube_rayjob.SA_DIR", tmp_path / "absent")
    rc, err = run(api, ["submit", "--manifest", str(manifest), "--selector", SELECTOR], capsys)
    assert rc == 2 and "pass --server, --token-file, --ca-file and --namespace" in err, err
