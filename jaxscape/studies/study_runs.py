"""One run of a multitask study: finetune the aligned model on the run's set, measure the result (evaluations and
landscapes), repeat over finetuning seeds, attack a run's model, and judge a row with a classifier judge.

Each function here works on one row (``runs/<run>/``); ``jaxscape.studies.study`` orchestrates them.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any

import numpy as np

from jaxscape.core import results
from jaxscape.datasets import evaluation, registry, toydata
from jaxscape.reports.study_table import BASE, own_task
from jaxscape.studies.study_spec import StudySpec, run_records, seeds_of, validation_records

_LANDSCAPES = ("random_1d", "interp_1d")  # a row's landscape dirs under runs/<run>/


def _landscape(model, spec: StudySpec, kind: str, out_dir: str, *, model_b=None, steps: int,
               multiplier: float = 1.0, extra_steps: int = 0, progress: bool, write_views: bool = True) -> dict:
  from jaxscape.studies import landscape
  prompts = [r["prompt"] for r in registry.load("harmful_test")[:spec.landscape_prompts]]
  ls = landscape.LandscapeSpec(kind=kind, steps=steps, multiplier=multiplier, extra_steps=extra_steps,
                               seed=spec.direction_seed)
  summary = landscape.run_landscape(model, prompts, ls, out_dir=out_dir, model_b=model_b,
                                    decode=landscape.DecodeSpec(max_new_tokens=spec.landscape_new_tokens),
                                    options=landscape.ScanOptions(progress=progress, write_views=write_views))
  return {"coords": summary["coords"], "asr": summary["asr"], "visage": summary["visage"]}


def measure(model, spec: StudySpec, run_dir: str, *, base=None, progress: bool, write_views: bool = True) -> dict:
  """Evaluations and landscapes of one model (``base``: the aligned model, for the interpolation);
  ``write_views=False`` leaves the landscapes' views to the caller (written once, after judging)."""
  t0 = time.perf_counter()
  ev = evaluation.evaluate_tasks(model, samples=spec.eval_samples, max_new_tokens=spec.max_new_tokens)
  row = {"framed_asr": ev["framed_asr"], "task_accuracy": ev["task_accuracy"], "examples": ev["examples"],
         "eval_seconds": time.perf_counter() - t0, "framed_generations": ev["framed_generations"]}
  rnd = _landscape(model, spec, "1d_random", os.path.join(run_dir, "random_1d"), steps=spec.visage_steps,
                   multiplier=spec.visage_multiplier, progress=progress, write_views=write_views)
  row["visage"], row["random_1d"] = rnd["visage"], {"coords": rnd["coords"], "asr": rnd["asr"]}
  if base is not None:
    interp = _landscape(base, spec, "1d_interpolation", os.path.join(run_dir, "interp_1d"), model_b=model,
                        steps=spec.interp_steps, extra_steps=spec.interp_extra_steps, progress=progress,
                        write_views=write_views)
    row["interp_1d"] = {"coords": interp["coords"], "asr": interp["asr"], "visage": interp["visage"]}
  return row


def finetune_run(base, name: str, spec: StudySpec, tc, out_dir: str, *, seed: int, progress: bool):
  """Finetune ``base`` on run ``name`` with data-order ``seed``: (records, info, loaded model).

  Task runs stop early once their task is learned when ``spec.task_target`` > 0 (see StudySpec).
  """
  from jaxscape.core import convert, decode
  from jaxscape.studies import finetune
  early = name.startswith("task:") and spec.task_target > 0
  records = run_records(name, seed=seed, validation=spec.task_validation if early else 0)
  eval_fn = None
  if early:
    task, held = own_task(name), validation_records(name, spec.task_validation)

    def check(params, step):  # the task metric on the held-out training records
      del step
      gens = decode.generate_texts(dataclasses.replace(base, params=params), [r["prompt"] for r in held],
                                   max_new_tokens=spec.max_new_tokens)
      metric = evaluation.task_metric(task, held, gens)
      return {"validation_metric": metric, "stop": bool(metric >= spec.task_target)}

    eval_fn = check

  info = finetune.run_finetune(base, records, dataclasses.replace(tc, seed=seed), out_dir=out_dir,
                               lora_rank=spec.lora_rank, overwrite=True, orbax_copy=False, progress=progress,
                               eval_fn=eval_fn, eval_every=spec.task_check_every if early else 0)
  return records, info, convert.load_model(out_dir)



def average_over_seeds(row: dict, name: str, base, spec: StudySpec, tc, run_dir: str, *, progress: bool) -> None:
  """Finetune ``name`` again with seeds ``spec.seed + 1 ..``; the row's ASR (and task metrics) become means.

  Each extra model is evaluated (ASR per framing; task runs also their task metrics), then
  deleted; the per-seed values go to ``row["framed_asr_per_seed"]`` (and
  ``row["task_accuracy_per_seed"]``; keys: seeds as strings, the row's own seed first).
  """
  tasks = name.startswith("task:")
  per_seed = {str(spec.seed): row["framed_asr"]}
  task_per_seed = {str(spec.seed): row["task_accuracy"]}
  generations = {str(spec.seed): row["framed_generations"]}  # for classifier judges (judge_row)
  steps = {str(spec.seed): row["finetune"]["steps"]}  # they differ when task runs stop early
  for seed in range(spec.seed + 1, spec.seed + seeds_of(name, spec)):
    model_dir = os.path.join(run_dir, f"model_seed{seed}")
    _, info, tuned = finetune_run(base, name, spec, tc, model_dir, seed=seed, progress=progress)
    steps[str(seed)] = info["steps"]
    ev = evaluation.evaluate_tasks(tuned, samples=spec.eval_samples, max_new_tokens=spec.max_new_tokens,
                                 task_metrics=tasks)
    per_seed[str(seed)] = ev["framed_asr"]
    task_per_seed[str(seed)] = ev["task_accuracy"]
    generations[str(seed)] = ev["framed_generations"]
    shutil.rmtree(model_dir)
  row["framed_asr_per_seed"] = per_seed
  row["framed_generations_per_seed"] = generations
  row["framed_asr"] = mean_of(per_seed)
  row["finetune"]["steps_per_seed"] = steps
  if tasks:
    row["task_accuracy_per_seed"] = task_per_seed
    row["task_accuracy"] = mean_of(task_per_seed)


def mean_of(per_seed: dict[str, dict[str, float]]) -> dict[str, float]:
  """``{seed: {key: value}}`` -> ``{key: mean over seeds}``."""
  first = next(iter(per_seed.values()))
  return {k: float(np.mean([v[k] for v in per_seed.values()])) for k in first}


def attack(start: str, base, spec: StudySpec, tc, out_dir: str, rows: dict, *, progress: bool) -> dict:
  """ASR per framing after finetuning run ``start``'s model on ``spec.attack_run`` (seeds as harmful runs).

  The aligned model attacked with a run of the study in that run's setting is that run's row (the
  same finetunes), so it is reused. Otherwise: the start's model (a run's first seed's),
  finetuned ``harmful_seeds`` times for ``tc.num_steps`` steps.
  """
  from jaxscape.core import convert
  if start == BASE and spec.attack_run in rows and tc.num_steps == spec.harmful_steps:
    r = rows[spec.attack_run]
    per_seed = r.get("framed_asr_per_seed") or {str(spec.seed): r["framed_asr"]}
    return {"start": start, "run": spec.attack_run, "framed_asr_per_seed": per_seed, "framed_asr": mean_of(per_seed),
            "reused": spec.attack_run}
  model = base if start == BASE else convert.load_model(os.path.join(out_dir, "runs", results.slug(start), "model"))
  per_seed = {}
  for seed in range(spec.seed, spec.seed + spec.harmful_seeds):
    model_dir = os.path.join(out_dir, "attacks", f"{results.slug(start)}_seed{seed}")
    _, _, tuned = finetune_run(model, spec.attack_run, spec, tc, model_dir, seed=seed, progress=progress)
    ev = evaluation.evaluate_tasks(tuned, samples=spec.eval_samples, max_new_tokens=spec.max_new_tokens,
                                 task_metrics=False)
    per_seed[str(seed)] = ev["framed_asr"]
    shutil.rmtree(model_dir)
  return {"start": start, "run": spec.attack_run, "framed_asr_per_seed": per_seed, "framed_asr": mean_of(per_seed)}


def judge_row(row: dict, judge, spec: StudySpec, run_dir: str, *, progress: bool = False) -> dict:
  """A classifier judge's columns of a study row, stored in ``row["judges"][judge.name]`` (and returned).

  ``framed_asr``: judged ASR per framing of the row's held-out framed generations (the mean over
  finetuning seeds where the row has several; None for a row written before generations were
  stored); ``visage`` and ``random_1d`` / ``interp_1d`` ``{"asr", "visage"}``: the row's
  landscape dirs judged with ``jaxscape.studies.judge_store.judge_results`` (stored scores there are reused;
  their views are the caller's to rewrite).
  """
  from jaxscape.studies import judge as judge_lib
  from jaxscape.studies import judge_store
  records = toydata.framed_requests(registry.load("harmful_test")[:spec.eval_samples])
  gens = row.get("framed_generations_per_seed") or (
      {str(spec.seed): row["framed_generations"]} if row.get("framed_generations") else {})
  out: dict[str, Any] = {"framed_asr": None}
  per_seed = {}
  for seed, g in gens.items():
    p = judge_lib.score_pairs(judge, [r["prompt"] for r in records], g).p_unsafe
    per_seed[seed] = evaluation.framed_rate(records, judge_lib.labels_of(p, judge.spec.threshold).tolist())
  if per_seed:
    out["framed_asr"] = {f: float(np.mean([a[f] for a in per_seed.values()])) for f in next(iter(per_seed.values()))}
    if len(per_seed) > 1:
      out["framed_asr_per_seed"] = per_seed
  for sub in _LANDSCAPES:
    d = os.path.join(run_dir, sub)
    if results.has_scan(d):
      entry = judge_store.judge_results(d, judge, existing="reuse", progress=progress)
      out[sub] = {"asr": entry["asr"], "visage": entry["visage"]}
  out["visage"] = out.get("random_1d", {}).get("visage")
  row.setdefault("judges", {})[judge.name] = out
  return out


def judge_row_and_views(row: dict, judge, spec: StudySpec, run_dir: str, *, progress: bool) -> None:
  """:func:`judge_row`, then the views of the row's landscape dirs, with the judge merged in."""
  from jaxscape.studies import views
  judge_row(row, judge, spec, run_dir, progress=progress)
  for sub in _LANDSCAPES:
    if results.has_scan(os.path.join(run_dir, sub)):
      views.write_views(os.path.join(run_dir, sub))

