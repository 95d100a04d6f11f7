"""Results directories: atomic writes, per-slice point files, fingerprints and resume checks."""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Any

import jax
import numpy as np

POINTS_DIR = "points"
RUN_FILE = "run.json"


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


def fingerprint_tree(tree: Any) -> str:
  """sha256 over every leaf's path, dtype, shape and bytes (hex, 16 chars)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.asarray(leaf)
    h.update(jax.tree_util.keystr(path).encode())
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:16]


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


def prepare_run(out_dir: str, identity: dict, *, resume: bool, write: bool = True) -> bool:
  """Check ``out_dir`` against this run's ``identity`` (fingerprints of model, directions, prompts, flags).

  Returns True when earlier points may be reused. Raises ValueError, naming the differing
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
      raise ValueError(f"{run_path}: unreadable ({e}); use a new --out") from None
    diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
    if diff:
      raise ValueError(f"{out_dir} holds a different run (differs in: {', '.join(diff)}); "
                       f"use a new --out or the same settings")
    if not resume:
      raise ValueError(f"{out_dir} already holds this run; pass --resume to finish it or use a new --out")
    return True
  if os.path.isdir(out_dir) and os.path.exists(os.path.join(out_dir, "summary.json")):
    raise ValueError(f"{out_dir} holds results without {RUN_FILE}; use a new --out")
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
