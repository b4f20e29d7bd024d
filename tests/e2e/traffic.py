"""Load for the end-to-end scripts: a bounded /predict load generator whose every answer is recorded,
so that a rollout or a failure is judged on counted requests (ray_rollout.py, node_path.py)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx


class Load:
    """A bounded load generator: `threads` keep-alive clients POSTing /predict bodies in turn, at most
    `max_s` seconds. Each result is (monotonic time, model, the answer's version or "ERR ...")."""

    def __init__(self, url: str, bodies: list[dict], threads: int = 4, max_s: float = 120.0) -> None:
        self.url, self.bodies, self.threads, self.max_s = url, bodies, threads, max_s
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.results: list[tuple[float, str, str]] = []  # (time, model, version or "ERR ...")
        self.workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        deadline = time.monotonic() + self.max_s
        with httpx.Client(base_url=self.url, timeout=30) as client:
            n = 0
            while not self.stop.is_set() and time.monotonic() < deadline:
                body = self.bodies[(i + n) % len(self.bodies)]
                n += 1
                try:
                    r = client.post("/predict", json=body)
                    outcome = (
                        r.json()["version"] if r.status_code == 200 else f"ERR {r.status_code} {r.text[:200]}"
                    )
                except Exception as exc:  # noqa: BLE001 -- every failure counts
                    outcome = f"ERR {type(exc).__name__}: {exc}"
                with self.lock:
                    self.results.append((time.monotonic(), body["model"], outcome))

    def __enter__(self) -> Load:
        for w in self.workers:
            w.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for w in self.workers:
            w.join(timeout=40)

    def snapshot(self) -> list[tuple[float, str, str]]:
        with self.lock:
            return list(self.results)


def summary(results: list[tuple[float, str, str]]) -> tuple[dict, list[str]]:
    """Counts per outcome (versions, "failed") and the failures' texts."""
    counts = Counter(v if not v.startswith("ERR") else "failed" for _, _, v in results)
    return dict(counts), [v for _, _, v in results if v.startswith("ERR")]
