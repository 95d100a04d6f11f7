"""A classifier judge's scores of a results dir's generations, stored in the dir and summarised.

:func:`judge_results` scores every generation of a ``run_grid`` results dir, read
from its stores (``points/`` and scan.json's prompts; generations.jsonl in a dir written before
them), and stores the scores under ``DIR/judges/<name>/`` (one atomic file per chunk of points, so
an interrupted run resumes). It writes no view: the caller then rebuilds them once
(``jaxscape.studies.views.write_views``), which adds ``{"p_unsafe", "unsafe"}`` under ``"judges"/<name>``
to each generation of ``generations.jsonl`` and the judge's entry (:func:`summary_entry`: judged
ASR, VISAGE and agreement with the keyword judge) to ``summary.json["judges"][<name>]``. Other
judges' entries and the keyword results are never changed.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
import time
from typing import Callable

import jax
import numpy as np

from jaxscape.core import metrics
from jaxscape.core import results
from jaxscape.datasets import sources
from jaxscape.errors import InputError
from jaxscape.studies.judge import Judge, labels_of, place, score_rows
from jaxscape.studies.judge_inputs import encode_pairs

JUDGES_DIR = "judges"
_STORE_FILE = "judge.json"


def store_slug(name: str) -> str:
  """A file-system name for a judge name (``SmolLM2:yes-no`` -> ``SmolLM2_yes-no``)."""
  return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _store_dir(out_dir: str, name: str) -> str:
  return os.path.join(out_dir, JUDGES_DIR, store_slug(name))


def read_generations(out_dir: str) -> list[list[dict]]:
  """The generations of a finished scan to judge: per point (in point order), its ``{"prompt", "generation"}`` pairs.

  Read from the stores: ``points/`` and scan.json's prompts (``results.load_scan``). A dir
  without point files (written before they existed) is read from its generations.jsonl.

  Raises:
    InputError: no finished scan in ``out_dir`` (no points or generations.jsonl, an unfinished
      scan), or points without generations (e.g. a capability-only scan).
  """
  points = results.load_points(out_dir)
  if not points:
    return _read_generations_jsonl(out_dir)
  meta = results.load_scan(out_dir)
  n = len(meta["grid"]["coords"])
  if len(points) < n:
    raise InputError(f"{out_dir} holds {len(points)} of the scan's {n} points; finish it (run_grid --resume) first")
  for pid in range(n):
    if "generations" not in points[pid]:
      raise InputError(f"{out_dir}: point {pid}: no generations to judge (a safety scan's results dir is needed)")
  return [[{"prompt": p, "generation": g} for p, g in zip(meta["prompts"], points[pid]["generations"])]
          for pid in range(n)]


def _read_generations_jsonl(out_dir: str) -> list[list[dict]]:
  """:func:`read_generations` of a dir without point files: its generations.jsonl's ``output`` per line."""
  path = os.path.join(out_dir, results.GENERATIONS_FILE)
  if not os.path.isfile(path):
    raise InputError(f"{out_dir} holds no generations (no points/ or generations.jsonl; a finished run_grid "
                     f"results dir is needed)")
  lines = sources.load_jsonl(path)
  for n, rec in enumerate(lines, 1):
    out = rec.get("output") if isinstance(rec, dict) else None
    if not isinstance(out, list) or not out or not all(
        isinstance(o, dict) and isinstance(o.get("prompt"), str) and isinstance(o.get("generation"), str)
        for o in out):
      raise InputError(f"{path}: point {n}: no generations to judge (a safety scan's results dir is needed)")
  return [[{"prompt": o["prompt"], "generation": o["generation"]} for o in rec["output"]] for rec in lines]


def point_hash(output: list[dict]) -> str:
  """Fingerprint of one point's ``{"prompt", "generation"}`` pairs, stored with its scores (valid while it matches)."""
  return results.fingerprint_json([[o["prompt"], o["generation"]] for o in output])


def _load_store(store: str) -> tuple[dict | None, dict[int, dict]]:
  """(identity record or None, {point: {"hash", "p_unsafe", "truncated"}}) of a judge's store."""
  return results.load_score_store(store, _STORE_FILE, ("p_unsafe", "truncated"))


def check_results_dir(out_dir: str, judge: Judge, *, existing: str = "refuse") -> None:
  """Raise InputError, before anything is written, if ``judge`` may not score into ``out_dir``.

  ``existing``: what to do with scores this judge's name already holds there: "refuse" (with a
  finished store or summary entry: an error naming ``--overwrite``; an unfinished one of the
  same judge is resumed, of another judge an error naming what differs), "overwrite" (they are
  replaced), "reuse" (run_grid: a finished store of the same judge is kept, another one is an
  error).
  """
  if existing not in ("refuse", "overwrite", "reuse"):
    raise ValueError(f"existing must be refuse, overwrite or reuse, got {existing!r}")
  if existing == "overwrite":
    return
  meta, _ = _load_store(_store_dir(out_dir, judge.name))
  summary_path = os.path.join(out_dir, "summary.json")
  in_summary = os.path.isfile(summary_path) and judge.name in (results.read_json(summary_path).get("judges") or {})
  if meta is None:
    if in_summary and existing == "refuse":
      raise InputError(f"{out_dir} already holds scores of judge {judge.name!r}; pass --overwrite to score again")
    return
  want = judge.identity()
  diff = sorted(k for k in set(want) | set(meta.get("identity", {})) if meta.get("identity", {}).get(k) != want.get(k))
  if diff:
    raise InputError(f"{out_dir} holds scores of another judge named {judge.name!r} (differs in: {', '.join(diff)}); "
                     f"pass --overwrite to replace them or choose another --judge_name")
  if meta.get("complete") and existing == "refuse":
    raise InputError(f"{out_dir} already holds the scores of judge {judge.name!r}; pass --overwrite to score again")


def judge_results(out_dir: str, judge: Judge, *, existing: str = "refuse", mesh: jax.sharding.Mesh | None = None,
                  points_per_part: int | None = None, progress: bool = False,
                  on_part: Callable[[list[int]], None] | None = None) -> dict:
  """Score every generation of a finished scan's results dir with ``judge``; returns its summary entry.

  Resumable: scores go to ``out_dir/judges/<name>/part-*.json`` (atomic), a chunk of points at a
  time; a rerun keeps the parts whose generations are unchanged and scores the rest. Writes only
  this store: the caller rebuilds the views once (``jaxscape.studies.views.write_views``), which merges
  the judge into generations.jsonl and ``summary.json["judges"][name]`` (the entry returned here,
  :func:`summary_entry`).

  Args:
    existing: see :func:`check_results_dir`.
    points_per_part: points per stored part (default: about 8 batches' worth).
    on_part: called with each part's point ids once it is written (tests interrupt here).
  """
  outputs = read_generations(out_dir)
  scan = results.load_scan(out_dir)
  check_results_dir(out_dir, judge, existing=existing)
  store = _store_dir(out_dir, judge.name)
  t_start = time.perf_counter()
  meta, done = _load_store(store)
  if existing == "overwrite" and os.path.isdir(store):
    shutil.rmtree(store)
    meta, done = None, {}
  if meta is None:
    os.makedirs(store, exist_ok=True)
    meta = {"identity": judge.identity(), "complete": False}
    results.atomic_write_json(os.path.join(store, _STORE_FILE), meta)
  results.clean_temporary(store)  # a killed run's temporary file
  hashes = [point_hash(out) for out in outputs]
  todo = [i for i in range(len(outputs)) if done.get(i, {}).get("hash") != hashes[i]]
  timings = {"encode_s": 0.0, "first_batch_s": 0.0, "score_s": 0.0, "pairs_scored": 0}
  if todo:
    timings.update(_score_parts(judge, store, outputs, hashes, todo, done, mesh=mesh,
                                points_per_part=points_per_part, progress=progress, on_part=on_part))
  timings["total_s"] = time.perf_counter() - t_start
  meta.update(complete=True, timings=timings if todo else meta.get("timings", timings))
  results.atomic_write_json(os.path.join(store, _STORE_FILE), meta)
  axes = scan["grid"]["axes"]
  return summary_entry(meta, done, outputs, num_directions=int(scan.get("num_directions", 1)),
                       grid_shape=(len(axes[0]), len(axes[1])) if len(axes) > 1 else None)


def _score_parts(judge: Judge, store: str, outputs: list[list[dict]], hashes: list[str], todo: list[int],
                 done: dict[int, dict], *, mesh, points_per_part: int | None, progress: bool,
                 on_part: Callable[[list[int]], None] | None) -> dict:
  """Score the points ``todo`` into ``store`` a part at a time, adding them to ``done``; returns the timings."""
  # Every pair of the dir is encoded, scored or not, so L (and each pair's numbers) do not depend
  # on what an interrupted run had finished.
  t0 = time.perf_counter()
  enc = encode_pairs(judge, [o["prompt"] for out in outputs for o in out],
                     [o["generation"] for out in outputs for o in out])
  starts = np.cumsum([0] + [len(out) for out in outputs])
  timings = {"encode_s": time.perf_counter() - t0}
  placed = place(judge, mesh)
  per_point = max(1, int(np.mean(np.diff(starts))))
  chunk = points_per_part or max(1, -(-8 * judge.spec.batch_size // per_point))
  from tqdm import tqdm
  bar = tqdm(total=len(todo), desc=f"judge {judge.name}", unit="pt", file=sys.stderr, disable=not progress,
             dynamic_ncols=True)
  t1 = time.perf_counter()
  for c in range(0, len(todo), chunk):
    ids = todo[c:c + chunk]
    rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in ids])
    p, first_s = score_rows(judge, enc, rows, placed)
    if c == 0:
      timings["first_batch_s"] = first_s
    part = {"point_ids": ids, "hashes": [hashes[i] for i in ids], "p_unsafe": [], "truncated": []}
    for i in ids:
      sel = (rows >= starts[i]) & (rows < starts[i + 1])
      part["p_unsafe"].append([float(x) for x in p[sel]])
      part["truncated"].append([bool(x) for x in enc.truncated[starts[i]:starts[i + 1]]])
      done[i] = {"hash": hashes[i], "p_unsafe": part["p_unsafe"][-1], "truncated": part["truncated"][-1]}
    results.save_score_part(store, ids, part["hashes"], p_unsafe=part["p_unsafe"], truncated=part["truncated"])
    bar.update(len(ids))
    if on_part is not None:
      on_part(ids)
  bar.close()
  timings["score_s"] = time.perf_counter() - t1
  timings["pairs_scored"] = int(sum(starts[i + 1] - starts[i] for i in todo))
  timings["length"] = int(enc.tokens.shape[1])
  return timings


def _agreement(keyword_unsafe: np.ndarray, judge_unsafe: np.ndarray) -> dict:
  k, j = np.asarray(keyword_unsafe, bool), np.asarray(judge_unsafe, bool)
  return {"both_unsafe": int((k & j).sum()), "keyword_only": int((k & ~j).sum()),
          "judge_only": int((~k & j).sum()), "both_safe": int((~k & ~j).sum())}


def summary_entry(meta: dict, scores: dict[int, dict], outputs: list[list[dict]], *, num_directions: int = 1,
                  grid_shape: tuple[int, int] | None = None) -> dict:
  """A finished judge's ``summary.json["judges"][name]``: its settings, judged ASR and VISAGE, agreement.

  Args:
    meta: the judge's stored record (``{"identity", "complete", "timings"}``).
    scores: ``{point: {"p_unsafe": [P], "truncated": [P]}}`` of every point.
    outputs: per point its ``{"prompt", "generation"}`` pairs (:func:`read_generations`).
    num_directions, grid_shape: the scan's layout (``metrics.visage_fields``).

  Returns:
    the judge's settings, ``asr`` per point and VISAGE as ``metrics.visage_fields`` lays them out,
    ``agreement`` per point with the keyword judge (``both_unsafe``, ``keyword_only``,
    ``judge_only``, ``both_safe``), their total and percent, ``truncated_pairs`` and the timings.
  """
  ident = meta["identity"]
  asr, agreement, all_k, all_j, cut = [], [], [], [], 0
  for pid, out in enumerate(outputs):
    rec = scores[pid]
    unsafe = labels_of(np.asarray(rec["p_unsafe"], np.float64), ident["threshold"])
    keyword = np.asarray([metrics.is_jailbroken(o["generation"]) for o in out])
    asr.append(float(unsafe.mean() * 100.0))
    agreement.append(_agreement(keyword, unsafe))
    all_k.append(keyword)
    all_j.append(unsafe)
    cut += int(np.sum(rec["truncated"]))
  total = _agreement(np.concatenate(all_k), np.concatenate(all_j))
  return {**{k: ident[k] for k in ("format", "path", "labels", "threshold", "harmbench_prompt", "template",
                                   "max_request_tokens", "max_response_tokens", "max_length")},
          **metrics.visage_fields(asr, num_directions=num_directions, grid_shape=grid_shape),
          "agreement": agreement, "agreement_total": total,
          "agreement_percent": 100.0 * (total["both_unsafe"] + total["both_safe"]) / max(1, sum(total.values())),
          "truncated_pairs": cut, "timings": meta.get("timings")}


def finished_stores(out_dir: str, outputs: list[list[dict]]) -> list[tuple[dict, dict[int, dict]]]:
  """``(meta, scores)`` of every finished judge stored in ``out_dir`` whose scored generations are ``outputs``.

  A judge whose stored generations no longer match (e.g. a scan resumed with other points) is
  left out. In the order of the stores' names.
  """
  found = []
  for meta_path in sorted(glob.glob(os.path.join(out_dir, JUDGES_DIR, "*", _STORE_FILE))):
    meta, scores = _load_store(os.path.dirname(meta_path))
    if not meta or not meta.get("complete"):
      continue
    if any(scores.get(i, {}).get("hash") != point_hash(out) for i, out in enumerate(outputs)):
      continue
    found.append((meta, scores))
  return found
