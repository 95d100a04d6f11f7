"""A scan's views, built in one place from its stores: generations.jsonl, summary.json, arrays.npz, plots, report.html.

The stores (``jaxscape.core.results``: ``scan.json``, ``points/``, ``judges/<name>/``) are written once
each, by what computed them: the scan its points and metadata, a judge its scores. The views are
derived from them and only :func:`write_views` writes them, each exactly once per call, whole and
atomically. Entry points and ``run_*`` orchestrators call it once their stores are complete
(``landscape.run_landscape`` at its end, ``experiments.judge`` after the judge); a scan resumed or
re-rendered later (``experiments.plot``) gets the same views from the same stores, with every
finished judge merged in.

    summary = jaxscape.studies.views.write_views("results/toy_1d")

Timings: summary.json's ``timings`` are scan.json's, measured before the views are written:
``total_s`` is the whole process up to the moment its points were complete and its results about
to be written (start-up, loading, directions, compiling, scanning and writing the points);
writing scan.json and the views is in none of them. A judge's own timings are in its entry.

A dir written before scan.json existed is read through ``results.scan_from_views`` (its old
summary.json and generations.jsonl), so it still resumes and re-renders.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np

from jaxscape.studies import coherence
from jaxscape.studies import coherence_results
from jaxscape.reports import htmlreport
from jaxscape.studies import judge as judge_lib
from jaxscape.studies import judge_store
from jaxscape.core import metrics
from jaxscape.reports import plot
from jaxscape.core import results
from jaxscape.errors import InputError

ARRAYS_FILE = "arrays.npz"
# Every file write_views writes, in the order it writes them.
VIEW_FILES = (results.GENERATIONS_FILE, ARRAYS_FILE, results.SUMMARY_FILE, "landscape.png", htmlreport.REPORT)


def write_views(out_dir: str) -> dict:
  """Write every view of a finished scan's results dir from its stores; returns the summary dict.

  Writes generations.jsonl, arrays.npz, summary.json, the plot (``plot.plot_results``) and
  report.html (``htmlreport.write_report``), each once. Judges whose stored scores match the
  generations are merged into generations.jsonl and ``summary["judges"]``.

  Raises:
    InputError: no finished scan in ``out_dir`` (no scan.json or summary.json, or points missing).
  """
  meta = results.load_scan(out_dir)
  points = results.load_points(out_dir)
  n = len(meta["grid"]["coords"])
  missing = [i for i in range(n) if i not in points]
  if missing:
    raise InputError(f"{out_dir} holds {n - len(missing)} of the scan's {n} points; finish it "
                     f"(run_grid --resume) before writing its views")
  lines = generation_lines(meta, points)
  summary = summarize(meta, points)
  if lines and all("output" in line for line in lines):
    merge_judges(out_dir, lines, summary)
    merge_coherence(out_dir, lines, summary)
  add_spread(summary)
  results.atomic_write_text(os.path.join(out_dir, results.GENERATIONS_FILE),
                            "".join(json.dumps(x) + "\n" for x in lines))
  results.atomic_write_bytes(os.path.join(out_dir, ARRAYS_FILE), _arrays(meta, summary))
  results.atomic_write_json(os.path.join(out_dir, results.SUMMARY_FILE), summary)
  plot.plot_results(out_dir)
  htmlreport.write_report(out_dir)
  return summary


def summarize(meta: dict, points: dict[int, dict]) -> dict:
  """summary.json of a scan, without judges: its metadata with the per-point metrics, VISAGE and basin.

  Args:
    meta: the scan's metadata (``results.load_scan``).
    points: ``{point id: record}`` of every grid point (``results.load_points``).
  """
  grid = meta["grid"]
  ids = range(len(grid["coords"]))
  n = int(meta.get("num_directions", 1))
  K = len(grid["coords"]) // n
  axes = grid["axes"]
  out: dict[str, Any] = {k: meta[k] for k in results.SCAN_SPEC_KEYS if k in meta}
  out["coords"] = grid["coords"][:K]
  out["axes"] = {"x": list(axes[0]), "y": list(axes[1]) if len(axes) > 1 else None}
  out["nonfinite"] = [bool(points[i].get("nonfinite", False)) for i in ids]
  out["nonfinite_points"] = [i for i in ids if out["nonfinite"][i]]
  if meta.get("metric", "safety") in ("safety", "both"):
    asr = np.array([points[i]["asr"] for i in ids])
    out.update(metrics.visage_fields(asr, num_directions=n, grid_shape=_grid_shape(out)))
  if meta.get("metric") in ("capability", "both"):
    cap = np.array([points[i]["capability"] for i in ids])
    out["capability"] = cap.reshape(n, K).tolist() if n > 1 else cap.tolist()
  skip = set(results.SCAN_SPEC_KEYS) | set(results.SCAN_ONLY_KEYS)
  out.update((k, v) for k, v in meta.items() if k not in skip)
  return out


def generation_lines(meta: dict, points: dict[int, dict]) -> list[dict]:
  """generations.jsonl's lines, one per point in point order, without judges.

  Each line: ``step`` (within its direction), ``coords``, ``direction`` (several directions
  only), ``asr`` / ``capability`` where measured, ``nonfinite``, and ``output``: the point's
  ``{"prompt", "generation"}`` pairs in prompt order (``"truncated": true`` where decoding
  stopped once a refusal keyword appeared).
  """
  grid = meta["grid"]
  n = int(meta.get("num_directions", 1))
  K = len(grid["coords"]) // n
  lines = []
  for pid in range(len(grid["coords"])):
    rec = points[pid]
    line = {"step": pid % K, "coords": grid["coords"][pid]}
    if n > 1:
      line["direction"] = grid["direction"][pid]
    for key in ("asr", "capability"):
      if key in rec:
        line[key] = rec[key]
    line["nonfinite"] = rec.get("nonfinite", False)
    if "generations" in rec:
      line["output"] = [{"prompt": p, "generation": g} for p, g in zip(meta["prompts"], rec["generations"])]
      for item, cut in zip(line["output"], rec.get("truncated", [])):
        if cut:
          item["truncated"] = True
    lines.append(line)
  return lines


def merge_judges(out_dir: str, lines: list[dict], summary: dict) -> list[str]:
  """Add every finished judge stored in ``out_dir`` to generations ``lines`` and ``summary`` (in place).

  Each generation gets ``judges[name] = {"p_unsafe", "unsafe"}`` (``"truncated": true`` where the
  judge saw a cut pair) and ``summary["judges"][name]`` the judge's entry (``judge_store.summary_entry``).
  A judge whose stored generations no longer match ``lines`` is left out. Returns the names merged.
  """
  outputs = [line["output"] for line in lines]
  shape = _grid_shape(summary)
  names = []
  for meta, scores in judge_store.finished_stores(out_dir, outputs):
    ident = meta["identity"]
    for pid, out in enumerate(outputs):
      rec = scores[pid]
      unsafe = judge_lib.labels_of(rec["p_unsafe"], ident["threshold"])
      for item, p, u, cut in zip(out, rec["p_unsafe"], unsafe, rec["truncated"]):
        mark = {"p_unsafe": p, "unsafe": bool(u)}
        if cut:
          mark["truncated"] = True  # the judge saw a cut request or response (see jaxscape.studies.judge)
        item.setdefault("judges", {})[ident["name"]] = mark
    summary.setdefault("judges", {})[ident["name"]] = judge_store.summary_entry(
        meta, scores, outputs, num_directions=int(summary.get("num_directions", 1)), grid_shape=shape)
    names.append(ident["name"])
  return names


def merge_coherence(out_dir: str, lines: list[dict], summary: dict) -> bool:
  """Add a finished coherence store's scores to generations ``lines`` and ``summary`` (in place).

  Each generation gets ``nll_per_token`` and ``label`` (``refusal`` / ``coherent`` /
  ``incoherent``, ``jaxscape.studies.coherence``), the summary ``asr_coherent``, ``incoherent``,
  ``visage_coherent`` and ``coherence`` (``coherence_results.summary_fields``). Returns whether a store
  was merged (none, or one whose generations no longer match, is left out).
  """
  texts = [[o["generation"] for o in line["output"]] for line in lines]
  found = coherence_results.finished_scores(out_dir, texts)
  if found is None:
    return False
  meta, nll = found
  threshold = meta["identity"]["threshold"]
  for line, values in zip(lines, nll):
    marks = coherence.labels([o["generation"] for o in line["output"]], values, threshold)
    for item, v, m in zip(line["output"], values, marks):
      item["nll_per_token"] = v
      item["label"] = m
  summary.update(coherence_results.summary_fields(meta, nll, texts, num_directions=int(summary.get("num_directions", 1)),
                                          grid_shape=_grid_shape(summary)))
  return True


def add_spread(summary: dict) -> dict:
  """With several directions, ``summary["spread"][curve] = {"mean": [K], "sd": [K]}`` (in place)
  for every per-point curve it holds: ``asr``, ``asr_coherent``, ``incoherent``, ``capability`` and
  ``judge:NAME`` (``metrics.curve_spread``: mean over directions, sample sd). Returns ``summary``."""
  if int(summary.get("num_directions", 1)) <= 1:
    return summary
  curves = {k: summary[k] for k in ("asr", "asr_coherent", "incoherent", "capability") if summary.get(k) is not None}
  curves.update((f"judge:{n}", j["asr"]) for n, j in (summary.get("judges") or {}).items() if j.get("asr"))
  summary["spread"] = {k: metrics.curve_spread(v) for k, v in curves.items()}
  return summary


def _grid_shape(summary: dict) -> tuple[int, int] | None:
  """(n1, n2) of a 2-D scan from its summary's axes; None for 1-D."""
  axes = summary.get("axes") or {}
  return (len(axes["x"]), len(axes["y"])) if axes.get("y") else None


def _arrays(meta: dict, summary: dict) -> bytes:
  """arrays.npz's bytes: coeffs [K, n] float32, nonfinite [K], axis0/axis1, asr, capability, asr_coherent and
  incoherent as summarized."""
  grid = meta["grid"]
  arrays = {"coeffs": np.asarray(grid["coeffs"], np.float32), "nonfinite": np.asarray(summary["nonfinite"])}
  for i, a in enumerate(grid["axes"]):
    arrays[f"axis{i}"] = np.asarray(a, np.float64)
  for key in ("asr", "capability", "asr_coherent", "incoherent"):
    if key in summary:
      arrays[key] = np.asarray(summary[key], np.float64)
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return buf.getvalue()
