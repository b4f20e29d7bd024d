"""Real Ray, same config: the chart's rendered serveConfigV2 on a local Ray head, submitted the way
the KubeRay operator submits it, then a model rollout (a `helm upgrade` render) under load.

Steps (each one asserts):
 1. build a small demo catalog (ONNX only) in a temporary folder;
 2. `helm template` the chart twice -- revision 1 and revision 2, which differ by a model rollout in
    values (`modelServer.userConfig.models.*.aliases.stable` "1" -> "2") -- and check that only
    `spec.serveConfigV2` differs between them (the RayCluster would be kept);
 3. start a local Ray head with its dashboard on free loopback ports, with Ray's token authentication
    ON (RAY_AUTH_MODE=token, a random token; the operator sends the same `Authorization: Bearer` header);
 4. PUT revision 1 as JSON to http://127.0.0.1:<dashboard>/api/serve/applications/ (what KubeRay does),
    wait for RUNNING, call /v2/health/ready, /-/healthz, /predict and /v2/models/<m>/infer on the Gateway;
 5. start a bounded load generator (threads, loopback only), PUT revision 2, wait until every answer
    comes from version 2: zero failed requests, and the ModelServer replicas are the same (in place);
 6. training (the chart's `training.*`): the RayJob's `spec.entrypoint`, rendered by `helm template`,
    submitted to the same Ray through the dashboard's Jobs API (what KubeRay's submitter does with
    `ray job submit`): a weak first version becomes stable; then, under load, a better one is trained,
    published and promoted, and the answers switch to it with zero failed requests; then a worse one
    is published as `canary` only, and `stable` answers stay where they were;
 7. stop Ray (the `ray start --block` process we started, by pid) and check nothing is left listening.

The chart pins the Gateway's host/port (0.0.0.0:8000) and Ray's proxy host (0.0.0.0); the extracted
config is patched to 127.0.0.1 and free ports (the only edits; printed below).

Usage: python tests/e2e/ray_rollout.py --helm HELM [--chart DIR] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import kube
import yaml
from traffic import Load, summary

ROOT = Path(__file__).resolve().parents[2]
APP = "manymodels"
SAMPLE = [0.25] * 64
TRAIN_MODEL = "train-demo"  # trained by manymodels.training.demo:DemoTask (8 features)
TRAIN_SAMPLE = [0.5, -0.25, 0.125, 1.0, -1.0, 0.75, 0.0, 0.3]
TEXT = "I love this product, it works great"


def say(msg: str) -> None:
    print(f"ray-e2e: {msg}", flush=True)


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def values_for(revision: int, catalog: Path, proxy_port: int) -> dict:
    """Chart values of one release revision: revision 2 is a model rollout (stable alias 1 -> 2)."""
    stable = str(revision)
    return {
        # the catalog is a local folder (no PVC), no node-local disk tier
        "modelStore": {"pvc": {"enabled": False}, "diskCache": {"enabled": False}},
        "rayServeProxyPort": proxy_port,
        # one Ray node here: the Gateway runs at most one replica per node
        "gateway": {"numReplicas": 1},
        "modelServer": {
            "numReplicas": 2,
            "rayActorOptions": {"numCpus": 0.5, "memory": "256Mi"},
            "userConfig": {
                # the training step's new versions and aliases are seen within a second
                "store": {"uri": str(catalog), "refresh_interval_s": 1},
                "cache": {"capacity_bytes": "64Mi"},
                "default_model": "text-sentiment",
                "http": {"host": "127.0.0.1", "port": 0},
                "models": {
                    "text-sentiment": {
                        "aliases": {"stable": stable},
                        "processor": "manymodels.processors.text:TextClassifierProcessor",
                        "processor_options": {"labels": ["negative", "positive"]},
                    },
                    "mlp-000": {"aliases": {"stable": stable}},
                },
            },
        },
    }


def render(
    helm: str,
    chart: Path,
    values: dict,
    vfile: Path,
    template: str = "rayservice.yaml",
    kind: str = "RayService",
) -> dict:
    """`helm template` with these values (written to `vfile`): the one `kind` object of `template`."""
    vfile.write_text(yaml.safe_dump(values))
    out = subprocess.run(
        [helm, "template", "mm", str(chart), "-n", "models", "-f", str(vfile)]
        + ["--show-only", f"templates/{template}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert len(docs) == 1 and docs[0]["kind"] == kind, docs
    return docs[0]


def patch_for_loopback(config: dict, gateway_port: int) -> dict:
    """The only edits to the chart's serveConfigV2: loopback instead of 0.0.0.0, a free Gateway port."""
    config = json.loads(json.dumps(config))
    assert config["http_options"]["host"] == "0.0.0.0", config["http_options"]
    config["http_options"]["host"] = "127.0.0.1"
    (app,) = config["applications"]
    gateway = next(d for d in app["deployments"] if d["name"] == "Gateway")
    assert gateway["user_config"]["host"] == "0.0.0.0" and gateway["user_config"]["port"] == 8000
    gateway["user_config"]["host"] = "127.0.0.1"
    gateway["user_config"]["port"] = gateway_port
    return config


class RayHead:
    """`ray start --head --block` as our own child process; stopping it (by pid) stops its cluster."""

    def __init__(self, work: Path, token: str) -> None:
        names = [
            "gcs",
            "dashboard",
            "client",
            "agent_listen",
            "agent_grpc",
            "metrics",
            "runtime_env",
            "node_manager",
            "object_manager",
        ]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.temp_dir = Path(tempfile.mkdtemp(prefix="mm-ray-", dir="/tmp"))  # short: Ray's socket paths
        self.log = (work / "ray-start.log").open("w")
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.env.pop("RAY_ADDRESS", None)
        # job drivers run `python -m ...` (the training RayJob's entrypoint): this interpreter, as in
        # the image
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        ray = str(Path(sys.executable).with_name("ray"))
        p = self.ports
        self.cmd = [
            ray,
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(p["gcs"]),
            "--include-dashboard",
            "true",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(p["dashboard"]),
            "--ray-client-server-port",
            str(p["client"]),
            "--dashboard-agent-listen-port",
            str(p["agent_listen"]),
            "--dashboard-agent-grpc-port",
            str(p["agent_grpc"]),
            "--metrics-export-port",
            str(p["metrics"]),
            "--runtime-env-agent-port",
            str(p["runtime_env"]),
            "--node-manager-port",
            str(p["node_manager"]),
            "--object-manager-port",
            str(p["object_manager"]),
            "--num-cpus",
            "4",
            "--object-store-memory",
            str(200 * 1024 * 1024),
            "--temp-dir",
            str(self.temp_dir),
        ]
        self.proc: subprocess.Popen | None = None

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard']}"

    def start(self) -> None:
        say(f"starting Ray head (dashboard {self.dashboard}, temp dir {self.temp_dir})")
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            say(f"stopping Ray (SIGTERM to ray start --block, pid {self.proc.pid})")
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                say("ray start did not exit in 60 s; killing its process group")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # anything of this cluster still alive (workers, HAProxy) has our temp dir or session on its
        # command line or was in our process group; end those by pid, never by name
        leftovers = self._processes()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if leftovers:
            say(f"killed {len(leftovers)} leftover processes of this Ray cluster: {leftovers}")
        self.proc = None
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _processes(self) -> list[int]:
        mine = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if str(self.temp_dir) in cmdline or str(self.temp_dir).encode() in environ:
                mine.append(int(entry.name))
        return mine


def wait_for(what: str, check, timeout: float, interval: float = 0.5):
    return kube.wait_for(what, check, timeout, interval, errors=(httpx.HTTPError, KeyError, ValueError))


def app_status(dash: httpx.Client) -> dict:
    r = dash.get("/api/serve/applications/")
    r.raise_for_status()
    return r.json()


def put_config(dash: httpx.Client, config: dict) -> None:
    # KubeRay: yaml.Unmarshal(serveConfigV2) -> json.Marshal -> PUT /api/serve/applications/
    r = dash.put(
        "/api/serve/applications/", content=json.dumps(config), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 200, (r.status_code, r.text)


def running(dash: httpx.Client) -> dict | None:
    status = app_status(dash)
    app = status.get("applications", {}).get(APP)
    if app and app["status"] == "DEPLOY_FAILED":
        raise SystemExit(f"application failed to deploy: {app.get('message')}")
    return status if app and app["status"] == "RUNNING" else None


def replica_ids(status: dict) -> set[str]:
    deployment = status["applications"][APP]["deployments"]["ModelServer"]
    return {r["replica_id"] for r in deployment.get("replicas", [])}


def smoke(gw: httpx.Client, version: str) -> None:
    r = gw.get("/v2/health/ready")
    assert r.status_code == 200, (r.status_code, r.text)
    r = gw.get("/-/healthz")
    assert r.status_code == 200 and "success" in r.text, (r.status_code, r.text)
    r = gw.post("/predict", json={"input_data": TEXT})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "text-sentiment" and body["version"] == version, body
    assert body["outputs"][0]["label"] == "positive", body
    r = gw.post("/predict", json={"model": "mlp-000", "input_data": SAMPLE})
    assert r.status_code == 200 and r.json()["version"] == version, r.text
    assert len(r.json()["outputs"]["logits"]) == 10, r.text
    oip = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": SAMPLE}]}
    r = gw.post("/v2/models/mlp-000/infer", json=oip)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "mlp-000" and body["model_version"] == version, body
    assert body["outputs"][0]["shape"] == [1, 10], body
    say(
        f"/v2/health/ready, /-/healthz, /predict (text + tensor) and /v2/models/mlp-000/infer OK "
        f"(version {version})"
    )


def rollout_under_load(dash: httpx.Client, gw_url: str, config2: dict, before: set[str]) -> None:
    bodies = [{"model": "mlp-000", "input_data": SAMPLE}, {"model": "text-sentiment", "input_data": TEXT}]
    with Load(gw_url, bodies) as load:
        time.sleep(3)  # steady state on revision 1 first
        warm = load.snapshot()
        assert warm and all(v == "1" for _, _, v in warm), Counter(v for _, _, v in warm)
        t_put = time.monotonic()
        put_config(dash, config2)
        say(f"PUT revision 2 under load ({len(warm)} requests so far, all version 1)")

        def switched() -> bool:
            # every answer of the last 2 s (and at least 20 of them) comes from version 2
            now = time.monotonic()
            recent = [v for t, _, v in load.snapshot() if t > max(t_put, now - 2.0)]
            return now - t_put > 2.0 and len(recent) >= 20 and all(v == "2" for v in recent)

        wait_for("all answers from version 2", switched, timeout=60, interval=0.25)
        time.sleep(1)
    results = load.snapshot()
    counts = Counter(v if not v.startswith("ERR") else "failed" for _, _, v in results)
    failures = [v for _, _, v in results if v.startswith("ERR")]
    first_v2 = min(t for t, _, v in results if v == "2") - t_put
    last_v1 = max((t for t, _, v in results if v == "1"), default=t_put) - t_put
    say(
        f"under load: {len(results)} requests {dict(counts)}; first v2 answer {first_v2:.2f} s after "
        f"the PUT, last v1 answer {last_v1:.2f} s after it"
    )
    assert not failures, f"{len(failures)} failed requests, e.g. {failures[:5]}"
    status = wait_for("RUNNING after revision 2", lambda: running(dash), timeout=60)
    after = replica_ids(status)
    assert after == before, f"ModelServer replicas changed: {sorted(before)} -> {sorted(after)}"
    say(
        f"zero failed requests; answers switched to version 2; the {len(after)} ModelServer replicas "
        "were reconfigured in place (same replica ids)"
    )


def training_entrypoint(helm: str, chart: Path, values: dict, work: Path, options: dict) -> str:
    """The on-demand training RayJob's `spec.entrypoint` for these serving values plus `training.*`."""
    values = json.loads(json.dumps(values))
    # the job runs the GPU image in a cluster (the CPU one has no torch); only the entrypoint is used here
    values["image"] = {"variant": "gpu"}
    # one CPU per Train worker (--cpus-per-worker follows the worker pods' CPU limit): the head's 4 CPUs
    # hold the serving app too, and Ray Train waits for its workers' resources rather than failing
    values["training"] = {
        "enabled": True,
        "model": TRAIN_MODEL,
        "options": options,
        "workers": {"resources": {"limits": {"cpu": "1"}}},
    }
    job = render(helm, chart, values, work / "values-training.yaml", "training-rayjob.yaml", "RayJob")
    assert job["spec"]["submissionMode"] == "K8sJobMode", job
    assert " --num-workers 2 --cpus-per-worker 1 " in job["spec"]["entrypoint"], job["spec"]["entrypoint"]
    return job["spec"]["entrypoint"]


def run_job(dash: httpx.Client, entrypoint: str) -> dict:
    """Submit like `ray job submit` (POST /api/jobs/), wait for the end; the job's JSON summary line."""
    r = dash.post("/api/jobs/", json={"entrypoint": entrypoint})
    assert r.status_code == 200, (r.status_code, r.text)
    sid = r.json()["submission_id"]

    def ended() -> str | None:
        status = dash.get(f"/api/jobs/{sid}").json()["status"]
        return status if status in ("SUCCEEDED", "FAILED", "STOPPED") else None

    try:
        status = wait_for(f"training job {sid}", ended, timeout=420, interval=1.0)
    except AssertionError as exc:
        logs = dash.get(f"/api/jobs/{sid}/logs").json()["logs"]
        state = dash.get(f"/api/jobs/{sid}").json()
        raise SystemExit(
            f"{exc}\njob: {json.dumps(state)[:1500]}\nits log ends:\n" + "\n".join(logs.splitlines()[-40:])
        ) from None
    logs = dash.get(f"/api/jobs/{sid}/logs").json()["logs"]
    if status != "SUCCEEDED":
        raise SystemExit(f"training job {sid} {status}; its log ends:\n" + "\n".join(logs.splitlines()[-30:]))
    for line in reversed(logs.splitlines()):
        if line.startswith("{") and '"promoted"' in line:
            return json.loads(line)
    raise AssertionError(f"no JSON summary in the log of {sid}: {logs[-2000:]}")


def train_predict(gw: httpx.Client, version: str | None = None) -> dict:
    body: dict = {"model": TRAIN_MODEL, "input_data": [TRAIN_SAMPLE]}
    if version:
        body["version"] = version
    r = gw.post("/predict", json=body)
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def training_under_load(dash: httpx.Client, gw: httpx.Client, gw_url: str, entrypoint) -> None:
    t = time.monotonic()
    first = run_job(dash, entrypoint({"epochs": 1}))
    assert first["promoted"] and first["stable_version"] is None, first
    v1 = first["version"]
    say(
        f"training job 1 (epochs 1): {v1} published and promoted (score {first['score']:.4f}) in "
        f"{time.monotonic() - t:.1f} s"
    )
    wait_for(f"{TRAIN_MODEL} served at {v1}", lambda: train_predict(gw)["version"] == v1, timeout=60)

    bodies = [
        {"model": TRAIN_MODEL, "input_data": [TRAIN_SAMPLE]},
        {"model": "mlp-000", "input_data": SAMPLE},
    ]
    with Load(gw_url, bodies, max_s=600) as load:
        time.sleep(2)
        t = time.monotonic()
        better = run_job(dash, entrypoint({}))
        assert better["promoted"] and better["stable_version"] == v1, better
        assert better["score"] > first["score"], (better, first)
        v2 = better["version"]
        t_done = time.monotonic()
        say(
            f"training job 2 (defaults) under load: {v2} promoted, score {better['score']:.4f} > "
            f"{first['score']:.4f} ({t_done - t:.1f} s)"
        )

        def switched() -> bool:
            now = time.monotonic()
            recent = [v for ts, m, v in load.snapshot() if m == TRAIN_MODEL and ts > max(t_done, now - 2.0)]
            return now - t_done > 2.0 and len(recent) >= 10 and all(v == v2 for v in recent)

        wait_for(f"every {TRAIN_MODEL} answer from {v2}", switched, timeout=60, interval=0.25)

        t = time.monotonic()
        worse = run_job(dash, entrypoint({"epochs": 1}))
        assert not worse["promoted"] and worse["stable_version"] == v2, worse
        v3 = worse["version"]
        t_done = time.monotonic()
        say(f"training job 3 (epochs 1) under load: {v3} published, not promoted ({worse['reason']})")
        wait_for(f"canary -> {v3}", lambda: train_predict(gw, "canary")["version"] == v3, timeout=30)
        time.sleep(2)
    results = load.snapshot()
    counts, failures = summary(results)
    assert not failures, f"{len(failures)} failed requests, e.g. {failures[:5]}"
    after_v3 = {v for ts, m, v in results if m == TRAIN_MODEL and ts > t_done}
    assert after_v3 == {v2}, f"stable answers after the unpromoted {v3}: {after_v3}"
    served = train_predict(gw)
    assert served["version"] == v2, served
    say(
        f"under load: {len(results)} requests {counts}, zero failed; {TRAIN_MODEL} answers switched "
        f"{v1} -> {v2} when promoted, stayed on {v2} after {v3} (canary only)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm", default=shutil.which("helm") or "helm")
    parser.add_argument("--chart", type=Path, default=ROOT)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    t0 = time.monotonic()

    work = Path(tempfile.mkdtemp(prefix="mm-e2e-ray-"))
    catalog = work / "models"
    subprocess.run(
        [sys.executable, "-m", "manymodels.demo.catalog", "--out", str(catalog), "--mlp", "1", "--no-torch"],
        check=True,
        cwd=ROOT,
    )

    proxy_port, gateway_port = free_ports(2)
    rev1 = render(args.helm, args.chart, values_for(1, catalog, proxy_port), work / "values-rev1.yaml")
    rev2 = render(args.helm, args.chart, values_for(2, catalog, proxy_port), work / "values-rev2.yaml")
    assert rev1["spec"]["rayClusterConfig"] == rev2["spec"]["rayClusterConfig"], "rollout touched the cluster"
    assert rev1["spec"]["serveConfigV2"] != rev2["spec"]["serveConfigV2"]
    changed = {k for k in rev1["spec"] if rev1["spec"][k] != rev2["spec"][k]}
    assert changed == {"serveConfigV2"}, changed
    say("helm template: the model rollout changes spec.serveConfigV2 only (rayClusterConfig identical)")
    config1 = patch_for_loopback(yaml.safe_load(rev1["spec"]["serveConfigV2"]), gateway_port)
    config2 = patch_for_loopback(yaml.safe_load(rev2["spec"]["serveConfigV2"]), gateway_port)
    say(
        f"patched for loopback: http_options.host and Gateway user_config host -> 127.0.0.1, Gateway "
        f"port 8000 -> {gateway_port}; Ray proxy port {proxy_port} (rayServeProxyPort)"
    )

    token = secrets.token_hex(32)
    head = RayHead(work, token)
    stop_requested = []

    def on_signal(signum, _frame):
        stop_requested.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    gw_url = f"http://127.0.0.1:{gateway_port}"
    ok = False
    try:
        head.start()
        auth = {"Authorization": f"Bearer {token}"}
        with (
            httpx.Client(base_url=head.dashboard, timeout=30, headers=auth) as dash,
            httpx.Client(base_url=gw_url, timeout=30) as gw,
        ):

            def dashboard_up() -> bool:
                if head.proc.poll() is not None:
                    raise SystemExit(f"ray start exited with {head.proc.returncode}; see {head.log.name}")
                return dash.get("/api/serve/applications/").status_code == 200

            wait_for("the Ray dashboard's Serve API", dashboard_up, timeout=120)
            say(f"Ray head up in {time.monotonic() - t0:.1f} s (since test start)")
            r = httpx.get(head.dashboard + "/api/serve/applications/", timeout=10)
            assert r.status_code in (401, 403), f"no token, yet the dashboard answered {r.status_code}"
            say(f"token auth is on: a request without the token gets {r.status_code}")

            t = time.monotonic()
            put_config(dash, config1)
            status = wait_for("application RUNNING", lambda: running(dash), timeout=180)
            wait_for("the Gateway", lambda: gw.get("/v2/health/ready").status_code == 200, timeout=60)
            say(f"revision 1 RUNNING and serving {time.monotonic() - t:.1f} s after the PUT")
            smoke(gw, "1")
            before = replica_ids(status)
            assert len(before) == 2, before
            rollout_under_load(dash, gw_url, config2, before)
            smoke(gw, "2")
            values2 = values_for(2, catalog, proxy_port)
            training_under_load(
                dash, gw, gw_url, lambda opts: training_entrypoint(args.helm, args.chart, values2, work, opts)
            )
        ok = True
    finally:
        head.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"kept {work}")
    listening = [
        p for p in (gateway_port, proxy_port, head.ports["dashboard"], head.ports["gcs"]) if _listening(p)
    ]
    assert not listening, f"still listening after stop: {listening}"
    say(f"{'PASSED' if ok else 'FAILED'} in {time.monotonic() - t0:.1f} s")
    return 0 if ok else 1


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    sys.exit(main())
