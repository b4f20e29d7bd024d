"""Run the server in a session of its own and turn any stop signal into one orderly stop.

``python -m manymodels serve|demo`` (and so ``make demo`` and the image's standalone entrypoint) start
here. The server -- the Ray driver, and with it every process Ray starts (GCS, raylet, Serve's
controller and replicas) -- runs as a child in a new session. A signal sent to the caller's whole
process group (Ctrl-C in a terminal, ``kill -- -PGID``, a process supervisor, ``make`` passing SIGTERM
on) therefore reaches only this process, which sends the server one SIGINT: Serve deletes the
application while its controller and Ray's processes are all still alive, then Ray shuts down. Without
the separate session Ray's processes receive the same SIGTERM and die under the live controller, whose
shutdown then waits out its 30 s timeout.

If the server has not stopped ``STOP_GRACE_S`` after the first signal, or a second signal arrives
later than ``REPEAT_S`` after it (a second Ctrl-C), its whole session is killed; a signal repeated
sooner is the same request arriving twice (sent to the group and passed on by a parent such as
``make``) and is ignored; once it has exited, anything left in its session is killed too, so no Ray
process outlives the command.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from types import FrameType

# Set in the server's environment: the supervisor's pid (the server stops when that process is gone).
SUPERVISOR_ENV = "MANYMODELS_SUPERVISOR_PID"
STOP_GRACE_S = 12.0
REPEAT_S = 1.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def supervisor_pid() -> int | None:
    """The pid of the supervisor this process runs under, if it is this process's parent."""
    value = os.environ.get(SUPERVISOR_ENV, "")
    if value.isdigit() and int(value) == os.getppid():
        return int(value)
    return None


def orphaned(supervisor: int) -> bool:
    """True once the supervisor is gone (this process was re-parented)."""
    return os.getppid() != supervisor


def run_supervised(module: str, argv: list[str]) -> int:
    """Run ``python -m module *argv`` in its own session until it exits; returns its exit status."""
    env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
    child = subprocess.Popen([sys.executable, "-m", module, *argv], env=env, start_new_session=True)
    deadline: float | None = None
    first_signal = 0.0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal deadline, first_signal
        if deadline is None:
            first_signal = time.monotonic()
            deadline = first_signal + STOP_GRACE_S
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGINT)  # the server's own handler: an orderly stop
        elif time.monotonic() - first_signal < REPEAT_S:
            pass  # the same stop request, delivered twice
        else:
            _say(f"{signal.Signals(signum).name} again: killing the server")
            _kill_session(child.pid)

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        while True:
            try:
                status = child.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() > deadline:
                    _say(f"the server did not stop within {STOP_GRACE_S:.0f}s: killing it")
                    _kill_session(child.pid)
                    deadline = float("inf")
    finally:
        _kill_session(child.pid)  # whatever of the server's session outlived it
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - status if status < 0 else status


def _kill_session(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _say(message: str) -> None:
    print(f"[manymodels] {message}", file=sys.stderr, flush=True)
