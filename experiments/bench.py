"""Side-by-side benchmark: jaxscape vs the reference loop (anchor_loop.py), plus the machine's limits.

  python -m experiments.bench --anchor=../shared/bench/anchor_loop.py \
      --prompts=../shared/data/advbench/harmful_behaviors.csv [--workloads=toy,toy512,llama100m]

Each side runs as its own subprocess on the same checkpoint, prompts, grid and
max_new_tokens (reference: --use_chat_template --batch_size=4, no system prompt). Reported:
whole-process wall time, scan phase (reference: generate + update; jaxscape: scan_s),
ratios, points/s, generated tokens/s, useful FLOP/s as a fraction of a jitted 2048x2048
float32 matmul measured in this run, memory bandwidth, peak RSS, and the bound those two
limits put on the scan (useful FLOPs at the peak; KV-cache reads at the bandwidth), i.e. the
largest speed-up over the reference this machine allows.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from absl import flags

from experiments import common

flags.DEFINE_string("anchor", None, "path to the reference loop, anchor_loop.py (required)")
flags.DEFINE_string("prompts", None, "AdvBench-style CSV (required)")
flags.DEFINE_string("model", common.DEFAULT_MODEL, "checkpoint of the toy workloads")
flags.DEFINE_list("workloads", ["toy"], "any of: toy, toy512, toy512_16, llama100m, llama1b, smoke")
flags.DEFINE_float("multiplier", 1.0, "grid span, same for both sides")
flags.DEFINE_integer("threads", 0, "torch threads for the reference (0: torch default)")
flags.DEFINE_string("out", None, "write the results as JSON here")
flags.DEFINE_string("workdir", None, "where random-init benchmark checkpoints are built (default: temp)")
flags.DEFINE_list("plan_check_budgets", [],
                  "instead of the speed workloads: run jaxscape alone on the 100M model once per budget "
                  "(e.g. auto,1G) and report the plan (strategy, est. peak) against the measured peak RSS")
flags.DEFINE_list("jaxscape_flags", [], "extra flags for every jaxscape run, e.g. --compute_dtype=bfloat16")
FLAGS = flags.FLAGS

# name -> (checkpoint, steps, samples, max_new_tokens, extra jaxscape flags)
WORKLOADS = {
    "toy": ("toy", 20, 80, 64, []),
    "toy512": ("toy", 20, 80, 512, ["--stop_when_decided"]),
    "toy512_16": ("toy", 20, 16, 512, ["--stop_when_decided"]),  # the same with 16 prompts (a shorter run)
    "llama100m": ("llama100m", 4, 16, 32, []),
    "llama1b": ("llama1b", 20, 80, 64, []),
    "smoke": ("toy", 2, 4, 8, ["--stop_when_decided"]),  # seconds: for tests of this benchmark itself
}
RANDOM_MODELS = {  # random-init Llamas built offline with jaxscape.testing
    "llama100m": dict(num_layers=12, hidden_size=768, intermediate_size=2048, num_heads=12, num_kv_heads=12,
                      head_dim=64, vocab_size=8000),
    "llama1b": dict(num_layers=16, hidden_size=2048, intermediate_size=5632, num_heads=32, num_kv_heads=8,
                    head_dim=64, vocab_size=32000),
}


def _best_time(fn, arg, repeats: int = 10) -> float:
  fn(arg).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn(arg).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return best


def machine_limits() -> dict:
  """Peak matmul FLOP/s (jitted 2048x2048: float32, and bfloat16 operands with float32
  accumulation, as jaxscape's bfloat16 compute runs them) and bandwidth of a large jitted reduction."""
  import jax
  import jax.numpy as jnp
  n = 2048
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  best = _best_time(jax.jit(lambda x: x @ x), a)
  best_bf16 = _best_time(jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32)),
                         a.astype(jnp.bfloat16))
  big = jnp.ones((64 << 20,), jnp.float32)  # 256 MiB
  best_r = _best_time(jax.jit(jnp.sum), big)
  return {"matmul_flops": 2 * n ** 3 / best, "matmul_flops_bf16": 2 * n ** 3 / best_bf16,
          "bandwidth_bytes_s": big.nbytes / best_r,
          "device": str(jax.devices()[0].device_kind), "cpus": os.cpu_count(),
          "platform": platform.platform(), "processor": platform.processor()}


def run_child(cmd: list[str]) -> tuple[float, int, str]:
  """Run ``cmd``; returns (wall seconds, peak RSS bytes of that child alone, output tail)."""
  with tempfile.TemporaryFile("w+") as log:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.seek(0)
    tail = log.read()[-3000:]
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}): {tail}")
  return wall, usage.ru_maxrss * 1024, tail


def build_model(name: str, workdir: str) -> str:
  if name == "toy":
    return FLAGS.model
  path = os.path.join(workdir, name)
  if not os.path.isdir(path):
    from jaxscape import testing
    testing.make_tiny_checkpoint(path, "llama", seed=0, std=0.02, **RANDOM_MODELS[name])
  return path


def _peak(limits: dict, summary: dict) -> float:
  """The matmul peak of the run's compute dtype."""
  return limits["matmul_flops_bf16"] if summary.get("compute_dtype") == "bfloat16" else limits["matmul_flops"]


def bench_one(name: str, workdir: str, limits: dict) -> dict:
  ckpt, steps, samples, new_tokens, extra = WORKLOADS[name]
  model_dir = build_model(ckpt, workdir)
  ref_json = os.path.join(workdir, f"{name}_anchor.json")
  ref_cmd = [sys.executable, FLAGS.anchor, "--model_dir", model_dir, "--prompts", FLAGS.prompts, "--ndim", "1",
             "--steps", str(steps), "--samples", str(samples), "--max_new_tokens", str(new_tokens),
             "--multiplier", str(FLAGS.multiplier), "--use_chat_template", "--batch_size", "4",
             "--out", ref_json]
  if FLAGS.threads:
    ref_cmd += ["--threads", str(FLAGS.threads)]
  out_dir = os.path.join(workdir, f"{name}_jaxscape")
  for stale in (out_dir, out_dir + "_full_decode"):  # results of an earlier bench in the same --workdir
    shutil.rmtree(stale, ignore_errors=True)
  ours_cmd = [sys.executable, "-m", "experiments.run_grid", f"--model={model_dir}", f"--prompts={FLAGS.prompts}",
              "--kind=1d_random", f"--steps={steps}", f"--samples={samples}", f"--max_new_tokens={new_tokens}",
              f"--multiplier={FLAGS.multiplier}", "--prompt_format=chat", f"--out={out_dir}", "--noresume",
              *extra, *FLAGS.jaxscape_flags]
  print(f"[{name}] jaxscape ...", file=sys.stderr, flush=True)
  ours_wall, ours_rss, _ = run_child(ours_cmd)
  full_asr = full = None
  if "--stop_when_decided" in extra:  # work avoidance must not change a single point's ASR
    full_dir = out_dir + "_full_decode"
    print(f"[{name}] jaxscape without --stop_when_decided (ASR check) ...", file=sys.stderr, flush=True)
    full_wall, _, _ = run_child([c for c in ours_cmd if c != "--stop_when_decided" and not c.startswith("--out=")]
                                + [f"--out={full_dir}"])
    with open(os.path.join(full_dir, "summary.json"), encoding="utf-8") as f:
      full_summ = json.load(f)
    full_asr = full_summ["asr"]
    full = {"total_s": full_wall, "scan_s": full_summ["timings"]["scan_s"],
            "compile_s": full_summ["timings"]["compile_s"]}
  print(f"[{name}] reference ...", file=sys.stderr, flush=True)
  ref_wall, ref_rss, _ = run_child(ref_cmd)
  with open(ref_json, encoding="utf-8") as f:
    ref = json.load(f)["timings"]
  with open(os.path.join(out_dir, "summary.json"), encoding="utf-8") as f:
    summ = json.load(f)
  ours = summ["timings"]
  ref_scan = ref["generate_s"] + ref["update_s"]
  row = {
      "workload": name, "model": model_dir, "points": ours["points"], "prompts": summ["n_prompts"],
      "max_new_tokens": new_tokens, "jaxscape_flags": extra + FLAGS.jaxscape_flags,
      "ref_total_s": ref_wall, "ref_scan_s": ref_scan, "ref_tokens": ref["tokens_generated"],
      "ours_total_s": ours_wall, "ours_scan_s": ours["scan_s"], "ours_compile_s": ours["compile_s"],
      "ours_tokens": ours["tokens_generated"],
      "scan_speedup": ref_scan / ours["scan_s"], "total_speedup": ref_wall / ours_wall,
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
      "flop_bound_s": ours["useful_flops"] / _peak(limits, summ),
      "kv_bound_s": ours["useful_kv_bytes"] / limits["bandwidth_bytes_s"],
      "ref_peak_rss_bytes": ref_rss, "ours_peak_rss_bytes": ours_rss,
      "plan": summ.get("plan"), "asr_ours": summ.get("asr"),
      "asr_full_decode": full_asr, "asr_equal_to_full_decode": None if full_asr is None else full_asr == summ["asr"],
      # The same run without --stop_when_decided (the ASR check), timed as well.
      "full_decode": full and {**full, "scan_speedup": ref_scan / full["scan_s"],
                               "total_speedup": ref_wall / full["total_s"]},
  }
  row["bound_s"] = max(row["flop_bound_s"], row["kv_bound_s"])
  row["bound_speedup"] = ref_scan / row["bound_s"]
  return row


def runtime_baseline_rss(model_dir: str) -> int:
  """Peak RSS of a child that imports jax + jaxscape, starts the CPU backend and loads the model's
  tokenizer (bytes): the libraries' own memory (transformers' tokenizer stack alone is ~0.25 GiB),
  which the planner does not estimate."""
  code = ("import sys, jax, jaxscape.convert; jaxscape.convert.load_tokenizer(sys.argv[1]); "
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
  _, steps, samples, new_tokens, _ = WORKLOADS["llama100m"]
  baseline = runtime_baseline_rss(model_dir)
  rows = []
  for budget in FLAGS.plan_check_budgets:
    out_dir = os.path.join(workdir, f"plan_{budget}")
    shutil.rmtree(out_dir, ignore_errors=True)  # an earlier plan check in the same --workdir
    cmd = [sys.executable, "-m", "experiments.run_grid", f"--model={model_dir}", f"--prompts={FLAGS.prompts}",
           "--kind=1d_random", f"--steps={steps}", f"--samples={samples}", f"--max_new_tokens={new_tokens}",
           f"--multiplier={FLAGS.multiplier}", f"--out={out_dir}", "--noresume",
           *([] if budget == "auto" else [f"--memory_budget={budget}"]), *FLAGS.jaxscape_flags]
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


def main(argv):
  del argv
  if not FLAGS.anchor:
    raise common.UserError("--anchor=PATH/anchor_loop.py is required (the reference loop to compare with)")
  if not os.path.isfile(FLAGS.anchor):
    raise common.UserError(f"--anchor={FLAGS.anchor} does not exist")
  if not FLAGS.prompts or not os.path.isfile(FLAGS.prompts):
    raise common.UserError(f"--prompts={FLAGS.prompts} does not exist")
  unknown = [w for w in FLAGS.workloads if w not in WORKLOADS]
  if unknown:
    raise common.UserError(f"unknown workload(s) {', '.join(unknown)}; expected {', '.join(WORKLOADS)}")
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
  rows = [bench_one(w, workdir, limits) for w in FLAGS.workloads]
  print("| workload | points x prompts x tokens | ref total s | ref scan s | jaxscape total s | jaxscape compile s "
        "| jaxscape scan s | scan speed-up | whole speed-up | tokens/s | useful FLOP/s (% of float32 matmul peak) "
        "| compute dtype (% of its matmul peak) |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['workload']} | {r['points']} x {r['prompts']} x {r['max_new_tokens']} | {r['ref_total_s']:.1f} "
          f"| {r['ref_scan_s']:.1f} | {r['ours_total_s']:.1f} | {r['ours_compile_s']:.1f} | {r['ours_scan_s']:.2f} "
          f"| {r['scan_speedup']:.1f}x | {r['total_speedup']:.1f}x | {r['ours_tokens_per_s']:.0f} "
          f"| {r['ours_useful_flops_s'] / 1e9:.1f} G ({100 * r['ours_peak_fraction']:.1f}%) "
          f"| {r['compute_dtype']} ({100 * r['ours_peak_fraction_own_dtype']:.1f}%) |")
    if r["full_decode"]:
      fd = r["full_decode"]
      print(f"| {r['workload']} without --stop_when_decided | (same) | | | {fd['total_s']:.1f} | {fd['compile_s']:.1f} "
            f"| {fd['scan_s']:.2f} | {fd['scan_speedup']:.1f}x | {fd['total_speedup']:.1f}x | | | |")
  print("\n| workload | FLOP bound s (useful FLOPs at the compute dtype's matmul peak) "
        "| KV bound s (cache reads at the bandwidth) | jaxscape scan s | scan / bound "
        "| largest scan speed-up the machine allows |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['workload']} | {r['flop_bound_s']:.2f} | {r['kv_bound_s']:.2f} | {r['ours_scan_s']:.2f} "
          f"| {r['ours_scan_s'] / r['bound_s']:.1f}x | {r['bound_speedup']:.0f}x |")
  if FLAGS.out:
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      json.dump({"machine": limits, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  common.run(main)
