"""Smoke test of bench/cache_replay.py: it runs, replays every scenario and its numbers make sense."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_quick_replay_runs_and_production_policy_beats_lru(tmp_path: Path) -> None:
    out = tmp_path / "replay.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cache_replay.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| target | measured | limit | result |" in proc.stdout
    assert "targets met" in proc.stdout
    data = json.loads(out.read_text())
    rows = data["rows"]
    scenarios = {r["scenario"] for r in rows}
    assert len(scenarios) == 11
    assert len(data["checks"]) == 13
    by = {(r["scenario"], r["policy"].split(" ")[0]): r for r in rows}
    for scenario in scenarios:
        prod, lru = by[(scenario, "tinylfu-gdsf")], by[(scenario, "lru")]
        assert 0 <= lru["hit_ratio"] < prod["hit_ratio"] <= 1
        assert prod["load_seconds"] < lru["load_seconds"]
        belady = by.get((scenario, "Belady"))
        if belady is not None:  # exact optimum on unit sizes: nothing online may beat it
            assert prod["hit_ratio"] <= belady["hit_ratio"]
    count_lru = [r for r in rows if r["peak_over_budget"] is not None]
    assert len(count_lru) == 1 and count_lru[0]["peak_over_budget"] > 1
