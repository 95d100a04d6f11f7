"""The side-by-side benchmark: its arithmetic, a clear error without the reference or with a zero span, and a
smoke-size run (both reference batches, the override of the workloads' spans, the warm-cache rerun)."""

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


def _check_in_subprocess(code: str) -> None:
  """Run assertions on ``experiments.bench`` in a child: importing it here would define its absl flags
  (--out, ...) in this process, where other tests import other entry points that define them too."""
  proc = subprocess.run([sys.executable, "-c", "import pytest\nfrom experiments import bench\n" + code], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_slot_utilisation_excludes_prefill():
  _check_in_subprocess("""
# 2 points x 3 prompts, one generate call per point of output [3, 5]: 4 decode steps over 3 rows each.
rows, slots = 6, 2 * 3 * 5
assert bench.reference_row_steps(slots, rows) == 2 * 3 * 4
# Every row ran all 5 tokens: each decode row-step made a token.
assert bench.slot_utilisation(slots, rows, bench.reference_row_steps(slots, rows)) == 1.0
# Half the rows stopped after their prefill token (EOS first), the others ran to 5.
tokens = 3 * 1 + 3 * 5
assert bench.slot_utilisation(tokens, rows, 24) == pytest.approx((tokens - rows) / 24) == 0.5
assert bench.slot_utilisation(rows, rows, 24) == 0.0  # prefill only
assert bench.slot_utilisation(10, rows, None) is None  # jaxscape without decode_row_steps
assert bench.slot_utilisation(rows, rows, 0) is None  # max_new_tokens=1: no decode step
""")


def test_workload_multipliers_and_their_override():
  _check_in_subprocess("""
assert bench.FLAGS["multiplier"].default is None
assert bench.FLAGS["workloads"].default == ["toy", "llama100m", "toy512"]
assert bench.FLAGS["device"].default == "cpu"
assert [bench.workload_multiplier(w) for w in ("toy", "llama100m", "toy512")] == [1.0, 1.0, 8.0]
assert "--stop_when_decided" in bench.WORKLOADS["toy512"].flags
assert all(bench.workload_multiplier(w, 2.5) == 2.5 for w in bench.WORKLOADS)  # --multiplier overrides all
assert bench.workload_multiplier("smoke") != 8  # so the smoke run's --multiplier=8 shows the override
""")


def test_bench_without_anchor_is_one_line_error():
  proc = _bench("--prompts=x.csv")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == ["error: --anchor=PATH/anchor_loop.py is required (the reference loop "
                                              "to compare with)"]


@pytest.mark.skipif(not (os.path.isfile(ANCHOR) and os.path.isfile(CSV)), reason="../shared not present")
def test_bench_zero_multiplier_is_one_line_error():
  proc = _bench(f"--anchor={ANCHOR}", f"--prompts={CSV}", "--workloads=smoke", "--multiplier=0")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == ["error: --multiplier must be non-zero (leave it out for each "
                                              "workload's own)"]


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
  assert (row["points"], row["prompts"], row["max_new_tokens"], row["multiplier"]) == (3, 6, 8, 8)
  assert row["ref_scan_s"] > 0 and row["ours_scan_s"] > 0 and row["ref_total_s"] > row["ref_scan_s"]
  assert row["scan_speedup"] == pytest.approx(row["ref_scan_s"] / row["ours_scan_s"])
  assert row["total_speedup"] == pytest.approx(row["ref_total_s"] / row["ours_total_s"])
  assert row["compute_dtype"] == "float32" and row["ours_peak_fraction_own_dtype"] == row["ours_peak_fraction"]
  assert row["asr_equal_to_full_decode"] is True  # --stop_when_decided changes no point's ASR
  assert row["full_decode"]["scan_s"] > 0

  # The reference twice: at batch 4 and at its best batch (all 6 prompts), both at --multiplier on --device.
  assert (row["ref_batch_size"], row["ref_best_batch_size"]) == (4, 6)
  assert [r["batch_size"] for r in row["references"]] == [4, 6]
  for r in row["references"]:
    with open(r["json"], encoding="utf-8") as f:
      config = json.load(f)["config"]
    assert (config["batch_size"], config["multiplier"], config["device"]) == (r["batch_size"], 8.0, "cpu")
  assert row["ref_best_scan_s"] > 0 and row["ref_best_total_s"] > row["ref_best_scan_s"]
  assert row["scan_speedup_best"] == pytest.approx(row["ref_best_scan_s"] / row["ours_scan_s"])
  assert row["total_speedup_best"] == pytest.approx(row["ref_best_total_s"] / row["ours_total_s"])
  # Batch 4 over 6 prompts is two generate calls per point, batch 6 one: more padded slots at batch 4 is
  # not guaranteed (lengths differ per batch), but each side's slots are its rows times whole calls.
  rows = 3 * 6
  assert row["ours_rows"] == rows
  for p in ("ref", "ref_best"):
    assert row[f"{p}_decode_row_steps"] == row[f"{p}_token_slots"] - rows
    assert row[f"{p}_utilisation"] == pytest.approx((row[f"{p}_tokens"] - rows) / row[f"{p}_decode_row_steps"])
    assert 0 <= row[f"{p}_utilisation"] <= 1
  if row["ours_decode_row_steps"] is None:  # a jaxscape without the field: reported as "-"
    assert row["ours_utilisation"] is None
  else:
    assert 0 <= row["ours_utilisation"] <= 1

  # jaxscape's summary: the span and a fresh cache dir of its own; the first workload again on that warm cache.
  with open(os.path.join(tmp_path, "work", "smoke_jaxscape", "summary.json"), encoding="utf-8") as f:
    summ = json.load(f)
  assert summ["flags"]["multiplier"] == 8
  assert row["ours_compile_s"] >= 0
  warm = row["warm_rerun"]
  assert warm["compilation_cache_dir"] == row["ours_compilation_cache_dir"]
  assert os.path.dirname(warm["compilation_cache_dir"]) == str(tmp_path / "work")
  assert warm["compile_s"] >= 0 and warm["scan_s"] > 0 and warm["asr"] == row["asr_ours"]
  assert warm["scan_speedup_best"] == pytest.approx(row["ref_best_scan_s"] / warm["scan_s"])

  assert "| smoke | 3 x 6 x 8 | 8 |" in proc.stdout
  assert "| smoke warm rerun | (same) |" in proc.stdout
  assert "| smoke without --stop_when_decided | (same) |" in proc.stdout
  assert f"| smoke | {rows} | " in proc.stdout  # the utilisation table
