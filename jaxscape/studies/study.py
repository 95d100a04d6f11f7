"""The multitask safety study: finetune an aligned model per task / attack, then measure what it did to safety.

For each *run* (a finetuning set; names in ``jaxscape.studies.study_spec``), the aligned model is
finetuned and the result is measured (``jaxscape.studies.study_runs``):

* task performance on every benign task's held-out split (``evaluation.evaluate_tasks``),
* keyword ASR on the held-out harmful requests in every framing (plain, summarize, translate,
  classify, code),
* VISAGE of the finetuned model (a 1-D random landscape around it),
* the 1-D interpolation landscape from the aligned model to it;

plus, once, the aligned model's own row and one 2-D interpolation x random landscape. Results
go to ``out_dir``: ``table.md``, ``table.json``, ``framed_asr.png``, ``interpolation.png`` and
``runs/<run>/{model,random_1d,interp_1d}`` (every landscape dir is a normal results dir). A run
whose ``row.json`` exists is reused, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import numpy as np

from jaxscape.core import results
from jaxscape.datasets import registry
from jaxscape.errors import InputError
from jaxscape.reports import study_table
from jaxscape.reports.study_table import BASE
from jaxscape.studies import study_runs
from jaxscape.studies.study_claims import findings
from jaxscape.studies.study_spec import StudySpec, seeds_of

Log = Callable[[str], None]


def run_study(model_dir: str, spec: StudySpec, out_dir: str, *, progress: bool = True,
              log: Log = print, judge=None) -> dict:
  """Run every finetune and measurement of ``spec``; write ``out_dir``; return ``{"rows", "findings", ...}``.

  Args:
    model_dir: the aligned model (HF checkpoint dir, e.g. ``checkpoints/toy-chat``, or a hub id
      ``org/name[@revision]``, see ``jaxscape.core.hub``).
    spec: what to run.
    out_dir: results (created; finished runs inside it are reused).
    log: one line per finished step (default ``print``).
    judge: optional ``jaxscape.studies.judge.Judge``: every row also gets its judged ASR per framing and
      judged VISAGE (:func:`jaxscape.studies.study_runs.judge_row`; reused rows are judged from their stored generations),
      shown as extra columns of the table. The findings stay keyword-judged.
  """
  from jaxscape.core import convert

  t_start = time.perf_counter()
  base = convert.load_model(model_dir)
  _check_compatible(out_dir, model_dir, base.params, spec)
  tcs = _train_configs(spec)
  rows = {}
  for name in (BASE,) + spec.runs:
    rows[name] = _row(name, base, spec, tcs, out_dir, judge=judge, progress=progress, log=log)
  surface = _surface(base, spec, out_dir, judge=judge, progress=progress, log=log) if spec.surface_run else None
  attacks = _attacks(base, spec, tcs["harmful"], out_dir, rows, progress=progress, log=log)
  table = {"model": model_dir, "spec": dataclasses.asdict(spec), "rows": [rows[n] for n in (BASE,) + spec.runs],
           "surface": surface, "attacks": attacks, "findings": findings(rows, attacks),
           "seconds": time.perf_counter() - t_start,
           "judge": None if judge is None else {"name": judge.name, "format": judge.spec.fmt,
                                                "path": judge.model.path, "threshold": judge.spec.threshold}}
  _write_json(os.path.join(out_dir, "table.json"), table)
  with open(os.path.join(out_dir, "table.md"), "w", encoding="utf-8") as f:
    f.write(study_table.table_markdown(table))
  study_table.plot_study(table, out_dir)
  from jaxscape.reports import htmlreport
  htmlreport.write_report(out_dir)
  return table


def _train_configs(spec: StudySpec) -> dict:
  """The finetuning settings of the benign task runs (``"task"``) and of the harmful runs (``"harmful"``)."""
  from jaxscape.studies import train_step
  return {kind: train_step.TrainConfig(num_steps=steps, batch_size=bs, buckets=spec.buckets, learning_rate=lr,
                                       warmup_steps=min(spec.warmup_steps, steps), seed=spec.seed)
          for kind, steps, bs, lr in (("task", spec.steps, spec.batch_size, spec.learning_rate),
                                      ("harmful", spec.harmful_steps, spec.harmful_batch_size,
                                       spec.harmful_learning_rate))}


def _row(name: str, base, spec: StudySpec, tcs: dict, out_dir: str, *, judge, progress: bool, log: Log) -> dict:
  """Run ``name``'s row (finetune, measure, judge) into ``runs/<run>/row.json``, or reuse the one stored there."""
  run_dir = os.path.join(out_dir, "runs", results.slug(name))
  row_path = os.path.join(run_dir, "row.json")
  if os.path.isfile(row_path):
    with open(row_path, encoding="utf-8") as f:
      row = json.load(f)
    log(f"{name}: reused {row_path}")
    if judge is not None and judge.name not in row.get("judges", {}):
      study_runs.judge_row_and_views(row, judge, spec, run_dir, progress=progress)
      _write_json(row_path, row)
    return row
  os.makedirs(run_dir, exist_ok=True)
  t0 = time.perf_counter()
  if name == BASE:
    row = {"run": name, "finetune": None,
           **study_runs.measure(base, spec, run_dir, progress=progress, write_views=judge is None)}
  else:
    tc = tcs["task" if name.startswith("task:") else "harmful"]
    records, info, tuned = study_runs.finetune_run(base, name, spec, tc, os.path.join(run_dir, "model"),
                                                   seed=spec.seed, progress=progress)
    row = {"run": name, "finetune": {"records": len(records), "steps": info["steps"],
                                     "final_loss": info["final_loss"], "seconds": info["seconds"]},
           **study_runs.measure(tuned, spec, run_dir, base=base, progress=progress, write_views=judge is None)}
    if seeds_of(name, spec) > 1:
      study_runs.average_over_seeds(row, name, base, spec, tc, run_dir, progress=progress)
  row["seconds"] = time.perf_counter() - t0
  if judge is not None:
    study_runs.judge_row_and_views(row, judge, spec, run_dir, progress=progress)
  _write_json(row_path, row)
  log(f"{name}: {_row_line(row)} ({row['seconds']:.0f} s)")
  return row


def _surface(base, spec: StudySpec, out_dir: str, *, judge, progress: bool, log: Log) -> dict:
  """The 2-D interpolation x random landscape aligned -> ``spec.surface_run``'s model, in ``surface_2d/``."""
  from jaxscape.core import convert
  from jaxscape.studies import landscape, views
  surf_dir = os.path.join(out_dir, "surface_2d")
  tuned = convert.load_model(os.path.join(out_dir, "runs", results.slug(spec.surface_run), "model"))
  prompts = [r["prompt"] for r in registry.load("harmful_test")[:spec.landscape_prompts]]
  ls = landscape.LandscapeSpec(kind="2d_interpolation_random", steps=spec.surface_steps,
                               multiplier=spec.visage_multiplier, extra_steps=1, seed=spec.direction_seed)
  s = landscape.run_landscape(base, prompts, ls, out_dir=surf_dir, model_b=tuned,
                              options=landscape.ScanOptions(progress=progress, write_views=judge is None),
                              decode=landscape.DecodeSpec(max_new_tokens=spec.landscape_new_tokens))
  surface = {"run": spec.surface_run, "dir": "surface_2d", "visage": s["visage"]}
  if judge is not None:
    from jaxscape.studies import judge_store
    entry = judge_store.judge_results(surf_dir, judge, existing="reuse", progress=progress)
    views.write_views(surf_dir)
    surface["judges"] = {judge.name: {"visage": entry["visage"]}}
  log(f"2-D interpolation x random ({spec.surface_run}): VISAGE {s['visage']:.1f}")
  return surface


def _attacks(base, spec: StudySpec, harmful_tc, out_dir: str, rows: dict, *, progress: bool, log: Log) -> list[dict]:
  """``spec.attack_run`` on the model of each run of ``spec.attack_from``, in ``attacks/<run>.json`` (reused when
  stored with the same attack and steps)."""
  attacks = []
  attack_tc = dataclasses.replace(harmful_tc, num_steps=spec.attack_steps or spec.harmful_steps,
                                  warmup_steps=min(spec.warmup_steps, spec.attack_steps or spec.harmful_steps))
  for start in spec.attack_from:
    path = os.path.join(out_dir, "attacks", f"{results.slug(start)}.json")
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        stored = json.load(f)
      if (stored.get("run"), stored.get("steps", spec.harmful_steps)) == (spec.attack_run, attack_tc.num_steps):
        attacks.append(stored)
        log(f"{start} -> {spec.attack_run}: reused {path}")
        continue
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t0 = time.perf_counter()
    a = study_runs.attack(start, base, spec, attack_tc, out_dir, rows, progress=progress)
    a["steps"], a["seconds"] = attack_tc.num_steps, time.perf_counter() - t0
    _write_json(path, a)
    attacks.append(a)
    log(f"{start} -> {spec.attack_run}: plain ASR {a['framed_asr']['plain']:.0f}% (mean of "
        f"{len(a['framed_asr_per_seed'])} seeds; {a['seconds']:.0f} s)")
  return attacks


def _write_json(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _check_compatible(out_dir: str, model_dir: str, params: Any, spec: StudySpec) -> None:
  """Record the study's settings in ``out_dir/study.json``; refuse a dir holding a study with other settings.

  Only ``runs`` and the attack may differ (adding runs to a finished study reuses the others; an
  attack stored with other settings is made again).
  """
  import jax

  from jaxscape.core import convert, hub
  def plain(d):  # tuples as JSON writes them
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()
            if k not in ("runs", "attack_run", "attack_from", "attack_steps")}

  settings = plain(dataclasses.asdict(spec))
  defaults = plain(dataclasses.asdict(StudySpec()))  # a setting added later: its default in older dirs
  # Fingerprinted per layer (the former layout): study dirs written before layers were stacked
  # keep their fingerprint. Host views, so no slicing program is compiled.
  per_layer = convert.unstack_layers(jax.tree.map(np.asarray, params))
  # A hub id as given (the same whatever the working dir); a local dir as its absolute path.
  model = model_dir if hub.is_hub_id(model_dir) else os.path.abspath(model_dir)
  want = {"model": model, "model_weights": convert.fingerprint_tree(per_layer),
          "settings": settings}
  path = os.path.join(out_dir, "study.json")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      have = json.load(f)
    diff = [k for k in ("model", "model_weights") if have.get(k) != want[k]]
    there = {**defaults, **have.get("settings", {})}
    diff += [f"{k} ({there.get(k)!r} there, {v!r} now)" for k, v in settings.items() if there.get(k) != v]
    if diff:
      raise InputError(f"{out_dir} holds a study with other settings: {', '.join(diff)}; use another --out")
    return
  os.makedirs(out_dir, exist_ok=True)
  _write_json(path, want)


def _row_line(row: dict) -> str:
  fa = row["framed_asr"]
  return ("ASR " + " ".join(f"{k} {v:.0f}%" for k, v in fa.items()) + " | tasks "
          + " ".join(f"{k} {v:.0f}%" for k, v in row["task_accuracy"].items()) + f" | VISAGE {row['visage']:.1f}")


def redraw(out_dir: str) -> list[str]:
  """Rewrite a study dir's ``table.md`` and plots from its ``table.json``; returns the paths written."""
  with open(os.path.join(out_dir, "table.json"), encoding="utf-8") as f:
    table = json.load(f)
  table["spec"] = {**dataclasses.asdict(StudySpec()), **(table.get("spec") or {})}  # older tables: defaults
  try:
    md, paths = study_table.table_markdown(table), study_table.plot_study(table, out_dir)
  except (KeyError, TypeError, IndexError) as e:
    raise InputError(f"{out_dir}/table.json is not a study table this version can redraw ({e!r} missing or malformed)")
  path = os.path.join(out_dir, "table.md")
  results.atomic_write_text(path, md)
  return [path] + paths
