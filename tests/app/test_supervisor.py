"""The supervisor with a stand-in server: the real commands' stop times are in test_cli.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import alive

from manymodels import supervisor

FAKE_SERVER = """
import os, signal, subprocess, sys, time
from manymodels.supervisor import supervisor_pid

helper = subprocess.Popen(["sleep", "300"])  # stands in for Ray's processes
if sys.argv[1] == "ignore-sigint":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
else:
    def stop(*_):
        print("server: SIGINT", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGINT, stop)
print(f"server: {os.getpid()} {os.getsid(0)} {helper.pid} {supervisor_pid()}", flush=True)
while True:
    time.sleep(0.05)
"""

SUPERVISE = """
import sys
from manymodels import supervisor
supervisor.STOP_GRACE_S = float(sys.argv[2])
sys.exit(supervisor.run_supervised("fake_server", [sys.argv[1]]))
"""


class Supervised:
    def __init__(self, tmp_path: Path, mode: str, grace_s: float = 12.0) -> None:
        (tmp_path / "fake_server.py").write_text(FAKE_SERVER)
        env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        env.pop(supervisor.SUPERVISOR_ENV, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SUPERVISE, mode, str(grace_s)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a process group of its own, like a job in a terminal
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("server: "), line
        pid, sid, helper, parent = line.split()[1:]
        self.server, self.server_session, self.helper = int(pid), int(sid), int(helper)
        self.parent_seen = parent

    def finish(self, timeout: float = 30) -> tuple[int, str, float]:
        started = time.monotonic()
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, time.monotonic() - started


@pytest.mark.parametrize("group", [True, False], ids=["group", "process"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_becomes_one_sigint_to_the_server(
    tmp_path: Path, sig: signal.Signals, group: bool
) -> None:
    run = Supervised(tmp_path, "stop")
    # the server runs in a session of its own, so a signal to the caller's group never reaches it
    assert run.server_session == run.server != run.proc.pid
    assert run.parent_seen == str(run.proc.pid)
    if group:
        os.killpg(run.proc.pid, sig)
    else:
        run.proc.send_signal(sig)
    status, out, _ = run.finish()
    assert status == 0
    assert out.count("server: SIGINT") == 1
    assert not alive(run.helper), "a process of the server's session outlived it"


def test_a_server_that_does_not_stop_is_killed_after_the_grace(tmp_path: Path) -> None:
    run = Supervised(tmp_path, "ignore-sigint", grace_s=1.0)
    os.killpg(run.proc.pid, signal.SIGTERM)
    status, _, took = run.finish()
    assert status == 128 + signal.SIGKILL
    assert took < 5
    assert not alive(run.server) and not alive(run.helper)


def test_a_repeated_signal_is_one_request(tmp_path: Path) -> None:
    """``kill -- -PGID`` on ``make demo``: the group signal and make passing it on arrive together."""
    run = Supervised(tmp_path, "stop")
    os.killpg(run.proc.pid, signal.SIGTERM)
    run.proc.send_signal(signal.SIGTERM)
    status, out, _ = run.finish()
    assert status == 0
    assert out.count("server: SIGINT") == 1


def test_a_second_signal_kills_at_once(tmp_path: Path) -> None:
    run = Supervised(tmp_path, "ignore-sigint", grace_s=60.0)
    run.proc.send_signal(signal.SIGINT)
    time.sleep(supervisor.REPEAT_S + 0.3)
    run.proc.send_signal(signal.SIGINT)
    status, _, took = run.finish()
    assert status == 128 + signal.SIGKILL
    assert took < 5
    assert not alive(run.server) and not alive(run.helper)


def test_supervisor_pid_is_only_the_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(supervisor.SUPERVISOR_ENV, str(os.getppid()))
    assert supervisor.supervisor_pid() == os.getppid()
    assert not supervisor.orphaned(os.getppid())
    assert supervisor.orphaned(os.getppid() + 1)
    # inherited by a grandchild (a Ray worker of the server): not its supervisor
    monkeypatch.setenv(supervisor.SUPERVISOR_ENV, str(os.getppid() + 1))
    assert supervisor.supervisor_pid() is None
    monkeypatch.setenv(supervisor.SUPERVISOR_ENV, "not-a-pid")
    assert supervisor.supervisor_pid() is None
