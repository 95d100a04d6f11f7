"""The GPU check's steps: a deadline-bound runner (:class:`Check`) and its five stages, each run in child processes.

``experiments.gpu_check`` (the command) describes the stages; :func:`run_stages` runs them in order into
``Check.report`` (DIR/gpu_check.json), and ``experiments.gpu_check_table`` turns that report into tables.
Every JAX or torch computation runs in a child process (``experiments.benchkit.run_child``): a JAX
process keeps most of the GPU's memory until it exits, so this one never starts a backend.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from typing import NamedTuple

from experiments import benchkit, common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_MODEL = os.path.join(ROOT, common.DEFAULT_MODEL)
STAGES = ("1_environment", "2_plan", "3_jaxscape", "4_reference_fast", "5_reference_shipped")
# Every step in the order it runs; CORE ones are what the comparison rests on.
ORDER = ("probe", "toy_scan", "plan", "model", "factored_cold", "factored_warm", "materialize_cold",
         "materialize_warm", "fast", "shipped_b4", "shipped_best")
CORE = ("probe", "model", "factored_cold", "factored_warm", "fast", "shipped_b4")
# Steps every later one needs: they may run into the time reserved for the others (there is nothing
# to run without them).
PREREQUISITES = ("model",)
SHIPPED_STEPS = 2  # stage 5: the shipped loop on 3 points
SHIPPED_BATCH = 4  # the shipped loop's own default batch
MULTIPLIER = 1.0


class Sizes(NamedTuple):
  model: str  # a benchkit.RANDOM_MODELS name
  steps: int  # grid steps: steps + 1 points
  samples: int  # prompts, also the reference's large batch
  max_new_tokens: int
  toy: tuple  # the toy smoke scan's steps, samples, max_new_tokens
  matmul_n: int
  copy_bytes: int
  need_s: dict  # per ORDER step: the seconds it needs at least, to start at all


FULL = Sizes("llama7b_w8", 20, 80, 64, (2, 8, 16), 8192, 4 << 30,
             {"probe": 20, "toy_scan": 20, "plan": 10, "model": 40, "factored_cold": 60, "factored_warm": 30,
              "materialize_cold": 60, "materialize_warm": 30, "fast": 45, "shipped_b4": 60, "shipped_best": 30})
SMOKE = Sizes("smoke_bf16", 2, 6, 4, (2, 4, 4), 256, 16 << 20, dict.fromkeys(ORDER, 1))

# Runs experiments.run_grid in this process, then records the devices' peak bytes in use: only the
# process that ran the scan can read them (summary.json does not record them).
_PEAK_WRAPPER = """
import json, runpy, sys
stats_path = sys.argv.pop(1)
try:
  runpy.run_module("experiments.run_grid", run_name="__main__", alter_sys=True)
finally:
  peak = None
  try:
    import jax
    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    peak = max((s.get("peak_bytes_in_use", 0) for s in stats), default=0) or None
  except Exception:
    pass
  with open(stats_path, "w") as f:
    json.dump({"peak_bytes_in_use": peak}, f)
"""


def _reserve_after(sizes: Sizes, step: str) -> float:
  """Seconds the CORE steps after ``step`` need: an optional step must leave them that much."""
  later = ORDER[ORDER.index(step) + 1:]
  return float(sum(sizes.need_s[s] for s in CORE if s in later))


def _stage_status(steps: dict) -> str:
  """ok when every step that could run did (skipped ones are named), else why not."""
  st = {name: r["status"] for name, r in steps.items()}
  if any(s.startswith("failed") for s in st.values()):
    return "failed"
  skipped = [name for name, s in st.items() if s.startswith("skipped")]
  if st and len(skipped) == len(st):
    return "skipped: deadline" if any("deadline" in st[n] for n in skipped) else st[skipped[0]]
  return "ok" + (f" (skipped: {', '.join(skipped)})" if skipped else "")


def write_atomic(path: str, text: str) -> None:
  """Write ``path`` through a temporary file renamed into place: a reader never sees half of it."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_")
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


class Check:
  """The report under construction: the clock, each stage's steps, and DIR/gpu_check.json."""

  def __init__(self, out_dir: str, work: str, sizes: Sizes, deadline_s: float, smoke: bool, anchor: str,
               prompts: str, ref_device: str):
    self.t0 = time.monotonic()
    self.out_dir, self.work, self.sizes, self.deadline_s = out_dir, work, sizes, deadline_s
    self.anchor, self.prompts, self.ref_device = anchor, prompts, ref_device
    self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    self.report = {"command": sys.argv, "smoke": smoke, "deadline_s": deadline_s, "sizes": sizes._asdict(),
                   "anchor": anchor, "prompts": prompts, "ref_device": ref_device, "workdir": work,
                   "stages": {s: {"status": "pending", "steps": {}} for s in STAGES}}

  def left(self) -> float:
    return self.deadline_s - (time.monotonic() - self.t0)

  def child(self, cmd: list[str], timeout: float) -> tuple[float, int, str]:
    """``benchkit.run_child`` from the repo root, with this checkout first on the children's path."""
    return benchkit.run_child(cmd, timeout=timeout, cwd=ROOT, env=self.env)

  def step(self, stage: str, name: str, kind: str, fn) -> dict:
    """Run ``fn(timeout)`` as step ``name`` (a ``kind`` of ORDER) if the deadline leaves it time; record it.

    ``fn`` returns the step's fields (a "status" of its own overrides "ok"). A failing step is
    recorded with its error and the check goes on: one broken step must not cost the others
    their device time.
    """
    need, reserve = self.sizes.need_s[kind], _reserve_after(self.sizes, kind)
    left = self.left()
    if left - (0.0 if kind in CORE else reserve) < need:
      rec = {"status": "skipped: deadline", "note": f"{max(left, 0):.0f} s left, {need} s needed"
             + ("" if kind in CORE else f" beside {reserve:.0f} s kept for the later core steps")}
    else:
      timeout = left if kind in PREREQUISITES else min(left, max(need, left - reserve))
      t0 = time.monotonic()
      try:
        rec = {"status": "ok", **fn(timeout)}
      except benchkit.ChildTimeout:
        rec = {"status": "skipped: deadline", "note": f"stopped after {timeout:.0f} s, its share of the deadline"}
      except Exception as e:  # noqa: BLE001 - recorded in the report; the next steps still run
        rec = {"status": "failed", "error": _tail(e)}
      rec["elapsed_s"] = time.monotonic() - t0
    return self.record(stage, name, rec)

  def record(self, stage: str, name: str, rec: dict) -> dict:
    st = self.report["stages"][stage]
    st["steps"][name] = rec
    st["status"] = _stage_status(st["steps"])
    self.save()
    return rec

  def save(self) -> None:
    self.report["elapsed_s"] = time.monotonic() - self.t0
    write_atomic(os.path.join(self.out_dir, "gpu_check.json"), json.dumps(self.report, indent=1) + "\n")


def _tail(e: Exception, lines: int = 12) -> list[str]:
  text = str(e) if isinstance(e, benchkit.ChildFailed) else "".join(traceback.format_exception(e))
  return text.strip().splitlines()[-lines:]


# ------------------------------------------------------------------ stage 1: environment


def probe(check: Check, timeout: float) -> dict:
  """Versions, devices and the device's ceilings, measured in a child (see the module docstring)."""
  out = os.path.join(check.work, "probe.json")
  code = ("import json, sys\nfrom experiments import benchkit\n"
          "r = benchkit.device_report(int(sys.argv[2]), int(sys.argv[3]))\n"
          "json.dump(r, open(sys.argv[1], 'w'))")
  check.child([sys.executable, "-c", code, out, str(check.sizes.matmul_n), str(check.sizes.copy_bytes)], timeout)
  return benchkit.read_json(out)


def toy_scan(check: Check, timeout: float) -> dict:
  """A few points of checkpoints/toy-chat through experiments.run_grid: jaxscape runs on this device."""
  steps, samples, tokens = check.sizes.toy
  out_dir = os.path.join(check.work, "toy_scan")
  shutil.rmtree(out_dir, ignore_errors=True)
  cmd = benchkit.run_grid_cmd(TOY_MODEL, check.prompts, steps=steps, samples=samples, max_new_tokens=tokens,
                              multiplier=MULTIPLIER, out_dir=out_dir,
                              cache_dir=benchkit.fresh_cache_dir(check.work, "toy"))
  wall, _, _ = check.child(cmd, timeout)
  summ = benchkit.read_json(os.path.join(out_dir, "summary.json"))
  t = summ["timings"]
  return {"total_s": wall, "compile_s": t["compile_s"], "scan_s": t["scan_s"], "points": t["points"],
          "prompts": summ["n_prompts"], "max_new_tokens": tokens, "asr": summ["asr"], "plan": summ["plan"]}


def stage_environment(check: Check) -> None:
  check.step("1_environment", "probe", "probe", lambda t: probe(check, t))
  check.step("1_environment", "toy_scan", "toy_scan", lambda t: toy_scan(check, t))


# ------------------------------------------------------------------ stage 2: the planner


def plan_one(check: Check, config: str, timeout: float) -> dict:
  """The planner's verdict on one model config for stage 3's workload at full size (--smoke too: it only
  does arithmetic), as exit code and last lines."""
  s = FULL
  cmd = [sys.executable, "-m", "experiments.plan", f"--model={config}", "--kind=1d_random", f"--steps={s.steps}",
         f"--samples={s.samples}", f"--max_new_tokens={s.max_new_tokens}", "--prompt_tokens=50",
         "--compute_dtype=bfloat16", "--target=gpu"]
  _, _, rc, tail = benchkit.run_child_rc(cmd, timeout=timeout, cwd=ROOT, env=check.env)
  # Exit 2 is the planner's answer "does not fit" (one error: line), not a failure of the check.
  verdict = {0: "ok (fits)", 2: "ok (does not fit)"}.get(rc, f"failed (exit {rc})")
  return {"status": verdict, "exit_code": rc, "last_lines": tail.strip().splitlines()[-8:]}


def stage_plan(check: Check) -> None:
  """The planner's answer per committed model config; "not built" while the planner or configs are missing."""
  configs = sorted(glob.glob(os.path.join(ROOT, "experiments", "configs", "models", "*.json")))
  if not os.path.isfile(os.path.join(ROOT, "experiments", "plan.py")):
    why = "experiments/plan.py does not exist yet"
  elif not configs:
    why = "no experiments/configs/models/*.json yet"
  else:
    for config in configs:
      check.step("2_plan", os.path.basename(config), "plan", lambda t, c=config: plan_one(check, c, t))
    return
  check.report["stages"]["2_plan"].update(status="not built", note=why)
  check.save()


# ------------------------------------------------------------------ stage 3: jaxscape


def build_model(check: Check, timeout: float) -> dict:
  """The random checkpoint (reused when --workdir already has it), built in a child, and its shape."""
  out = os.path.join(check.work, "model.json")
  code = ("import json, sys\nfrom experiments import benchkit\n"
          "path = benchkit.build_random_model(sys.argv[2], sys.argv[3])\n"
          "json.dump(benchkit.describe_model(path), open(sys.argv[1], 'w'))")
  check.child([sys.executable, "-c", code, out, check.sizes.model, check.work], timeout)
  return benchkit.read_json(out)


def run_jaxscape(check: Check, model_dir: str, strategy: str, cache_dir: str, tag: str, timeout: float) -> dict:
  """One bfloat16 scan of the stage's grid: times, tokens, the measured peak device bytes beside the plan's."""
  s = check.sizes
  out_dir = os.path.join(check.work, f"jaxscape_{tag}")
  stats = out_dir + "_device.json"
  shutil.rmtree(out_dir, ignore_errors=True)
  cmd = benchkit.run_grid_cmd(model_dir, check.prompts, steps=s.steps, samples=s.samples,
                              max_new_tokens=s.max_new_tokens, multiplier=MULTIPLIER, out_dir=out_dir,
                              cache_dir=cache_dir, flags=["--compute_dtype=bfloat16", f"--strategy={strategy}"])
  assert cmd[1:3] == ["-m", "experiments.run_grid"], cmd  # the wrapper runs that module itself
  wall, rss, _ = check.child([sys.executable, "-c", _PEAK_WRAPPER, stats] + cmd[3:], timeout)
  summ = benchkit.read_json(os.path.join(out_dir, "summary.json"))
  t, memory_plan = summ["timings"], summ["host"]["memory_plan"]
  peak = benchkit.read_json(stats)["peak_bytes_in_use"] if os.path.isfile(stats) else None
  rows = t["points_computed"] * summ["n_prompts"]
  return {
      "strategy": strategy, "plan": summ["plan"], "compute_dtype": summ.get("compute_dtype"),
      "devices": summ["host"]["devices"], "total_s": wall, "load_s": t["load_s"], "compile_s": t["compile_s"],
      "scan_s": t["scan_s"], "points": t["points"], "rows": rows, "tokens": t["tokens_generated"],
      "tokens_per_s": t["tokens_generated"] / t["scan_s"], "useful_flops": t["useful_flops"],
      "useful_kv_bytes": t["useful_kv_bytes"], "peak_bytes": peak,
      "peak_note": None if peak else "the device reports no memory stats (CPUs do not): see the plan's estimate",
      "plan_bytes_per_device": memory_plan["bytes_per_device"],
      "compiled_bytes_per_device": memory_plan.get("compiled_bytes_per_device"),
      # Present once theta and the directions can stay resident in bfloat16 (issue 27's residency).
      "residency": summ["fingerprints"].get("residency", "not built"),
      "peak_rss_bytes": rss, "compilation_cache_dir": cache_dir, "out": out_dir}


def stage_jaxscape(check: Check) -> str | None:
  """The model, then each strategy cold (empty cache) and warm (the cache the cold run filled).
  Returns the model dir, or None when it could not be built."""
  stage = "3_jaxscape"
  model = check.step(stage, "model", "model", lambda t: build_model(check, t))
  if model["status"] != "ok":
    for name in ("factored_cold", "factored_warm", "materialize_cold", "materialize_warm"):
      check.record(stage, name, {"status": "skipped: no model"})
    return None
  for strategy in ("factored", "materialize"):
    cache = benchkit.fresh_cache_dir(check.work, f"xla_{strategy}")
    cold = check.step(stage, f"{strategy}_cold", f"{strategy}_cold",
                      lambda t, s=strategy, c=cache: run_jaxscape(check, model["path"], s, c, f"{s}_cold", t))
    if cold["status"] != "ok":  # a warm run without its cold one would be a second cold run
      check.record(stage, f"{strategy}_warm", {"status": "skipped: no cold run"})
      continue
    check.step(stage, f"{strategy}_warm", f"{strategy}_warm",
               lambda t, s=strategy, c=cache: run_jaxscape(check, model["path"], s, c, f"{s}_warm", t))
  return model["path"]


# ------------------------------------------------------------------ stages 4 and 5: the reference loop


def scale_points(points: list[dict], update_s: float, tokens: int, target: int) -> dict:
  """A short run of the reference scaled to ``target`` points.

  Per point: the mean of its per-point ``seconds`` (generate) from the second point on (the first
  carries the warm-up), plus its share of ``update_s`` (one state-dict load per point: the
  centring before the first, a step after each but the last).
  """
  secs = [p["seconds"] for p in sorted(points, key=lambda p: p["eval_order"])]
  per_point = statistics.mean(secs[1:] if len(secs) > 1 else secs)
  n = len(secs)
  generate, update = per_point * target, update_s / n * target
  return {"measured_points": n, "scaled_to_points": target, "scaled_generate_s": generate,
          "scaled_update_s": update, "scaled_scan_s": generate + update, "scaled_tokens": tokens / n * target}


def run_reference(check: Check, model_dir: str, batch: int, fast: bool, tag: str, timeout: float) -> dict:
  """One anchor_loop.py run: --fast in bfloat16 on the whole grid, or as shipped on SHIPPED_STEPS + 1
  points scaled to the grid's."""
  s = check.sizes
  out = os.path.join(check.work, f"anchor_{tag}.json")
  cmd = benchkit.reference_cmd(check.anchor, model_dir, check.prompts, steps=s.steps if fast else SHIPPED_STEPS,
                               samples=s.samples, max_new_tokens=s.max_new_tokens, multiplier=MULTIPLIER,
                               batch_size=batch, device=check.ref_device, out=out,
                               extra=["--fast", "--dtype", "bfloat16"] if fast else [])
  wall, rss, _ = check.child(cmd, timeout)
  r = benchkit.read_json(out)
  t = r["timings"]
  rec = {"batch_size": batch, "fast": fast, "dtype": r["config"]["dtype"], "device": check.ref_device,
         "total_s": wall, "load_s": t["load_s"], "generate_s": t["generate_s"], "update_s": t["update_s"],
         "scan_s": t["generate_s"] + t["update_s"], "points": t["points"], "tokens": t["tokens_generated"],
         "token_slots": t["token_slots"], "peak_rss_bytes": rss, "json": out,
         "point_seconds": [p["seconds"] for p in sorted(r["points"], key=lambda p: p["eval_order"])]}
  if not fast:
    rec.update(scale_points(r["points"], t["update_s"], t["tokens_generated"], s.steps + 1))
  scan, tokens = rec.get("scaled_scan_s", rec["scan_s"]), rec.get("scaled_tokens", rec["tokens"])
  rec["tokens_per_s"] = tokens / scan
  return rec


def stage_reference(check: Check, model_dir: str | None) -> None:
  s = check.sizes
  runs = [("4_reference_fast", f"fast_bf16_b{s.samples}", "fast", s.samples, True),
          ("5_reference_shipped", f"shipped_f32_b{SHIPPED_BATCH}", "shipped_b4", SHIPPED_BATCH, False)]
  if s.samples != SHIPPED_BATCH:
    runs.append(("5_reference_shipped", f"shipped_f32_b{s.samples}", "shipped_best", s.samples, False))
  for stage, name, kind, batch, fast in runs:
    if model_dir is None:
      check.record(stage, name, {"status": "skipped: no model"})
      continue
    check.step(stage, name, kind, lambda t, b=batch, f=fast, n=name: run_reference(check, model_dir, b, f, n, t))


def run_stages(check: Check) -> None:
  """Stages 1 to 5 in order, each step recorded in ``check.report`` as it ends."""
  stage_environment(check)
  stage_plan(check)
  model_dir = stage_jaxscape(check)
  stage_reference(check, model_dir)
