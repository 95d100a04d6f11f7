"""Results directories: atomic writes, the stores a scan writes, fingerprints and resume checks.

A scan's results dir holds its stores, each written once by what computed it, and views built
from them (``jaxscape.studies.views``). The stores:

* ``run.json``: the run's identity (fingerprints), written first, checked on resume.
* ``points/slice-*.json``: each finished slice's point records (generations, ASR, ...).
* ``scan.json``: the scan's metadata, written when its points are complete: the spec fields
  (:data:`SCAN_SPEC_KEYS`), the grid, the prompts, the metric and everything else
  ``summary.json`` holds that is not derived from the points (timings, fingerprints, plan, ...).
* ``judges/<name>/``: a classifier judge's scores (``jaxscape.studies.judge``).

Views (generations.jsonl, summary.json, arrays.npz, plots, report.html) are built from the
stores by ``jaxscape.studies.views.write_views`` only.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Any

import numpy as np

from jaxscape.errors import InputError

POINTS_DIR = "points"
RUN_FILE = "run.json"
SCAN_FILE = "scan.json"
SUMMARY_FILE = "summary.json"
GENERATIONS_FILE = "generations.jsonl"
# The spec fields scan.json (and summary.json) start with.
SCAN_SPEC_KEYS = ("kind", "steps", "multiplier", "extra_steps", "seed", "num_directions")
# What scan.json holds beyond summary.json: the whole grid, the prompts, what was measured.
SCAN_ONLY_KEYS = ("grid", "prompts", "metric")


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Write ``data`` to ``path`` via a temporary file, fsync and rename: readers never see a partial file."""
  d = os.path.dirname(os.path.abspath(path))
  tmp = os.path.join(d, f".{os.path.basename(path)}.tmp{os.getpid()}")
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  try:  # make the rename itself durable
    fd = os.open(d, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
  except OSError:
    pass


def atomic_write_json(path: str, obj: Any, *, indent: int | None = 1) -> None:
  atomic_write_bytes(path, (json.dumps(obj, indent=indent, sort_keys=False) + "\n").encode("utf-8"))


def atomic_write_text(path: str, text: str) -> None:
  atomic_write_bytes(path, text.encode("utf-8"))


# ----------------------------------------------------------------- fingerprints


def fingerprint_json(obj: Any) -> str:
  """sha256 of a JSON-serialisable object (sorted keys), 16 hex chars."""
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------- run identity and resume


def check_writable(out_dir: str) -> None:
  """Create ``out_dir`` and prove a file can be written there (raises OSError otherwise)."""
  os.makedirs(os.path.join(out_dir, POINTS_DIR), exist_ok=True)
  probe = os.path.join(out_dir, f".write_probe{os.getpid()}")
  atomic_write_bytes(probe, b"ok")
  os.remove(probe)


# Identity fields added after results dirs existed, with the value every earlier run had.
IDENTITY_DEFAULTS = {"residency": "float32"}


def prepare_run(out_dir: str, identity: dict, *, resume: bool, write: bool = True) -> bool:
  """Check ``out_dir`` against this run's ``identity`` (fingerprints of model, directions, prompts, flags).

  Returns True when earlier points may be reused. Raises InputError, naming the differing
  keys, when the dir holds an incompatible run (nothing is written in that case), or when it
  holds a compatible run and ``resume`` is False. ``write=False`` (processes other than 0)
  only checks.
  """
  run_path = os.path.join(out_dir, RUN_FILE)
  if os.path.isfile(run_path):
    try:
      with open(run_path, encoding="utf-8") as f:
        old = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise InputError(f"{run_path}: unreadable ({e}); use a new --out") from None
    old = {**IDENTITY_DEFAULTS, **old}  # a dir written before a field existed holds its default
    diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
    if diff:
      raise InputError(f"{out_dir} holds a different run (differs in: {', '.join(diff)}); "
                       f"use a new --out or the same settings")
    if not resume:
      raise InputError(f"{out_dir} already holds this run; pass --resume to finish it or use a new --out")
    return True
  if os.path.isdir(out_dir) and os.path.exists(os.path.join(out_dir, "summary.json")):
    raise InputError(f"{out_dir} holds results without {RUN_FILE}; use a new --out")
  if write:
    check_writable(out_dir)
    atomic_write_json(run_path, identity)
  return False


def save_slice(out_dir: str, records: dict[int, dict]) -> str:
  """Write one finished slice, ``{point_id: record}``, atomically; returns the file path."""
  ids = sorted(records)
  path = os.path.join(out_dir, POINTS_DIR, f"slice-{ids[0]:06d}-{ids[-1]:06d}.json")
  atomic_write_json(path, {"point_ids": ids, "points": [records[i] for i in ids]}, indent=None)
  return path


def load_points(out_dir: str, *, clean: bool = False) -> dict[int, dict]:
  """All point records already written to ``out_dir/points``.

  ``clean`` removes temporary files a killed run left behind (never a finished slice).
  """
  if clean:
    for path in glob.glob(os.path.join(out_dir, POINTS_DIR, ".*.tmp*")):
      os.remove(path)
  done = {}
  for path in sorted(glob.glob(os.path.join(out_dir, POINTS_DIR, "slice-*.json"))):
    try:
      with open(path, encoding="utf-8") as f:
        data = json.load(f)
    except (OSError, json.JSONDecodeError):
      continue  # only a crash between write and rename could leave this; atomic writes prevent it
    for pid, rec in zip(data["point_ids"], data["points"]):
      done[int(pid)] = rec
  return done


def slug(run: str) -> str:
  """A file-system name for a study run ("task:code+safety" -> "task_code+safety")."""
  return run.replace(":", "_")


# ----------------------------------------------------------------- the scan's metadata


def save_scan(out_dir: str, meta: dict) -> str:
  """Write the scan's metadata (module docstring) to ``out_dir/scan.json`` atomically; returns its path."""
  path = os.path.join(out_dir, SCAN_FILE)
  atomic_write_json(path, meta)
  return path


def has_scan(out_dir: str) -> bool:
  """Whether ``out_dir`` holds a finished scan: its scan.json, or the summary.json of a dir written before it."""
  return any(os.path.isfile(os.path.join(out_dir, f)) for f in (SCAN_FILE, SUMMARY_FILE))


def read_json(path: str) -> Any:
  """A JSON file's content; InputError naming the file when it is unreadable."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise InputError(f"{path}: unreadable ({e})") from None


def load_scan(out_dir: str) -> dict:
  """The scan's metadata: ``out_dir/scan.json``, or for a dir written before scan.json existed,
  the same derived from its summary.json and generations.jsonl (:func:`scan_from_views`).

  Raises:
    InputError: neither file (no finished scan), or one that is unreadable or not a scan's.
  """
  path = os.path.join(out_dir, SCAN_FILE)
  if os.path.isfile(path):
    return read_json(path)
  if not os.path.isfile(os.path.join(out_dir, SUMMARY_FILE)):
    raise InputError(f"{out_dir} holds no {SCAN_FILE} or {SUMMARY_FILE} (a finished run_grid results dir is needed)")
  return scan_from_views(out_dir)


def scan_from_views(out_dir: str) -> dict:
  """scan.json's content rebuilt from the views of a dir written before scan.json existed.

  summary.json holds every metadata key; what is derived from the points (metrics, VISAGE,
  judges) is dropped. The grid follows from the coords (summary.json holds one direction's K
  coords; several directions repeat them, each along its own unit coefficient, as
  ``landscape.make_grid`` lays them out); the prompts are those of generations.jsonl's first
  line (none for a capability-only scan, which stored none).
  """
  path = os.path.join(out_dir, SUMMARY_FILE)
  summary = read_json(path)
  if not isinstance(summary, dict) or not summary.get("coords") or not (summary.get("axes") or {}).get("x"):
    raise InputError(f"{path} is not a scan summary this version can read (no coords or axes)")
  n = int(summary.get("num_directions", 1))
  coords = [list(map(float, c)) for c in summary["coords"]]
  K = len(coords)
  coeffs = np.zeros((n * K, n), np.float32) if n > 1 else np.asarray(coords, np.float32)
  for k in range(n if n > 1 else 0):
    coeffs[k * K:(k + 1) * K, k] = [c[0] for c in coords]
  axes = summary["axes"]
  grid = {"coeffs": coeffs.tolist(), "coords": coords * n, "direction": [k for k in range(n) for _ in range(K)],
          "axes": [axes["x"]] + ([axes["y"]] if axes.get("y") else [])}
  prompts = []
  gpath = os.path.join(out_dir, GENERATIONS_FILE)
  if os.path.isfile(gpath):
    with open(gpath, encoding="utf-8") as f:
      first = json.loads(f.readline() or "{}")
    prompts = [o["prompt"] for o in first.get("output") or []]
  metric = "both" if "asr" in summary and "capability" in summary else (
      "capability" if "capability" in summary else "safety")
  derived = {"coords", "axes", "nonfinite", "nonfinite_points", "asr", "visage", "visage_std",
             "visage_per_direction", "capability", "judges", "spread", "asr_coherent", "incoherent",
             "visage_coherent", "visage_coherent_std", "visage_coherent_per_direction", "coherence"}
  return {**{k: summary[k] for k in SCAN_SPEC_KEYS if k in summary}, "grid": grid, "prompts": prompts,
          "metric": metric, **{k: v for k, v in summary.items() if k not in derived and k not in SCAN_SPEC_KEYS}}


# ----------------------------------------------------------------- score stores (judges, coherence)


def load_score_store(store: str, meta_file: str, fields: tuple[str, ...]) -> tuple[dict | None, dict[int, dict]]:
  """``(meta or None, {point: {"hash", *fields}})`` of a score store: ``store/meta_file`` and its parts.

  A score store holds per-point scores of a scan's generations (a judge's p(unsafe), coherence
  NLLs), one atomic ``part-*.json`` per chunk of points (:func:`save_score_part`), each point
  with the hash of the generations it scored, so an interrupted scorer resumes and a stale
  score is never used.
  """
  meta_path = os.path.join(store, meta_file)
  meta = read_json(meta_path) if os.path.isfile(meta_path) else None
  done = {}
  for path in sorted(glob.glob(os.path.join(store, "part-*.json"))):
    try:
      part = read_json(path)
      for k, pid in enumerate(part["point_ids"]):
        done[int(pid)] = {"hash": part["hashes"][k], **{f: part[f][k] for f in fields}}
    except (InputError, KeyError, TypeError, IndexError):
      continue  # atomic writes leave no partial part; a foreign file is ignored
  return meta, done


def save_score_part(store: str, ids: list[int], hashes: list[str], **fields: list) -> str:
  """Write one part of a score store (:func:`load_score_store`) atomically; returns its path."""
  path = os.path.join(store, f"part-{ids[0]:06d}-{ids[-1]:06d}.json")
  atomic_write_json(path, {"point_ids": list(ids), "hashes": list(hashes), **fields}, indent=None)
  return path


def clean_temporary(folder: str) -> None:
  """Remove the temporary files a killed writer left in ``folder`` (never a finished file)."""
  for path in glob.glob(os.path.join(folder, ".*.tmp*")):
    os.remove(path)
