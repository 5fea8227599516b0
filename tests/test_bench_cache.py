"""benchmarks/cache.py runs end to end in its smoke size, against the real diskcache.

Nothing here looks at a latency or a ratio (they are the benchmark's to report, not a
test's to assert); it checks that the benchmark still works: every store, every phase and
thread count ran without an error, every get of a key it stored found it, and the
verdicts name each target of the issue."""

from __future__ import annotations

from pathlib import Path

from _vdbtools import run_benchmark


def test_cache_benchmark_runs_every_store_and_every_get_finds_its_key(tmp_path: Path) -> None:
    doc = run_benchmark("cache.py", tmp_path, "--quick")
    assert doc["problems"] == []
    stores = {(r["store"], r["threads"]) for r in doc["results"]}
    for store in ("viperdbm", "viperdbm+limit", "diskcache"):
        assert {(store, 1), (store, 8)} <= stores
    for run in doc["results"]:
        assert run["problems"] == [], run["store"]
        assert run["checks"]["get_misses"] == 0, run["store"]
        assert run["checks"]["delete_misses"] == 0, run["store"]
    targets = {(v["target"].split(":")[0], v["threads"], v["store"]) for v in doc["verdicts"]}
    for op in ("set", "get"):
        for threads in (1, 8):
            assert (op, threads, "viperdbm") in targets
    assert all(v["verdict"] in ("met", "not met") for v in doc["verdicts"])
