"""A Markdown page over finished 1-D results dirs: plots, ASR (and coherent ASR, capability) per
point, VISAGE, wall times, the command of each run and sample generations at both ends, the origin
and the walls; several directions as mean ± sample sd.

  python -m experiments.report --results=aligned=results/a,base=results/b --out=docs/NAME --title=...

:func:`landscape_page` reads only what a scan wrote (``summary.json``, ``generations.jsonl``,
``landscape.png``), so it can be re-run on old results; the plots are copied next to the page.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Sequence

import numpy as np

from jaxscape.core import metrics
from jaxscape.core import results as results_lib
from jaxscape.errors import InputError

SUMMARY = "summary.json"
GENERATIONS = "generations.jsonl"
PLOT = "landscape.png"


def _read_run(results_dir: str) -> tuple[dict, list[dict]]:
  path = os.path.join(results_dir, SUMMARY)
  if not os.path.isfile(path):
    raise InputError(f"{results_dir}: no {SUMMARY} (is the scan finished?)")
  summary = results_lib.read_json(path)
  if (summary.get("axes") or {}).get("y") is not None or not summary.get("coords"):
    raise InputError(f"{results_dir}: the page shows 1-D landscapes only (kind {summary.get('kind')!r})")
  gens = []
  gpath = os.path.join(results_dir, GENERATIONS)
  if os.path.isfile(gpath):
    with open(gpath, encoding="utf-8") as f:
      gens = [json.loads(line) for line in f if line.strip()]
  return summary, gens


def command_of(summary: dict) -> str:
  """The ``run_grid`` command line that reproduces a summary (its non-default run flags)."""
  keep = ("model", "model_b", "kind", "num_directions", "steps", "multiplier", "extra_steps", "seed", "prompts",
          "samples", "prompt_format", "system_prompt", "max_new_tokens", "stop_when_decided", "metric",
          "capability_set", "capability_shots", "coherence", "coherence_calibration", "out")
  flags = summary.get("flags") or {}
  random_axes = "random" in str(flags.get("kind", summary.get("kind", "")))
  parts = ["python -m experiments.run_grid"]
  for k in keep:
    if k in ("multiplier", "seed") and not random_axes:  # interpolation grids use neither
      continue
    v = flags.get(k)
    if v is None or v is False or (k in ("extra_steps", "capability_shots") and not v) or (
        k == "num_directions" and v == 1) or (k.startswith("capability_") and flags.get("metric") == "safety") or (
        k == "coherence_calibration" and not flags.get("coherence")):
      continue
    parts.append(f"--{k}" if v is True else f"--{k}={v}")
  return " ".join(parts)


def _clip(text: str, n: int) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= n else text[: n - 1] + "…"


def _sample_lines(line: dict, k: int, n: int) -> list[str]:
  """``k`` generations of one generations.jsonl line, clipped to ``n`` characters, with their coherence label
  (labelled lines: the first of each label first, then prompt order)."""
  outputs = line["output"]
  if outputs and all("label" in o for o in outputs):  # one of each label first: what the point does, at a glance
    firsts = [next(i for i, o in enumerate(outputs) if o["label"] == m) for m in ("refusal", "coherent", "incoherent")
              if any(o["label"] == m for o in outputs)]
    outputs = [outputs[i] for i in firsts] + [o for i, o in enumerate(outputs) if i not in firsts]
  out = []
  for o in outputs[:k]:
    mark = f" ({o['label']}, nll {o['nll_per_token']:.2f})" if "label" in o else ""
    out.append(f"- *{_clip(o['prompt'], 90)}* → `{_clip(o['generation'], n).replace('`', chr(39))}`{mark}")
  return out


CURVES = (("asr", "keyword ASR %"), ("asr_coherent", "coherent ASR %"), ("incoherent", "incoherent %"),
          ("capability", "capability %"))


def _curves(summary: dict) -> dict[str, np.ndarray]:
  """Every per-point curve the summary holds, as float [N directions, K]."""
  n = int(summary.get("num_directions") or 1)
  return {k: np.asarray(summary[k], np.float64).reshape(n, -1) for k, _ in CURVES if summary.get(k) is not None}


def _fmt_spread(a: np.ndarray, k: int) -> str:
  """Point ``k`` of curves ``a`` [N, K]: the value, or with several directions mean ± sample sd."""
  if a.shape[0] == 1:
    return f"{a[0, k]:.1f}"
  spread = metrics.curve_spread(a[:, k:k + 1])
  return f"{spread['mean'][0]:.1f} ± {spread['sd'][0]:.1f}"


def _visage(summary: dict, key: str = "visage") -> str:
  if summary.get(key) is None:
    return "–"
  std = summary.get(f"{key}_std")
  return f"{summary[key]:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def _walls(asr: np.ndarray, origin: int, lo: float = 20.0, hi: float = 60.0) -> list[tuple[int, int]]:
  """(direction, step) of the points nearest the origin on each side whose keyword ASR is in [lo, hi]."""
  found = []
  for d, curve in enumerate(asr):
    for side in (range(origin, -1, -1), range(origin, len(curve))):
      hit = next((k for k in side if lo <= curve[k] <= hi), None)
      if hit is not None:
        found.append((d, hit))
  return found


def _run_section(name: str, rdir: str, summary: dict, gens: list[dict], out_dir: str, samples: int,
                 sample_chars: int) -> tuple[str, list[str]]:
  """(the overview table's row, the run's section) of one results dir."""
  coords = [c[0] for c in summary["coords"]]
  curves = _curves(summary)
  asr = curves["asr"]
  n_dirs, K = asr.shape
  origin = min(range(K), key=lambda i: abs(coords[i]))
  t = summary.get("timings", {})
  flags = summary.get("flags") or {}
  model = flags.get("model", "?") + (f" → {flags['model_b']}" if flags.get("model_b") else "")
  span = summary.get("multiplier") if "random" in summary["kind"] else "–"
  mean = asr.mean(0)
  row = (f"| {name} | `{model}` | {summary['kind']}{f' × {n_dirs}' if n_dirs > 1 else ''} | {span} | "
         f"{_visage(summary)} | {_visage(summary, 'visage_coherent')} | {mean[origin]:.1f} | "
         f"{mean[0]:.1f} / {mean[-1]:.1f} | {t.get('total_s', float('nan')):.0f} s |")
  sec = [f"## {name}", "", "```bash", command_of(summary), "```", "",
         f"VISAGE {_visage(summary)} (keyword), {_visage(summary, 'visage_coherent')} (coherent ASR); "
         f"{K} points{f' × {n_dirs} directions' if n_dirs > 1 else ''} × {summary.get('n_prompts')} prompts × "
         f"{summary.get('max_new_tokens')} new tokens; total {t.get('total_s') or 0:.0f} s (load "
         f"{t.get('load_s') or 0:.0f}, directions {t.get('directions_s') or 0:.0f}, compile "
         f"{t.get('compile_s') or 0:.0f}, scan {t.get('scan_s') or 0:.0f})."
         + (" Several directions: mean ± sample sd over directions." if n_dirs > 1 else ""), ""]
  if summary.get("coherence"):
    c = summary["coherence"]
    cal = c.get("calibration") or {}
    score_s = (c.get("timings") or {}).get("score_s")
    sec += [f"Coherence threshold {c['threshold']:.3f} NLL per token under θ₀ ({cal.get('percentile')}th "
            f"percentile of {cal.get('samples')} temperature-1 samples and {cal.get('references')} reference answers "
            f"of `{cal.get('source')}`); labels over the run: {c.get('label_counts')}"
            + (f"; scored in {score_s:.0f} s." if score_s else "."), ""]
  plot = os.path.join(rdir, PLOT)
  if os.path.isfile(plot):
    shutil.copyfile(plot, os.path.join(out_dir, f"{name}.png"))
    sec += [f"![{name}]({name}.png)", ""]
  sec += ["| coordinate | " + " | ".join(f"{c:g}" for c in coords) + " |", "| --- |" + " --- |" * K]
  sec += [f"| {label} | " + " | ".join(_fmt_spread(curves[key], k) for k in range(K)) + " |"
          for key, label in CURVES if key in curves]
  sec.append("")
  by_point = {(int(g.get("direction", 0)), int(g.get("step", i % K))): g for i, g in enumerate(gens)}
  where = [("left end", (0, 0))] + ([("origin", (0, origin))] if 0 < origin < K - 1 else [])
  where += [(f"wall, direction {d}", (d, k)) for d, k in _walls(asr, origin)] + [("right end", (0, K - 1))]
  for label, (d, k) in where:
    line = by_point.get((d, k))
    if line and line.get("output"):
      sec += [f"Generations at the {label} (coordinate {coords[k]:g}, keyword ASR {asr[d, k]:.1f}%):", ""]
      sec += _sample_lines(line, samples, sample_chars) + [""]
  return row, sec


def landscape_page(runs: Sequence[tuple[str, str]], out_dir: str, *, title: str, intro: str = "",
                   samples: int = 2, sample_chars: int = 110) -> str:
  """Write ``out_dir/README.md`` (and one ``NAME.png`` per run) for ``runs`` = [(name, results_dir)].

  Returns the page's path. Each run's section holds its command, wall time, VISAGE (keyword and,
  with coherence scores, coherent), a table per point of keyword ASR, coherent ASR, the incoherent
  share and capability where measured (several directions: mean ± sample sd), its plot, and
  ``samples`` generations at the left end, the origin (coordinate 0, when it is not an end), the
  walls (the points nearest the origin with keyword ASR 20-60%, per direction) and the right end,
  clipped to ``sample_chars`` and with their coherence label: enough to show what a point does
  (refuses, complies, gibberish), never a harmful answer's details.
  """
  os.makedirs(out_dir, exist_ok=True)
  lines = [f"# {title}", ""]
  if intro:
    lines += [intro.strip(), ""]
  table = ["| run | model | kind | multiplier | VISAGE | VISAGE, coherent | ASR at 0 | ASR at the ends | wall time |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  sections = []
  for name, rdir in runs:
    summary, gens = _read_run(rdir)
    row, sec = _run_section(name, rdir, summary, gens, out_dir, samples, sample_chars)
    table.append(row)
    sections.append(sec)
  lines += table + [""]
  for sec in sections:
    lines += sec
  path = os.path.join(out_dir, "README.md")
  results_lib.atomic_write_text(path, "\n".join(lines))
  return path
