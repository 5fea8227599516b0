"""benchmarks/scale.py runs end to end in its smoke size.

Nothing here looks at a rate, a latency or a verdict (they are the benchmark's to report,
not a test's to assert); it checks that the benchmark still works: both sizes and the
peers ran every phase, the store reopened with every record it closed with, and each
target of the issue has a verdict."""

from __future__ import annotations

from pathlib import Path

from _vdbtools import run_benchmark

PHASES = [
    "build",
    "single_puts",
    "gets",
    "misses",
    "updates",
    "deletes",
    "sync_batches",
    "close",
    "reopen",
    "reopen_read_only",
    "durable",
    "close_s",
]


def test_scale_benchmark_runs_both_sizes(tmp_path: Path) -> None:
    doc = run_benchmark("scale.py", tmp_path, "--quick")
    for size in ("small", "large"):
        run = doc["results"][size]
        assert run["in_progress"] is None and run["phases_done"] == PHASES, size
        closed = run["close"]["stats"]
        for phase in ("reopen", "reopen_read_only"):
            assert run[phase]["stats"]["records"] == closed["records"] > 0, (size, phase)
    assert doc["results"]["peers"]["in_progress"] is None
    assert len(doc["targets"]) == 7
    assert {t["verdict"] for t in doc["targets"]} <= {"met", "not met", "n/a", "not built"}
