"""The GPU check's --smoke run end to end on the CPU (every stage has a status, the table is written, the
ratios are numbers where both sides ran), its deadline skipping, and its one-line errors for bad input."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Relative to the repo root, as the prepared device command passes them.
ANCHOR = os.path.join("..", "shared", "bench", "anchor_loop.py")
CSV = os.path.join("..", "shared", "data", "advbench", "harmful_behaviors.csv")
SHARED = os.path.isfile(os.path.join(ROOT, ANCHOR)) and os.path.isfile(os.path.join(ROOT, CSV))
STAGES = ["1_environment", "2_plan", "3_jaxscape", "4_reference_fast", "5_reference_shipped"]


def _gpu_check(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "experiments.gpu_check", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


def _is_status(status: str) -> bool:
  return status.startswith(("ok", "skipped")) or status == "not built"


@pytest.mark.skipif(not SHARED, reason="../shared not present")
def test_smoke_runs_every_stage(tmp_path):
  out, work = tmp_path / "gpu_check", tmp_path / "work"
  proc = _gpu_check("--smoke", f"--anchor={ANCHOR}", f"--prompts={CSV}", f"--out={out}", f"--workdir={work}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(os.listdir(out)) == ["gpu_check.json", "gpu_check.md"]  # all a device returns from $OUT
  report = json.loads((out / "gpu_check.json").read_text())
  assert list(report["stages"]) == STAGES
  for name, stage in report["stages"].items():
    assert _is_status(stage["status"]), (name, stage)
    for step, rec in stage.get("steps", {}).items():
      assert rec["status"].startswith("ok"), (name, step, rec)  # no deadline pressure in a smoke run: every step ran
  plan = report["stages"]["2_plan"]
  assert {rec["status"] for rec in plan["steps"].values()} <= {"ok (fits)", "ok (does not fit)"}, plan
  assert len(plan["steps"]) == 5  # the committed configs
  runs = report["stages"]["3_jaxscape"]["steps"]
  assert {runs[n]["residency"] for n in ("factored_cold", "materialize_cold")} == {"bfloat16"}

  env = report["stages"]["1_environment"]["steps"]
  assert env["probe"]["matmul_flops_bf16"] > 0 and env["probe"]["copy_bytes_s"] > 0
  assert set(env["probe"]["versions"]) == {"python", "jax", "jaxlib", "transformers", "torch"}
  assert env["toy_scan"]["scan_s"] > 0

  runs = report["stages"]["3_jaxscape"]["steps"]
  assert runs["model"]["param_dtype"] == "bfloat16" and runs["model"]["num_layers"] == 2
  for name in ("factored_cold", "factored_warm", "materialize_cold", "materialize_warm"):
    r = runs[name]
    assert r["strategy"] == name.split("_")[0] and r["plan"]["strategy"] == r["strategy"]
    assert r["compute_dtype"] == "bfloat16" and r["points"] == 3 and r["rows"] == 3 * 6
    assert r["scan_s"] > 0 and r["compile_s"] >= 0 and r["plan_bytes_per_device"] > 0
    assert r["peak_bytes"] is None or r["peak_bytes"] > 0  # a CPU reports no memory stats
    assert r["residency"]  # "not built" until summary.json records it
  # warm: the same cache dir as its cold run, in --workdir
  for strategy in ("factored", "materialize"):
    cache = runs[f"{strategy}_cold"]["compilation_cache_dir"]
    assert runs[f"{strategy}_warm"]["compilation_cache_dir"] == cache and os.path.dirname(cache) == str(work)
  assert runs["factored_cold"]["compilation_cache_dir"] != runs["materialize_cold"]["compilation_cache_dir"]

  fast = report["stages"]["4_reference_fast"]["steps"]["fast_bf16_b6"]
  assert fast["fast"] and fast["dtype"] == "bfloat16" and fast["batch_size"] == 6 and fast["points"] == 3
  shipped = report["stages"]["5_reference_shipped"]["steps"]
  assert [r["batch_size"] for r in shipped.values()] == [4, 6]
  for r in shipped.values():
    assert r["dtype"] == "float32" and r["measured_points"] == 3 and r["scaled_to_points"] == 3
    assert r["scaled_scan_s"] == pytest.approx(sum(r["point_seconds"][1:]) / 2 * 3 + r["update_s"])

  table = report["table"]
  assert table["decoded_to_limit"] is True  # random weights: every prompt decodes all 4 tokens
  assert table["bound"]["bound_s"] > 0 and table["bound"]["binds"] in ("FLOPs", "bytes")
  warm = table["ratios"]["factored_warm"]
  for key in ("vs_fast_bf16_best", "vs_shipped_b4_scaled", "vs_shipped_best_scaled", "scan_over_bound"):
    assert isinstance(warm[key], float) and warm[key] > 0, key
  assert warm["vs_fast_bf16_best"] == pytest.approx(fast["scan_s"] / runs["factored_warm"]["scan_s"])
  assert all(isinstance(f, float) for f in table["peak_fraction"].values())

  md = (out / "gpu_check.md").read_text()
  assert md == proc.stdout
  assert "| jaxscape factored, warm cache |" in md and "Random weights never emit EOS" in md
  assert "| 2_plan |" in md


@pytest.mark.skipif(not SHARED, reason="../shared not present")
def test_deadline_skips_steps_and_still_writes_the_table(tmp_path):
  out = tmp_path / "gpu_check"
  proc = _gpu_check("--smoke", f"--anchor={ANCHOR}", f"--prompts={CSV}", f"--out={out}", "--deadline_s=0.5")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((out / "gpu_check.json").read_text())
  stages = report["stages"]
  assert stages["1_environment"]["status"] == "skipped: deadline"
  assert stages["3_jaxscape"]["steps"]["model"]["status"] == "skipped: deadline"
  assert all(_is_status(s["status"]) for s in stages.values())
  assert report["table"]["ratios"] == {}
  assert (out / "gpu_check.md").is_file()
  assert not os.path.exists(report["workdir"])  # the default temp workdir is removed


@pytest.mark.parametrize("args, error", [
    (["--prompts=x.csv", "--out=o"], "error: --anchor=PATH/anchor_loop.py (the reference loop) is required"),
    (["--anchor=missing.py", "--prompts=x.csv", "--out=o"], "error: --anchor=missing.py does not exist"),
])
def test_bad_input_is_one_line_error(args, error):
  proc = _gpu_check(*args)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [error]


@pytest.mark.skipif(not SHARED, reason="../shared not present")
def test_unwritable_out_is_one_line_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  proc = _gpu_check(f"--anchor={ANCHOR}", f"--prompts={CSV}", f"--out={blocker / 'sub'}")
  assert proc.returncode == 2
  (line,) = proc.stderr.strip().splitlines()
  assert line.startswith(f"error: --out={blocker / 'sub'} is not a writable directory")
