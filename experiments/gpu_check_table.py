"""The GPU check's tables: from a finished :class:`experiments.gpu_check_steps.Check`, the least time its workload
can take, jaxscape's speed-ups over the reference, and the Markdown written to DIR/gpu_check.md."""

from __future__ import annotations

from experiments import benchkit
from experiments.gpu_check_steps import MULTIPLIER, SHIPPED_BATCH, SHIPPED_STEPS, Check

GIB = float(1 << 30)


def _ok(rec: dict | None) -> dict | None:
  return rec if rec and rec.get("status") == "ok" else None


def bound(check: Check) -> dict | None:
  """The least time the stage-3 workload can take on this device (``benchkit.roofline``): its useful
  FLOPs at the measured bfloat16 peak, or at the measured copy bandwidth the bytes any scan must read,
  theta and the direction once per generated token for all points at once (bfloat16) plus the KV
  cache's reads. ``loop_bytes_bound_s``: a per-point loop's weight reads alone (every point's weights
  once per token), what bounds the reference."""
  st = check.report["stages"]
  probe_rec, model = _ok(st["1_environment"]["steps"].get("probe")), _ok(st["3_jaxscape"]["steps"].get("model"))
  run = next((r for r in map(_ok, st["3_jaxscape"]["steps"].values()) if r and "useful_flops" in r), None)
  if not (probe_rec and model and run):
    return None
  s = check.sizes
  weights = 2 * model["params_per_pass"] * 2.0 * s.max_new_tokens  # (theta + direction) x bf16 bytes x passes
  r = benchkit.roofline(run["useful_flops"], weights + run["useful_kv_bytes"], probe_rec["matmul_flops_bf16"],
                        probe_rec["copy_bytes_s"])
  loop = (s.steps + 1) * model["params_per_pass"] * 2.0 * s.max_new_tokens
  return {**r, "weight_bytes": weights, "kv_bytes": run["useful_kv_bytes"],
          "loop_bytes_bound_s": loop / probe_rec["copy_bytes_s"]}


def summarize(check: Check) -> dict:
  """Each side's row, the bound, and the speed-ups of jaxscape's warm scans over the reference's."""
  st, s = check.report["stages"], check.sizes
  probe_rec = _ok(st["1_environment"]["steps"].get("probe"))
  peak = probe_rec["matmul_flops_bf16"] if probe_rec else None
  js = st["3_jaxscape"]["steps"]
  flops = next((r["useful_flops"] for r in map(_ok, js.values()) if r and "useful_flops" in r), None)
  refs = {**st["4_reference_fast"]["steps"], **st["5_reference_shipped"]["steps"]}
  fast = _ok(refs.get(f"fast_bf16_b{s.samples}"))
  b4, best = _ok(refs.get(f"shipped_f32_b{SHIPPED_BATCH}")), _ok(refs.get(f"shipped_f32_b{s.samples}"))
  b = bound(check)

  def speedup(ref, key, scan):
    return ref[key] / scan if ref else None

  ratios = {}  # every jaxscape run: its scan excludes compiling, so a cold one stands in for a missing warm one
  for name in ("factored_warm", "materialize_warm", "factored_cold", "materialize_cold"):
    run = _ok(js.get(name))
    if run:
      ratios[name] = {"scan_s": run["scan_s"], "vs_fast_bf16_best": speedup(fast, "scan_s", run["scan_s"]),
                      "vs_shipped_b4_scaled": speedup(b4, "scaled_scan_s", run["scan_s"]),
                      "vs_shipped_best_scaled": speedup(best, "scaled_scan_s", run["scan_s"]),
                      "scan_over_bound": run["scan_s"] / b["bound_s"] if b else None}
  fractions = {}
  for name, rec in list(js.items()) + list(refs.items()):
    scan = rec.get("scaled_scan_s", rec.get("scan_s")) if _ok(rec) else None
    if name != "model":
      fractions[name] = flops / scan / peak if (scan and flops and peak) else None
  full = [r["tokens"] == r["rows"] * s.max_new_tokens for r in map(_ok, js.values()) if r and "rows" in r]
  return {"bound": b, "ratios": ratios, "peak_fraction": fractions,
          "decoded_to_limit": all(full) if full else None}


def _num(x, fmt: str = "{:.2f}") -> str:
  return "-" if x is None else fmt.format(x)


def _gib(x) -> str:
  return "-" if x is None else f"{x / GIB:.2f}" if x >= GIB / 100 else f"{x / GIB:.5f}"  # --smoke's are tiny


def _size(x: float) -> str:
  return f"{x / GIB:.2f} GiB" if x >= GIB / 4 else f"{x / (1 << 20):.1f} MiB"


def _header(check: Check) -> list[str]:
  """Device, versions, ceilings and the workload, one line each."""
  st, s = check.report["stages"], check.sizes
  p = st["1_environment"]["steps"].get("probe") or {}
  v = p.get("versions", {})
  m = (st["3_jaxscape"]["steps"].get("model") or {})
  lines = [f"# GPU check{' (--smoke)' if check.report['smoke'] else ''}", ""]
  if _ok(p):
    memory = "" if p["device_memory_bytes"] is None else f", {_size(p['device_memory_bytes'])}"
    lines += [f"device: {p['device_kind']} ({p['backend']}, {len(p['devices'])} device(s){memory}); jax {v['jax']}, "
              f"jaxlib {v['jaxlib']}, transformers {v['transformers']}, torch {v['torch']}, python {v['python']}",
              f"ceilings: bfloat16 {s.matmul_n}^3 matmul (float32 accumulation) "
              f"{p['matmul_flops_bf16'] / 1e12:.2f} TFLOP/s; {_size(s.copy_bytes)} elementwise pass "
              f"{p['copy_bytes_s'] / 1e9:.1f} GB/s (read + written)"]
  if _ok(m):
    lines.append(f"model: random {m['model_type']}, {m['num_layers']} layers, width {m['hidden_size']}, "
                 f"intermediate {m['intermediate_size']}, {m['num_heads']}/{m['num_kv_heads']} heads of "
                 f"{m['head_dim']}, vocab {m['vocab_size']}, {m['param_dtype']} ({m['params'] / 1e6:,.1f} M params)")
  lines.append(f"workload: 1-D random, {s.steps + 1} points x {s.samples} prompts x {s.max_new_tokens} new tokens, "
               f"multiplier {MULTIPLIER:g}, chat template; reference on {check.ref_device}")
  return lines + [""]


def _stage_lines(check: Check) -> list[str]:
  lines = ["| stage | status | seconds | notes |", "|---|---|---|---|"]
  for name, st in check.report["stages"].items():
    steps = st.get("steps", {})
    secs = sum(r.get("elapsed_s", 0.0) for r in steps.values())
    notes = [st["note"]] if st.get("note") else []
    notes += [f"{n}: {r['status']}" + (f" ({r['note']})" if r.get("note") else "")
              + (f" ({r['error'][-1]})" if r.get("error") else "") for n, r in steps.items() if r["status"] != "ok"]
    if name == "1_environment" and _ok(steps.get("toy_scan")):
      t = steps["toy_scan"]
      notes.append(f"toy scan {t['points']} x {t['prompts']} x {t['max_new_tokens']}: total {t['total_s']:.1f} s, "
                   f"compile {t['compile_s']:.1f} s, scan {t['scan_s']:.2f} s, ASR {t['asr']}")
    if name == "2_plan":
      notes += [f"{n}: exit {r['exit_code']}: {' / '.join(r['last_lines'][-2:])}" for n, r in steps.items()
                if "exit_code" in r]
    lines.append(f"| {name} | {st['status']} | {secs:.0f} | {'; '.join(notes)} |")
  return lines + [""]


def _side_rows(check: Check, table: dict) -> list[str]:
  """The speed table: one row per jaxscape run and reference run, and the bound."""
  st, s = check.report["stages"], check.sizes
  frac = table["peak_fraction"]
  lines = ["| side | total s | load s | compile s | scan / generate s | tokens/s | % of bf16 peak "
           "| peak device GiB (plan est.) | bf16 residency |", "|---|---|---|---|---|---|---|---|---|"]
  labels = {"factored_cold": "jaxscape factored, empty cache", "factored_warm": "jaxscape factored, warm cache",
            "materialize_cold": "jaxscape materialize, empty cache",
            "materialize_warm": "jaxscape materialize, warm cache"}
  for name, label in labels.items():
    r = st["3_jaxscape"]["steps"].get(name) or {"status": "pending"}
    if not _ok(r):
      lines.append(f"| {label} | {r['status']} | | | | | | | |")
      continue
    lines.append(f"| {label} | {r['total_s']:.1f} | {r['load_s']:.1f} | {r['compile_s']:.1f} | {r['scan_s']:.2f} "
                 f"| {r['tokens_per_s']:.0f} | {_num(frac.get(name), '{:.1%}')} | {_gib(r['peak_bytes'])} "
                 f"({_gib(r['plan_bytes_per_device'])}) | {r['residency']} |")
  refs = {**st["4_reference_fast"]["steps"], **st["5_reference_shipped"]["steps"]}
  for name, r in refs.items():
    if not _ok(r):
      lines.append(f"| reference {name} | {r['status']} | | | | | | | |")
      continue
    if r["fast"]:
      label, scan = f"reference --fast {r['dtype']}, batch {r['batch_size']}", f"{r['scan_s']:.2f}"
    else:
      label = (f"reference as shipped ({r['dtype']}), batch {r['batch_size']}: {r['measured_points']} points "
               f"scaled to {r['scaled_to_points']}")
      scan = f"{r['scaled_scan_s']:.2f} (measured {r['scan_s']:.2f})"
    lines.append(f"| {label} | {r['total_s']:.1f} | {r['load_s']:.1f} | - | {scan} | {r['tokens_per_s']:.0f} "
                 f"| {_num(frac.get(name), '{:.1%}')} | - | - |")
  b = table["bound"]
  if b:
    lines.append(f"| bound: FLOPs at the bf16 peak {b['flop_bound_s']:.2f} s, weights + KV "
                 f"({(b['weight_bytes'] + b['kv_bytes']) / 1e9:.1f} GB) at the copy bandwidth "
                 f"{b['bytes_bound_s']:.2f} s; {b['binds']} bind | | | | {b['bound_s']:.2f} | | | | |")
  eos = {True: f"both sides decode every prompt to the {s.max_new_tokens}-token limit (jaxscape's token counts "
               f"confirm it)", False: "yet some jaxscape rows stopped early (see gpu_check.json)",
         None: "both sides decode to the limit"}[table["decoded_to_limit"]]
  return lines + ["", f"Random weights never emit EOS: {eos}. Shipped-reference rows: whole-process time of "
                  f"the {SHIPPED_STEPS + 1}-point run, scan scaled." + (
                      f" A per-point loop's weight reads alone bound it at {b['loop_bytes_bound_s']:.2f} s."
                      if b else ""), ""]


def _ratio_rows(table: dict) -> list[str]:
  lines = ["| jaxscape scan (compiling excluded) | scan s | speed-up vs --fast bf16 at the large batch "
           "| vs shipped batch 4 (scaled) | vs shipped large batch (scaled) | scan / bound |",
           "|---|---|---|---|---|---|"]
  for name, r in table["ratios"].items():
    lines.append(f"| {name} | {r['scan_s']:.2f} | {_num(r['vs_fast_bf16_best'], '{:.1f}x')} "
                 f"| {_num(r['vs_shipped_b4_scaled'], '{:.1f}x')} | {_num(r['vs_shipped_best_scaled'], '{:.1f}x')} "
                 f"| {_num(r['scan_over_bound'], '{:.1f}x')} |")
  if not table["ratios"]:
    lines.append("| (no jaxscape scan finished) | | | | | |")
  return lines


def render(check: Check, table: dict) -> str:
  return "\n".join(_header(check) + _stage_lines(check) + _side_rows(check, table) + _ratio_rows(table)) + "\n"
