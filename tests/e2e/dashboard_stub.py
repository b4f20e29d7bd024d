"""A stand-in for the Ray head pods' dashboard and Serve proxy under kwok (test only, loopback only).

kwok's pods run nothing, so when the KubeRay operator asks a RayCluster's head for its Serve status
(`GET http://<head-svc>.<ns>.svc.cluster.local:8265/api/serve/applications/?api_type=declarative`),
submits `serveConfigV2` (`PUT` on the same path) or checks the head's Serve proxy
(`GET http://<head-pod-ip>:8000/-/healthz`), nothing answers -- the RayService never becomes ready and
KubeRay never gets to its zero-downtime upgrade path. ci/e2e-cluster.sh therefore starts the operator with
`HTTP_PROXY` pointing at this process: Go's HTTP client (KubeRay's dashboard and proxy clients use the
default transport) then sends those plain-HTTP requests here as proxy requests (absolute URLs), and this
server answers them as the head of the cluster named in the URL would:

* `PUT /api/serve/applications/` stores the submitted config for that dashboard (host:port);
* `GET /api/serve/applications/` returns the stored config's applications, each RUNNING with its
  deployments HEALTHY (no applications before the first PUT, as a fresh Ray head);
* `GET /-/healthz` answers `success` (a healthy Serve proxy actor on the head).

It runs no Ray and proves nothing about Serve itself: tests/e2e/ray_rollout.py submits the same
`serveConfigV2` to a real Ray dashboard. HTTPS requests (the API server on 127.0.0.1) never come here:
Go does not proxy loopback addresses and only HTTP_PROXY is set.

Control API for the test (plain, non-proxy requests to this server):
  GET  /_stub/state    every dashboard seen: its PUT configs, last auth header, whether it is held
  POST /_stub/hold     dashboards whose first config arrives from now on report DEPLOYING (not ready)
  POST /_stub/release  every dashboard reports RUNNING again

Usage: python3 tests/e2e/dashboard_stub.py --url-file FILE   (binds 127.0.0.1 on a free port and
writes http://127.0.0.1:PORT to FILE; stopped by SIGTERM to its pid). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SERVE_PATH = "/api/serve/applications/"
LOCK = threading.Lock()
# dashboard host:port -> {"configs": [...], "auth": str | None, "held": bool, "gets": int}
DASHBOARDS: dict[str, dict] = {}
HOLD = {"on": False}


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} dashboard-stub: {msg}", flush=True)


def applications(host: str) -> dict:
    d = DASHBOARDS.get(host)
    if not d or not d["configs"]:
        return {}
    status, dep_status = ("DEPLOYING", "UPDATING") if d["held"] else ("RUNNING", "HEALTHY")
    out = {}
    for app in d["configs"][-1].get("applications") or []:
        deployments = {
            dep["name"]: {"name": dep["name"], "status": dep_status, "message": ""}
            for dep in app.get("deployments") or []
            if "name" in dep
        }
        out[app["name"]] = {
            "name": app["name"],
            "status": status,
            "message": "",
            "route_prefix": app.get("route_prefix", "/"),
            "deployments": deployments,
        }
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Go's client expects; every answer has a length

    def log_request(self, code="-", size="-"):  # stdout is the log file; the 2 s status polls stay quiet
        if not (self.command == "GET" and str(code) == "200"):
            log(f"{self.command} {self.path} -> {code}")

    def log_message(self, fmt, *args):
        log(fmt % args)

    def answer(self, code: int, body, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def route(self, method: str) -> None:
        payload = self.body()
        if not self.path.startswith("http://"):
            return self.control(method)
        url = urlsplit(self.path)
        host = url.netloc
        if url.path == "/-/healthz" and method == "GET":
            return self.answer(200, b"success", "text/plain")
        if url.path != SERVE_PATH:
            return self.answer(404, {"error": f"the stub serves no {url.path}"})
        with LOCK:
            d = DASHBOARDS.setdefault(host, {"configs": [], "auth": None, "held": False, "gets": 0})
            d["auth"] = self.headers.get("x-ray-authorization")
            if method == "PUT":
                try:
                    config = json.loads(payload)
                    names = [a["name"] for a in config["applications"]]
                except (ValueError, KeyError, TypeError) as exc:
                    return self.answer(400, {"error": f"not a Serve config: {exc}"})
                if not d["configs"] and HOLD["on"]:
                    d["held"] = True
                d["configs"].append(config)
                log(
                    f"{host}: config #{len(d['configs'])} with applications {names}"
                    + (" (held)" if d["held"] else "")
                )
                return self.answer(200, b"", "text/plain")
            if method == "GET":
                d["gets"] += 1
                return self.answer(200, {"applications": applications(host), "deploy_mode": "MULTI_APP"})
        return self.answer(405, {"error": method})

    def control(self, method: str) -> None:
        with LOCK:
            if method == "GET" and self.path == "/_stub/state":
                return self.answer(200, {"hold": HOLD["on"], "dashboards": DASHBOARDS})
            if method == "POST" and self.path == "/_stub/hold":
                HOLD["on"] = True
                log("hold: new dashboards report DEPLOYING")
                return self.answer(200, {"hold": True})
            if method == "POST" and self.path == "/_stub/release":
                HOLD["on"] = False
                for d in DASHBOARDS.values():
                    d["held"] = False
                log("release: every dashboard reports RUNNING")
                return self.answer(200, {"hold": False})
        return self.answer(404, {"error": f"no {method} {self.path}"})

    def do_GET(self):
        self.route("GET")

    def do_PUT(self):
        self.route("PUT")

    def do_POST(self):
        self.route("POST")

    def do_DELETE(self):
        self.route("DELETE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url-file", required=True)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    url = f"http://127.0.0.1:{server.server_address[1]}"
    tmp = args.url_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(url + "\n")
    os.replace(tmp, args.url_file)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log(f"listening on {url}")
    server.serve_forever()
    server.server_close()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
