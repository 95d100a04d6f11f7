"""A finetune's training state: where it lives in the output dir (interrupted: the state; finished: the info
file), and the fingerprint a saved state must share with the run that resumes it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Any

import jax
import numpy as np

from jaxscape.core import model as model_lib
from jaxscape.errors import InputError
from jaxscape.studies.chat_data import Example
from jaxscape.studies.train_step import TrainConfig

PyTree = Any

TRAIN_STATE_DIR = ".train_state"  # inside the output dir, removed when the run completes
INFO_FILE = "finetune_info.json"  # written last: its presence marks a complete run


def prepare_out_dir(out_dir: str, *, resume: bool, overwrite: bool) -> None:
  """Refuse an output dir holding earlier results (unless ``overwrite``); allow resuming our own state."""
  from jaxscape.core import convert

  if not os.path.exists(out_dir):
    return
  if not os.path.isdir(out_dir):
    raise InputError(f"output path {out_dir} exists and is not a directory")
  entries = set(os.listdir(out_dir))
  interrupted = TRAIN_STATE_DIR in entries and INFO_FILE not in entries
  if interrupted and resume:
    return
  if entries and not overwrite:
    what = ("the training state of an interrupted run (resume it, or pass overwrite=True / --overwrite with "
            "resume off to start over)" if interrupted else
            "earlier results (pass overwrite=True / --overwrite to replace them)")
    raise InputError(f"output dir {out_dir} is not empty: it holds {what}")
  # Overwriting: drop what the new export would not replace but a loader would read instead
  # (an orbax copy, a shard index) or take for a finished run.
  for name in (TRAIN_STATE_DIR, INFO_FILE, convert.ORBAX_DIR, convert.SAFETENSORS_INDEX):
    path = os.path.join(out_dir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)


# ----------------------------------------------------------------- the training state's fingerprint


def _tree_digest(tree: PyTree) -> str:
  """``"N leaves, M values, sha256 …"`` over the tree's structure, shapes, dtypes and sampled values.

  Sampled (the first and last 64 values along each leaf's last axis at its first and last
  index of the other axes), not hashed in full: cheap for any model size, yet two different
  checkpoints or initialisations differ there with near certainty.
  """
  if tree is None:
    return "none"
  leaves, treedef = jax.tree.flatten(tree)
  h = hashlib.sha256(str(treedef).encode())
  for x in leaves:
    h.update(f"{x.shape}{x.dtype}".encode())
    if x.ndim:
      for corner in ((0,) * (x.ndim - 1), (-1,) * (x.ndim - 1)):
        h.update(np.ascontiguousarray(jax.device_get(x[corner][:64])).tobytes())
        h.update(np.ascontiguousarray(jax.device_get(x[corner][-64:])).tobytes())
    else:
      h.update(np.asarray(jax.device_get(x)).tobytes())
  return f"{len(leaves)} leaves, {sum(x.size for x in leaves):,} values, sha256 {h.hexdigest()[:16]}"


def train_fingerprint(trainable: PyTree, frozen: PyTree, cfg: model_lib.ModelConfig, examples: list[Example],
                      tc: TrainConfig, *, pad_id: int, extra: dict | None = None) -> dict:
  """What a resumed run must share with the run that saved the state, as a JSON-able dict.

  The train and model configs, the encoded data (count and hash), the pad id, digests of
  the initial ``trainable`` and ``frozen`` trees (:func:`_tree_digest`), and ``extra``.
  """
  h = hashlib.sha256()
  for ex in examples:
    h.update(np.int64(len(ex.ids)).tobytes())
    h.update(np.asarray(ex.ids, np.int32).tobytes())
    h.update(np.asarray(ex.loss_mask, bool).tobytes())
  # model_shards is a device layout, not the model: it must not block a resume.
  arch = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "model_shards"}
  prints = {"train_config": dataclasses.asdict(tc), "model_config": arch,
            "data": f"{len(examples)} examples, sha256 {h.hexdigest()[:16]}", "pad_id": pad_id,
            "initial_trainable": _tree_digest(trainable), "frozen": _tree_digest(frozen), **(extra or {})}
  return json.loads(json.dumps(prints))  # tuples -> lists, as they come back from the saved JSON


def _fingerprint_diff(saved: Any, now: Any, path: str = "") -> list[str]:
  if isinstance(saved, dict) and isinstance(now, dict):
    out = []
    for k in sorted(set(saved) | set(now)):
      out += _fingerprint_diff(saved.get(k), now.get(k), f"{path}.{k}" if path else k)
    return out
  return [] if saved == now else [f"{path}: saved {saved!r}, now {now!r}"]


def check_fingerprint(saved: dict, now: dict, checkpoint_dir: str) -> None:
  diff = _fingerprint_diff(saved, now)
  if diff:
    more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
    raise InputError(f"{checkpoint_dir} holds the training state of a different run: {'; '.join(diff[:3])}{more}. "
                     "Resume with the same settings and data, or start over without it")
