"""benchmarks/live_readers.py runs end to end at a small N and its readers find every key.

Nothing here looks at a rate or a time (they are the benchmark's to report, not a test's to
assert); it checks that the benchmark still works, that every get of an existing key it
timed found its key, and that it says "not supported" rather than crash on a build whose
readers cannot open under a writer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET_ROWS = (
    "reader get, writer idle",
    "reader get, writer inserting",
    "writer insert, 3 readers following",
    "reader open + 1 get, live writer",
)


def test_live_readers_benchmark_runs_and_every_get_finds_its_key(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "live_readers.py"),
            "--n",
            "3000",
            "--open-repeats",
            "2",
            "--dir",
            str(tmp_path),
            "--out",
            str(out),
            "--timeout",
            "120",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (report,) = out.glob("live-readers-*.json")
    assert report.with_suffix(".md").exists()
    doc: dict[str, Any] = json.loads(report.read_text())
    res = doc["results"]
    assert doc["meta"]["usable_cores"] >= 1
    assert len(res["closed_open"]["seconds"]) == 2
    get_runs = [res["writer_get"], res["reader_get_closed"]]
    get_runs += [res[k] for k in ("reader_get_idle", "reader_get_busy") if k in res]
    get_runs += res.get("followers", [])
    assert all(run["misses"] == 0 for run in get_runs), get_runs
    rows = {row["what"]: row for row in doc["rows"]}
    if doc["unsupported"]:
        assert doc["unsupported"].startswith("live readers not supported by this build")
        assert "LockError" in doc["unsupported"]
        assert all(rows[r]["verdict"].startswith("not measured") for r in TARGET_ROWS)
        assert "not supported" in result.stdout
    else:
        assert all(rows[r]["verdict"].startswith(("met", "not met")) for r in TARGET_ROWS)
        assert len(res["followers"]) == 3
        assert res["writer_stats_followed"].get("readers", 3) == 3
