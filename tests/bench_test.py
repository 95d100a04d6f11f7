"""The side-by-side benchmark CLI: a clear error without the reference, and a smoke-size run."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")
ANCHOR = os.path.join(SHARED, "bench", "anchor_loop.py")
CSV = os.path.join(SHARED, "data", "advbench", "harmful_behaviors.csv")


def _bench(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "experiments.bench", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


def test_bench_without_anchor_is_one_line_error():
  proc = _bench("--prompts=x.csv")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == ["error: --anchor=PATH/anchor_loop.py is required (the reference loop "
                                              "to compare with)"]


@pytest.mark.skipif(not (os.path.isfile(ANCHOR) and os.path.isfile(CSV)), reason="../shared not present")
def test_bench_smoke_runs_both_sides(tmp_path):
  out = tmp_path / "bench.json"
  proc = _bench(f"--anchor={ANCHOR}", f"--prompts={CSV}", "--workloads=smoke", "--multiplier=8",
                f"--workdir={tmp_path / 'work'}", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert result["machine"]["matmul_flops"] > 0 and result["machine"]["bandwidth_bytes_s"] > 0
  assert result["machine"]["matmul_flops_bf16"] > 0
  (row,) = result["rows"]
  assert (row["points"], row["prompts"], row["max_new_tokens"]) == (3, 4, 8)
  assert row["ref_scan_s"] > 0 and row["ours_scan_s"] > 0 and row["ref_total_s"] > row["ref_scan_s"]
  assert row["scan_speedup"] == pytest.approx(row["ref_scan_s"] / row["ours_scan_s"])
  assert row["compute_dtype"] == "float32" and row["ours_peak_fraction_own_dtype"] == row["ours_peak_fraction"]
  assert row["asr_equal_to_full_decode"] is True  # --stop_when_decided changes no point's ASR
  assert row["full_decode"]["scan_s"] > 0
  assert "| smoke | 3 x 4 x 8 |" in proc.stdout
