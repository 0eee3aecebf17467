"""The benchmark still runs: `python -m bench --quick` as a subprocess (no timing asserted)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from bench.figures import ORDER

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_runs_and_writes_every_figure(tmp_path):
    out = tmp_path / "results.json"
    run = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["mode"] == "quick"
    assert result["targets_judged"] is False
    assert result["machine"]["cores"] >= 1
    assert set(result["figures"]) == set(ORDER)
    for key, figure in result["figures"].items():
        assert isinstance(figure["value"], (int, float)) and math.isfinite(figure["value"]), key
        assert figure["target"] and isinstance(figure["met"], bool), key
    assert "submit throughput" in run.stdout  # the table was printed
