"""A Markdown page over finished 1-D results dirs: plots, ASR per point, VISAGE, wall times, the
command of each run and sample generations at both ends and at the origin.

  python -m experiments.report --results=aligned=results/a,base=results/b --out=docs/NAME --title=...

:func:`landscape_page` reads only what a scan wrote (``summary.json``, ``generations.jsonl``,
``landscape.png``), so it can be re-run on old results; the plots are copied next to the page.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Sequence

from jaxscape import results as results_lib
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
  keep = ("model", "model_b", "kind", "steps", "multiplier", "extra_steps", "seed", "prompts", "samples",
          "prompt_format", "system_prompt", "max_new_tokens", "stop_when_decided", "metric", "out")
  flags = summary.get("flags") or {}
  random_axes = "random" in str(flags.get("kind", summary.get("kind", "")))
  parts = ["python -m experiments.run_grid"]
  for k in keep:
    if k in ("multiplier", "seed") and not random_axes:  # interpolation grids use neither
      continue
    v = flags.get(k)
    if v is None or v is False or (k == "extra_steps" and not v):
      continue
    parts.append(f"--{k}" if v is True else f"--{k}={v}")
  return " ".join(parts)


def _clip(text: str, n: int) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= n else text[: n - 1] + "…"


def _samples(gens: list[dict], coord: float, k: int, n: int) -> list[str]:
  point = min(gens, key=lambda g: abs(g["coords"][0] - coord)) if gens else None
  if point is None:
    return []
  return [f"- *{_clip(o['prompt'], 90)}* → `{_clip(o['generation'], n).replace('`', chr(39))}`"
          for o in point["output"][:k]]


def landscape_page(runs: Sequence[tuple[str, str]], out_dir: str, *, title: str, intro: str = "",
                   samples: int = 2, sample_chars: int = 110) -> str:
  """Write ``out_dir/README.md`` (and one ``NAME.png`` per run) for ``runs`` = [(name, results_dir)].

  Returns the page's path. Each run's section holds its command, wall time, VISAGE, origin and end
  ASR, a table of ASR per point, its plot, and ``samples`` generations at the left end, the origin
  (coordinate 0, when it is not an end) and the right end, clipped to ``sample_chars``: enough to
  show what a point does (refuses, complies, gibberish), never a harmful answer's details.
  """
  os.makedirs(out_dir, exist_ok=True)
  lines = [f"# {title}", ""]
  if intro:
    lines += [intro.strip(), ""]
  table = ["| run | model | kind | multiplier | VISAGE | ASR at 0 | ASR at the ends | wall time |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  sections = []
  for name, rdir in runs:
    summary, gens = _read_run(rdir)
    coords = [c[0] for c in summary["coords"]]
    asr = summary["asr"]
    origin = min(range(len(coords)), key=lambda i: abs(coords[i]))
    t = summary.get("timings", {})
    flags = summary.get("flags") or {}
    model = flags.get("model", "?") + (f" → {flags['model_b']}" if flags.get("model_b") else "")
    span = summary.get("multiplier") if "random" in summary["kind"] else "–"
    table.append(f"| {name} | `{model}` | {summary['kind']} | {span} | "
                 f"{summary['visage']:.2f} | {asr[origin]:.1f} | {asr[0]:.1f} / {asr[-1]:.1f} | "
                 f"{t.get('total_s', float('nan')):.0f} s |")
    sec = [f"## {name}", "", "```bash", command_of(summary), "```", "",
           f"VISAGE {summary['visage']:.2f}; {len(coords)} points × {summary.get('n_prompts')} prompts × "
           f"{summary.get('max_new_tokens')} new tokens; total {t.get('total_s', 0):.0f} s (load "
           f"{t.get('load_s', 0):.0f}, directions {t.get('directions_s', 0):.0f}, compile {t.get('compile_s', 0):.0f}, "
           f"scan {t.get('scan_s', 0):.0f}).", ""]
    plot = os.path.join(rdir, PLOT)
    if os.path.isfile(plot):
      shutil.copyfile(plot, os.path.join(out_dir, f"{name}.png"))
      sec += [f"![{name}]({name}.png)", ""]
    sec += ["| coordinate | " + " | ".join(f"{c:g}" for c in coords) + " |",
            "| --- |" + " --- |" * len(coords),
            "| ASR % | " + " | ".join(f"{a:.1f}" for a in asr) + " |", ""]
    where = [("left end", coords[0])] + ([("origin", coords[origin])] if 0 < origin < len(coords) - 1 else [])
    for label, c in where + [("right end", coords[-1])]:
      got = _samples(gens, c, samples, sample_chars)
      if got:
        sec += [f"Generations at the {label} (coordinate {c:g}):", ""] + got + [""]
    sections.append(sec)
  lines += table + [""]
  for sec in sections:
    lines += sec
  path = os.path.join(out_dir, "README.md")
  results_lib.atomic_write_text(path, "\n".join(lines))
  return path
