"""A results dir's coherence: scoring every generation of a finished scan under θ₀, stored resumably.

``score_dir(out_dir, model, settings)`` calibrates the threshold (``jaxscape.studies.coherence``) with the
scan's own decoding settings, scores every generation of the dir and stores the NLLs in
``out_dir/coherence/`` (one atomic part per chunk of points, each with the hash of what it scored,
like a judge's store). It writes no view: ``jaxscape.studies.views.write_views`` then labels every
generation (``nll_per_token``, ``label``) and adds coherent ASR, the incoherent share and their
VISAGE to summary.json (:func:`summary_fields`).

    from jaxscape.studies import coherence, coherence_results, views
    coherence_results.score_dir("results/toy_1d", model, coherence.Settings(source="builtin:benign_test"))
    summary = views.write_views("results/toy_1d")
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from typing import Callable

import numpy as np

from jaxscape.core import convert
from jaxscape.core import metrics
from jaxscape.core import results
from jaxscape.studies.coherence import (COHERENT, INCOHERENT, LABELS, Calibration, Settings, calibration_for, encode,
                                labels, nll_per_token, shares)
from jaxscape.errors import InputError


COHERENCE_DIR = "coherence"
_STORE_FILE = "coherence.json"


@dataclasses.dataclass(frozen=True)
class DirGenerations:
  """A finished scan's generations, per point in point order.

  Attributes:
    meta: the scan's metadata (``results.load_scan``).
    prompts: [P] the scan's prompts (user text, before rendering).
    texts: [points][P] generations.
    token_ids: [points][P] token-id lists as the scan stored them; None for a dir written before
      scans stored them (its texts are re-tokenized).
  """
  meta: dict
  prompts: list[str]
  texts: list[list[str]]
  token_ids: list[list[list[int]]] | None


def read_dir(out_dir: str) -> DirGenerations:
  """The generations of a finished scan's results dir (:class:`DirGenerations`).

  Raises:
    InputError: no finished scan, or one without generations (a capability-only scan).
  """
  from jaxscape.studies import judge_store  # the dir reader both scorers share
  outputs = judge_store.read_generations(out_dir)
  meta = results.load_scan(out_dir)
  points = results.load_points(out_dir)
  ids = None
  if points and all("token_ids" in points[i] for i in range(len(outputs))):
    ids = [points[i]["token_ids"] for i in range(len(outputs))]
  prompts = [o["prompt"] for o in outputs[0]]
  return DirGenerations(meta, prompts, [[o["generation"] for o in out] for out in outputs], ids)


def point_hash(prompts: list[str], texts: list[str], ids: list[list[int]] | None) -> str:
  """Fingerprint of what one point's scores depend on (stored with them; valid while it matches)."""
  return results.fingerprint_json([prompts, texts, ids])


def check_reference(out_dir: str, model) -> None:
  """InputError unless ``model`` is the scan's θ₀ (its fingerprint is run.json's ``model``)."""
  run = results.read_json(os.path.join(out_dir, results.RUN_FILE)) if os.path.isfile(
      os.path.join(out_dir, results.RUN_FILE)) else {}
  want, have = run.get("model"), convert.fingerprint(model.params)
  if want is None:
    raise InputError(f"{out_dir} records no model fingerprint (no {results.RUN_FILE}); name the reference model "
                     f"explicitly (--coherence_reference) to score it")
  if want != have:
    raise InputError(f"{model.path} is not the scan's model θ₀ (fingerprint {have}, the run's {want}); pass the "
                     f"scan's --model, or --coherence_reference to score under another model")


def store_dir(out_dir: str) -> str:
  return os.path.join(out_dir, COHERENCE_DIR)


def load_store(out_dir: str) -> tuple[dict | None, dict[int, dict]]:
  """(the store's record or None, ``{point: {"hash", "nll"}}``) of ``out_dir``'s coherence store."""
  return results.load_score_store(store_dir(out_dir), _STORE_FILE, ("nll",))


def store_identity(model, calibration: Calibration, *, batch_size: int, retokenized: bool, theta0: bool,
                   settings: Settings | None = None) -> dict:
  """What makes two coherence scorings of a dir the same (a resume checks it)."""
  return {"reference": model.path, "reference_fingerprint": convert.fingerprint(model.params),
          "reference_is_theta0": theta0, "calibration": calibration.to_json(), "threshold": calibration.threshold,
          "batch_size": int(batch_size), "retokenized": retokenized,
          "settings": dataclasses.asdict(settings) if settings else None}


def score_results(out_dir: str, model, calibration: Calibration, *, batch_size: int = 32, existing: str = "refuse",
                  theta0: bool = True, progress: bool = False, points_per_part: int | None = None,
                  on_part: Callable[[list[int]], None] | None = None, mesh=None,
                  settings: Settings | None = None) -> dict:
  """Score every generation of a finished scan's results dir under ``model``; returns the store's record.

  The prompts are rendered as the scan rendered them (its prompt format, system prompt and
  prompt truncation, from scan.json), the generations are its stored token ids (texts
  re-tokenized for an older dir, marked ``retokenized``). Scores go to ``out_dir/coherence/``
  (one atomic part per chunk of points, each with the hash of what it scored): an interrupted run
  resumes, a rerun scores only changed points. Writes only this store; the caller rebuilds the
  views (``jaxscape.studies.views.write_views``), which labels every generation and adds coherent ASR.

  Args:
    calibration: the threshold and how it was found (:func:`calibrate`, or ``Calibration(x)``).
    existing: scores already stored: "refuse" (an error when finished; an unfinished store of the
      same settings resumes), "overwrite" (replaced) or "reuse" (a finished store of the same
      settings is kept).
    theta0: ``model`` is the scan's θ₀ (checked against the run's fingerprint); False for another
      reference model (its own tokenizer re-tokenizes the texts).
  """
  if existing not in ("refuse", "overwrite", "reuse"):
    raise ValueError(f"existing must be refuse, overwrite or reuse, got {existing!r}")
  gens = read_dir(out_dir)
  if theta0:
    check_reference(out_dir, model)
  use_ids = gens.token_ids is not None and theta0
  ident = store_identity(model, calibration, batch_size=batch_size, retokenized=not use_ids, theta0=theta0,
                         settings=settings)
  store = store_dir(out_dir)
  meta, done = load_store(out_dir)
  if meta is not None and existing == "overwrite":
    shutil.rmtree(store)
    meta, done = None, {}
  if meta is not None:
    diff = sorted(k for k in set(ident) | set(meta["identity"]) if meta["identity"].get(k) != ident.get(k))
    if diff:
      raise InputError(f"{out_dir} holds coherence scores with other settings (differs in: {', '.join(diff)}); "
                       f"pass --overwrite to replace them")
    if meta.get("complete") and existing == "refuse":
      raise InputError(f"{out_dir} already holds coherence scores; pass --overwrite to score again")
  else:
    os.makedirs(store, exist_ok=True)
    meta = {"identity": ident, "complete": False}
    results.atomic_write_json(os.path.join(store, _STORE_FILE), meta)
  results.clean_temporary(store)
  ids = gens.token_ids if use_ids else None
  hashes = [point_hash(gens.prompts, t, ids[i] if ids else None) for i, t in enumerate(gens.texts)]
  todo = [i for i in range(len(hashes)) if done.get(i, {}).get("hash") != hashes[i]]
  t0 = time.perf_counter()
  if todo:
    _score_parts(out_dir, model, gens, ids, hashes, todo, done, batch_size=batch_size, mesh=mesh,
                 points_per_part=points_per_part, progress=progress, on_part=on_part)
    meta["timings"] = {"score_s": time.perf_counter() - t0, "generations_scored": len(todo) * len(gens.prompts)}
  meta["complete"] = True
  results.atomic_write_json(os.path.join(store, _STORE_FILE), meta)
  return meta


def _score_parts(out_dir: str, model, gens: DirGenerations, ids, hashes: list[str], todo: list[int],
                 done: dict[int, dict], *, batch_size: int, mesh, points_per_part: int | None, progress: bool,
                 on_part) -> None:
  """Score the points ``todo`` into the store a part at a time, adding them to ``done``."""
  meta = gens.meta
  flags = meta.get("flags") or {}
  P = len(gens.prompts)
  # Every generation of the dir is encoded, scored or not: T and C (so the program and each
  # row's numbers) do not depend on what an interrupted run had finished.
  flat = [g for point in (ids or gens.texts) for g in point]
  enc = encode(model, gens.prompts * len(gens.texts), flat, prompt_format=meta.get("prompt_format", "chat"),
               system_prompt=meta.get("system_prompt"), truncate_prompts=bool(flags.get("truncate_prompts")),
               max_new_tokens=meta.get("max_new_tokens") if ids else None)
  chunk = points_per_part or max(1, -(-8 * batch_size // P))
  from tqdm import tqdm
  bar = tqdm(total=len(todo), desc="coherence", unit="pt", file=sys.stderr, disable=not progress, dynamic_ncols=True)
  for c in range(0, len(todo), chunk):
    part = todo[c:c + chunk]
    rows = np.concatenate([np.arange(i * P, (i + 1) * P) for i in part])
    sub = dataclasses.replace(enc, tokens=enc.tokens[rows], mask=enc.mask[rows], targets=enc.targets[rows],
                              target_mask=enc.target_mask[rows])
    nll = nll_per_token(model.params, sub, cfg=model.cfg, batch_size=batch_size, mesh=mesh).reshape(len(part), P)
    values = [[float(x) for x in row] for row in nll]
    results.save_score_part(store_dir(out_dir), part, [hashes[i] for i in part], nll=values)
    for i, v in zip(part, values):
      done[i] = {"hash": hashes[i], "nll": v}
    bar.update(len(part))
    if on_part is not None:
      on_part(part)
  bar.close()


def finished_scores(out_dir: str, gens_texts: list[list[str]]) -> tuple[dict, list[list[float]]] | None:
  """(the store's record, NLL per point [points][P]) of a finished coherence store whose scores are
  of ``gens_texts``' generations; None when there is none or it is stale."""
  meta, done = load_store(out_dir)
  if not meta or not meta.get("complete") or len(done) < len(gens_texts):
    return None
  try:
    gens = read_dir(out_dir)
  except InputError:
    return None
  ids = gens.token_ids if not meta["identity"].get("retokenized") else None
  if gens.texts != gens_texts:
    return None
  for i, t in enumerate(gens.texts):
    if done[i]["hash"] != point_hash(gens.prompts, t, ids[i] if ids else None):
      return None
  return meta, [done[i]["nll"] for i in range(len(gens.texts))]


def summary_fields(meta: dict, nll: list[list[float]], texts: list[list[str]], *, num_directions: int = 1,
                   grid_shape: tuple[int, int] | None = None) -> dict:
  """summary.json's coherence fields: per point ``asr_coherent`` (coherent compliance, % of all
  prompts) and ``incoherent`` (% of all prompts), VISAGE of the coherent ASR (``visage_coherent``;
  several directions also ``_std`` and ``_per_direction``) and ``coherence`` (threshold, its
  calibration, the reference model, label totals, timings)."""
  ident = meta["identity"]
  per_point = [shares(labels(t, n, ident["threshold"])) for t, n in zip(texts, nll)]
  coherent = np.array([s[COHERENT] for s in per_point])
  incoherent = np.array([s[INCOHERENT] for s in per_point])
  vis = metrics.visage_fields(coherent, num_directions=num_directions, grid_shape=grid_shape)
  shape = (num_directions, -1) if num_directions > 1 else (-1,)
  out = {"asr_coherent": vis.pop("asr"), "incoherent": incoherent.reshape(shape).tolist()}
  out.update((k.replace("visage", "visage_coherent"), v) for k, v in vis.items())
  all_marks = [m for t, n in zip(texts, nll) for m in labels(t, n, ident["threshold"])]
  out["coherence"] = {"threshold": ident["threshold"], "calibration": ident["calibration"],
                      "reference": ident["reference"], "reference_is_theta0": ident["reference_is_theta0"],
                      "retokenized": ident["retokenized"], "batch_size": ident["batch_size"],
                      "label_counts": {m: sum(x == m for x in all_marks) for m in LABELS},
                      "timings": meta.get("timings")}
  return out


def _stored_calibration(out_dir: str, model, settings: Settings, max_new_tokens: int) -> Calibration | None:
  """The calibration an earlier (interrupted or finished) scoring of ``out_dir`` stored, when it
  was made by ``model`` with ``settings``: a resume need not sample again."""
  meta, _ = load_store(out_dir)
  if not meta or settings.threshold is not None:
    return None
  ident, cal = meta["identity"], meta["identity"]["calibration"]
  same = (ident.get("settings") == dataclasses.asdict(settings) and cal.get("max_new_tokens") == max_new_tokens
          and ident.get("reference_fingerprint") == convert.fingerprint(model.params))
  return Calibration(**cal) if same else None


def score_dir(out_dir: str, model, settings: Settings = Settings(), *, theta0: bool = True, existing: str = "refuse",
              progress: bool = False, mesh=None) -> dict:
  """Calibrate (or take the given threshold) and score every generation of a finished scan's dir.

  The calibration decodes like the scan did (its max_new_tokens, prompt format and system prompt,
  from scan.json); a resumed scoring reuses the calibration it stored. Returns the store's record
  (:func:`score_results`); rebuild the views (``jaxscape.studies.views.write_views``) to see the labels.
  """
  gens = read_dir(out_dir)  # a dir without generations fails before anything is sampled
  if theta0:
    check_reference(out_dir, model)
  meta = gens.meta
  n_new = int(meta.get("max_new_tokens") or 64)
  cal = None if existing == "overwrite" else _stored_calibration(out_dir, model, settings, n_new)
  if cal is None:
    cal = calibration_for(model, settings, max_new_tokens=n_new, prompt_format=meta.get("prompt_format", "chat"),
                          system_prompt=meta.get("system_prompt"), mesh=mesh)
  return score_results(out_dir, model, cal, batch_size=settings.batch_size, existing=existing, theta0=theta0,
                       progress=progress, mesh=mesh, settings=settings)
