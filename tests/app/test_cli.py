"""How long the local server takes to stop: ``make demo`` and ``python -m manymodels serve`` on a real
local Ray, stopped the ways a user or a supervisor stops them (SIGINT or SIGTERM, to the process or
to its whole process group, as Ctrl-C in a terminal and ``kill -- -PGID`` do).

Each must exit within ``LIMIT_S`` (the goal is under 10 s) and leave none of its processes behind --
Ray's GCS, raylet and workers included. The measured times are printed (``-s`` shows them).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from processes import alive, cmdline, descendants, free_port

from manymodels.demo.__main__ import DEFAULT_CONFIG

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 15.0
READY_TIMEOUT_S = 240.0


class Server:
    """A command started as its own process group (like a job in a terminal), output collected."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if re.search(r"\[manymodels\] ready in", line):
                self.ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines[-80:])

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready.wait(0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"the server did not get ready:\n{self.output}")

    def kill(self) -> None:
        for pid in descendants(self.proc.pid) | {self.proc.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)


def _env(tmp_path: Path, demo_catalog: Path) -> dict[str, str]:
    models = tmp_path / "models"
    shutil.copytree(demo_catalog, models)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env.update(
        MM_MODEL_ROOT=str(models),
        MM_HOST="127.0.0.1",
        MM_PORT=str(free_port()),
        MM_RAY_PROXY_PORT=str(free_port()),
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
    )
    return env


def _stop_and_measure(server: Server, sig: signal.Signals, group: bool, what: str) -> float:
    processes = descendants(server.proc.pid)
    assert any("raylet" in cmdline(p) for p in processes), "no raylet under the server?"
    started = time.monotonic()
    if group:
        os.killpg(server.proc.pid, sig)
    else:
        server.proc.send_signal(sig)
    try:
        server.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        pytest.fail(f"{what}: still running 60 s after {sig.name}:\n{server.output}")
    elapsed = time.monotonic() - started
    deadline = time.monotonic() + 2
    while (left := [p for p in processes if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    target = "process group" if group else "process"
    print(f"\n[stop] {what}: {sig.name} to the {target} -> exit {server.proc.returncode} in {elapsed:.1f} s")
    assert not left, f"{what}: left running: {[cmdline(p) for p in left]}\n{server.output}"
    assert elapsed < LIMIT_S, f"{what}: {sig.name} took {elapsed:.1f} s\n{server.output}"
    return elapsed


STOPS = [
    pytest.param(signal.SIGINT, True, id="SIGINT-group"),
    pytest.param(signal.SIGTERM, True, id="SIGTERM-group"),
    pytest.param(signal.SIGTERM, False, id="SIGTERM-process"),
]


@pytest.mark.parametrize(("sig", "group"), STOPS)
def test_serve_stops_quickly(
    sig: signal.Signals, group: bool, tmp_path: Path, demo_catalog: Path
) -> None:
    server = Server(
        [sys.executable, "-m", "manymodels", "serve", "--config", str(DEFAULT_CONFIG)],
        _env(tmp_path, demo_catalog),
    )
    server.wait_ready()
    _stop_and_measure(server, sig, group, "python -m manymodels serve")
    assert server.proc.returncode == 0, server.output
    assert "[manymodels] stopped" in server.output


@pytest.mark.parametrize(("sig", "group"), STOPS)
def test_make_demo_stops_quickly(
    sig: signal.Signals, group: bool, tmp_path: Path, demo_catalog: Path
) -> None:
    venv = Path(sys.prefix)
    if not (venv / ".installed").exists() or shutil.which("make") is None:
        pytest.skip("needs make and the project venv (make venv)")
    server = Server(["make", "--no-print-directory", "demo", f"VENV={venv}"], _env(tmp_path, demo_catalog))
    server.wait_ready()
    _stop_and_measure(server, sig, group, "make demo")
    # make itself dies of the signal it got (-SIG) once its child has stopped, or exits with its
    # child's status 0 when only the child was signalled
    assert server.proc.returncode in (0, -sig, 2), server.output
    assert "[manymodels] stopped" in server.output
