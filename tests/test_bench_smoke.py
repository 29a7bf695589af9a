"""Smoke test of the benchmark harness: `python -m benchmarks --quick` completes and writes a
table naming every workload. It asserts no time: CI machines vary, the numbers are for people.

Peers that are not installed (the test extra installs none of them) are skipped by the harness
itself; this test only needs sqlcache. The PostgreSQL rows run on the server the harness starts
from the test extra's `pgserver` (about 10 s at this scale), Redis's where `redis-server` is installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKLOADS = (
    "memory_hit",
    "disk_hit",
    "disk_hit_64",
    "set",
    "set_64",
    "strategy_hit",
    "tag_invalidation",
    "prefix_invalidation",
    "zipf_mix",
    "growth",
    "memory_rss",
    "coherence",
    "postgresql",
    "postgresql_set_64",
    "postgresql_coherence",
    "event_loop_stall",
)


def test_smoke_run_writes_a_table_of_every_workload(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    table = (tmp_path / "latest.md").read_text(encoding="utf-8")
    for workload in WORKLOADS:
        assert f"(`{workload}`)" in table, f"{workload} missing from the table"
    assert "| 1 |" in table and "| 10b |" in table and "| 12.3 |" in table  # the targets, whatever they measured
    results = json.loads((tmp_path / "latest.json").read_text(encoding="utf-8"))
    assert any(row["family"] == "sqlcache" and row["stats"] for row in results["rows"])
