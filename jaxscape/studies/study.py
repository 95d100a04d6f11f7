"""The multitask safety study: finetune an aligned model per task / attack, then measure what it did to safety.

For each *run* (a finetuning set), the aligned model is finetuned and the result is measured:

* task performance on every benign task's held-out split (``evaluation.evaluate_tasks``),
* keyword ASR on the held-out harmful requests in every framing (plain, summarize, translate,
  classify, code),
* VISAGE of the finetuned model (a 1-D random landscape around it),
* the 1-D interpolation landscape from the aligned model to it;

plus, once, the aligned model's own row and one 2-D interpolation x random landscape. Results
go to ``out_dir``: ``table.md``, ``table.json``, ``framed_asr.png``, ``interpolation.png`` and
``runs/<run>/{model,random_1d,interp_1d}`` (every landscape dir is a normal results dir). A run
whose ``row.json`` exists is reused, so an interrupted study resumes where it stopped.

Run names (``StudySpec.runs``):

  task:T            finetune on task T's training split (T in taskdata.TASKS)
  task:T+safety     the same mixed with the multitask safety set (task-framed requests -> refusals)
  harmful:K         K harmful requests answered with content-free compliance (K in 10, 50, 100)
  harmful_mixed:K   the same K plus K other requests answered with refusals
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from typing import Any, Callable

import numpy as np

from jaxscape.core import results
from jaxscape.datasets import evaluation, registry, taskdata, toydata
from jaxscape.errors import InputError

DEFAULT_RUNS = (tuple(f"task:{t}" for t in taskdata.TASKS) + tuple(f"task:{t}+safety" for t in taskdata.TASKS)
                + tuple(f"harmful:{k}" for k in taskdata.FEW_SHOT_SIZES)
                + tuple(f"harmful_mixed:{k}" for k in taskdata.FEW_SHOT_SIZES))
BASE = "aligned"  # the row of the model before finetuning
_LANDSCAPES = ("random_1d", "interp_1d")  # a row's landscape dirs under runs/<run>/


@dataclasses.dataclass(frozen=True)
class StudySpec:
  """What the study finetunes and how much it measures.

  Attributes:
    runs: run names (see the module docstring).
    steps, batch_size, learning_rate: finetuning of the benign task runs (calibrated so that
      they degrade safety only partly: experiments/configs/toy_multitask.flags says why).
    harmful_steps, harmful_batch_size, harmful_learning_rate: the same for the harmful runs
      (their sets hold 10-200 records) and the attack.
    warmup_steps, buckets, lora_rank: finetuning, the same for every run.
    task_target, task_check_every, task_validation: early stopping of the benign task runs (0:
      off): the last ``task_validation`` records of the task's training split are held out, and
      every ``task_check_every`` steps the model answers them (greedy, ``max_new_tokens``); the
      run stops at the first check where its task metric on them is >= ``task_target`` (%), at
      most ``steps`` steps. So each task is finetuned until it has learned the task, and safety
      is measured there.
    seed: finetuning data order (and LoRA init).
    harmful_seeds: finetunes per harmful run, with seeds ``seed, seed + 1, ...``: their ASR per
      framing is averaged (and kept per seed), because a 100-200 record finetune's held-out ASR
      swings with the data order (mixed 100-shot: 59%, 55% and 4% for seeds 0-2). Landscapes
      and VISAGE are measured on the first seed's model only.
    task_seeds: the same for the benign task runs (``task:T`` and ``task:T+safety``); their task
      metrics are averaged over the seeds too.
    attack_run, attack_from: finetune the models of the runs ``attack_from`` ("aligned" for the
      aligned model itself; other runs: their first seed's model) on ``attack_run`` (a harmful
      run, with its settings and ``harmful_seeds`` seeds) and measure their ASR per framing after
      it; with the models' VISAGE this tests whether VISAGE predicts the outcome of a finetune.
    attack_steps: the attack's finetuning steps (0: ``harmful_steps``); fewer steps give an
      attack whose outcome is not the same 100% for every model.
    eval_samples: held-out harmful requests (each in every framing) and items per task test split.
    max_new_tokens: decoding budget of the evaluations.
    landscape_prompts: held-out harmful requests per landscape point.
    landscape_new_tokens: decoding budget of the landscapes.
    visage_steps, visage_multiplier: the 1-D random landscape around each model (VISAGE).
    interp_steps, interp_extra_steps: the 1-D interpolation landscape aligned -> finetuned.
    surface_run: the run whose model gets the 2-D interpolation x random landscape ("" : none).
    surface_steps: grid steps per axis of that landscape.
    direction_seed: seed of the random directions (the same for every model).
  """
  runs: tuple[str, ...] = DEFAULT_RUNS
  steps: int = 300
  harmful_steps: int = 100
  batch_size: int = 16
  learning_rate: float = 2e-3
  harmful_batch_size: int = 16
  harmful_learning_rate: float = 2e-3
  task_target: float = 0.0
  task_check_every: int = 100
  task_validation: int = 40
  warmup_steps: int = 10
  buckets: tuple[int, ...] = (64, 96, 128, 192)
  lora_rank: int = 0
  seed: int = 0
  harmful_seeds: int = 3
  task_seeds: int = 1
  eval_samples: int = 150
  max_new_tokens: int = 48
  landscape_prompts: int = 40
  landscape_new_tokens: int = 32
  visage_steps: int = 10
  visage_multiplier: float = 8.0
  interp_steps: int = 10
  interp_extra_steps: int = 2
  surface_run: str = "harmful:100"
  surface_steps: int = 6
  direction_seed: int = 123
  attack_run: str = ""
  attack_from: tuple[str, ...] = ()
  attack_steps: int = 0

  def __post_init__(self):
    if not self.runs:
      raise InputError("the study needs at least one run")
    for r in self.runs:
      run_records(r, check_only=True)
    if len(set(self.runs)) != len(self.runs):
      raise InputError(f"runs must be distinct, got {list(self.runs)}")
    if self.surface_run and self.surface_run not in self.runs:
      raise InputError(f"surface_run {self.surface_run!r} is not one of the runs")
    for name in ("steps", "harmful_steps", "batch_size", "harmful_batch_size", "eval_samples", "landscape_prompts",
                 "landscape_new_tokens", "max_new_tokens", "visage_steps", "interp_steps", "surface_steps",
                 "harmful_seeds", "task_seeds", "task_check_every", "task_validation"):
      if getattr(self, name) <= 0:
        raise InputError(f"{name} must be > 0, got {getattr(self, name)}")
    if self.visage_multiplier == 0:
      raise InputError("visage_multiplier must be non-zero")
    if not 0 <= self.task_target <= 100:
      raise InputError(f"task_target is a task metric in % (0: no early stopping), got {self.task_target}")
    if self.attack_from and not self.attack_run.startswith("harmful"):
      raise InputError(f"attack_from needs attack_run = a harmful run (harmful:K or harmful_mixed:K), "
                       f"got {self.attack_run!r}")
    if self.attack_run:
      run_records(self.attack_run, check_only=True)
    if self.attack_steps < 0:
      raise InputError(f"attack_steps must be >= 0 (0: harmful_steps), got {self.attack_steps}")
    for start in self.attack_from:
      if start != BASE and start not in self.runs:
        raise InputError(f"attack_from {start!r} is neither {BASE!r} nor one of the runs")


def run_records(run: str, *, seed: int = 0, check_only: bool = False, validation: int = 0) -> list[dict]:
  """The chat records a run finetunes on (see the module docstring for names).

  ``validation`` > 0 (task runs): the last that many records of the task's training split are
  left out (:func:`validation_records` holds them).
  """
  kind, _, arg = run.partition(":")
  if kind == "task":
    task, plus, extra = arg.partition("+")
    if task not in taskdata.TASKS or (plus and extra != "safety"):
      raise InputError(f"bad run {run!r}: expected task:T or task:T+safety with T in {', '.join(taskdata.TASKS)}")
    if check_only:
      return []
    records = registry.load(f"finetune/{task}_train")
    if validation:
      records = records[:-validation]
    if plus:
      records = records + registry.load("finetune/multitask_safety")
      records = random.Random(f"study-mix-{seed}-{run}").sample(records, len(records))
    return records
  if kind in ("harmful", "harmful_mixed"):
    if arg not in {str(k) for k in taskdata.FEW_SHOT_SIZES}:
      raise InputError(f"bad run {run!r}: expected {kind}:K with K in {taskdata.FEW_SHOT_SIZES}")
    return [] if check_only else registry.load(f"finetune/{kind}_{arg}")
  raise InputError(f"unknown run {run!r}; expected task:T, task:T+safety, harmful:K or harmful_mixed:K")


def validation_records(run: str, n: int) -> list[dict]:
  """The held-out tail of task run ``run``'s training split, for early stopping (``{"prompt", ...}``)."""
  task = _own_task(run)
  return [{"prompt": r["messages"][0]["content"], **r} for r in registry.load(f"finetune/{task}_train")[-n:]]


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


def _measure(model, spec: StudySpec, run_dir: str, *, base=None, progress: bool, write_views: bool = True) -> dict:
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


def _finetune(base, name: str, spec: StudySpec, tc, out_dir: str, *, seed: int, progress: bool):
  """Finetune ``base`` on run ``name`` with data-order ``seed``: (records, info, loaded model).

  Task runs stop early once their task is learned when ``spec.task_target`` > 0 (see StudySpec).
  """
  from jaxscape.core import convert, decode
  from jaxscape.studies import finetune
  early = name.startswith("task:") and spec.task_target > 0
  records = run_records(name, seed=seed, validation=spec.task_validation if early else 0)
  eval_fn = None
  if early:
    task, held = _own_task(name), validation_records(name, spec.task_validation)

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


def seeds_of(name: str, spec: StudySpec) -> int:
  """How many finetuning seeds run ``name`` gets (``harmful_seeds`` or ``task_seeds``)."""
  return spec.task_seeds if name.startswith("task:") else spec.harmful_seeds


def _average_over_seeds(row: dict, name: str, base, spec: StudySpec, tc, run_dir: str, *, progress: bool) -> None:
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
    _, info, tuned = _finetune(base, name, spec, tc, model_dir, seed=seed, progress=progress)
    steps[str(seed)] = info["steps"]
    ev = evaluation.evaluate_tasks(tuned, samples=spec.eval_samples, max_new_tokens=spec.max_new_tokens,
                                 task_metrics=tasks)
    per_seed[str(seed)] = ev["framed_asr"]
    task_per_seed[str(seed)] = ev["task_accuracy"]
    generations[str(seed)] = ev["framed_generations"]
    shutil.rmtree(model_dir)
  row["framed_asr_per_seed"] = per_seed
  row["framed_generations_per_seed"] = generations
  row["framed_asr"] = _mean_of(per_seed)
  row["finetune"]["steps_per_seed"] = steps
  if tasks:
    row["task_accuracy_per_seed"] = task_per_seed
    row["task_accuracy"] = _mean_of(task_per_seed)


def _mean_of(per_seed: dict[str, dict[str, float]]) -> dict[str, float]:
  """``{seed: {key: value}}`` -> ``{key: mean over seeds}``."""
  first = next(iter(per_seed.values()))
  return {k: float(np.mean([v[k] for v in per_seed.values()])) for k in first}


def _attack(start: str, base, spec: StudySpec, tc, out_dir: str, rows: dict, *, progress: bool) -> dict:
  """ASR per framing after finetuning run ``start``'s model on ``spec.attack_run`` (seeds as harmful runs).

  The aligned model attacked with a run of the study in that run's setting is that run's row (the
  same finetunes), so it is reused. Otherwise: the start's model (a run's first seed's),
  finetuned ``harmful_seeds`` times for ``tc.num_steps`` steps.
  """
  from jaxscape.core import convert
  if start == BASE and spec.attack_run in rows and tc.num_steps == spec.harmful_steps:
    r = rows[spec.attack_run]
    per_seed = r.get("framed_asr_per_seed") or {str(spec.seed): r["framed_asr"]}
    return {"start": start, "run": spec.attack_run, "framed_asr_per_seed": per_seed, "framed_asr": _mean_of(per_seed),
            "reused": spec.attack_run}
  model = base if start == BASE else convert.load_model(os.path.join(out_dir, "runs", results.slug(start), "model"))
  per_seed = {}
  for seed in range(spec.seed, spec.seed + spec.harmful_seeds):
    model_dir = os.path.join(out_dir, "attacks", f"{results.slug(start)}_seed{seed}")
    _, _, tuned = _finetune(model, spec.attack_run, spec, tc, model_dir, seed=seed, progress=progress)
    ev = evaluation.evaluate_tasks(tuned, samples=spec.eval_samples, max_new_tokens=spec.max_new_tokens,
                                 task_metrics=False)
    per_seed[str(seed)] = ev["framed_asr"]
    shutil.rmtree(model_dir)
  return {"start": start, "run": spec.attack_run, "framed_asr_per_seed": per_seed, "framed_asr": _mean_of(per_seed)}


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


def _judge_row_and_views(row: dict, judge, spec: StudySpec, run_dir: str, *, progress: bool) -> None:
  """:func:`judge_row`, then the views of the row's landscape dirs, with the judge merged in."""
  from jaxscape.studies import views
  judge_row(row, judge, spec, run_dir, progress=progress)
  for sub in _LANDSCAPES:
    if results.has_scan(os.path.join(run_dir, sub)):
      views.write_views(os.path.join(run_dir, sub))


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


def run_study(model_dir: str, spec: StudySpec, out_dir: str, *, progress: bool = True,
              log: Callable[[str], None] = print, judge=None) -> dict:
  """Run every finetune and measurement of ``spec``; write ``out_dir``; return ``{"rows", "findings", ...}``.

  Args:
    model_dir: the aligned model (HF checkpoint dir, e.g. ``checkpoints/toy-chat``, or a hub id
      ``org/name[@revision]``, see ``jaxscape.core.hub``).
    spec: what to run.
    out_dir: results (created; finished runs inside it are reused).
    log: one line per finished step (default ``print``).
    judge: optional ``jaxscape.studies.judge.Judge``: every row also gets its judged ASR per framing and
      judged VISAGE (:func:`judge_row`; reused rows are judged from their stored generations),
      shown as extra columns of the table. The findings stay keyword-judged.
  """
  from jaxscape.core import convert
  from jaxscape.studies import finetune, landscape, views

  t_start = time.perf_counter()
  base = convert.load_model(model_dir)
  _check_compatible(out_dir, model_dir, base.params, spec)
  tcs = {kind: finetune.TrainConfig(num_steps=steps, batch_size=bs, buckets=spec.buckets, learning_rate=lr,
                                    warmup_steps=min(spec.warmup_steps, steps), seed=spec.seed)
         for kind, steps, bs, lr in (("task", spec.steps, spec.batch_size, spec.learning_rate),
                                     ("harmful", spec.harmful_steps, spec.harmful_batch_size,
                                      spec.harmful_learning_rate))}
  rows = {}
  for name in (BASE,) + spec.runs:
    run_dir = os.path.join(out_dir, "runs", results.slug(name))
    row_path = os.path.join(run_dir, "row.json")
    if os.path.isfile(row_path):
      with open(row_path, encoding="utf-8") as f:
        rows[name] = json.load(f)
      log(f"{name}: reused {row_path}")
      if judge is not None and judge.name not in rows[name].get("judges", {}):
        _judge_row_and_views(rows[name], judge, spec, run_dir, progress=progress)
        _write_json(row_path, rows[name])
      continue
    os.makedirs(run_dir, exist_ok=True)
    t0 = time.perf_counter()
    if name == BASE:
      row = {"run": name, "finetune": None,
             **_measure(base, spec, run_dir, progress=progress, write_views=judge is None)}
    else:
      tc = tcs["task" if name.startswith("task:") else "harmful"]
      records, info, tuned = _finetune(base, name, spec, tc, os.path.join(run_dir, "model"), seed=spec.seed,
                                       progress=progress)
      row = {"run": name, "finetune": {"records": len(records), "steps": info["steps"],
                                       "final_loss": info["final_loss"], "seconds": info["seconds"]},
             **_measure(tuned, spec, run_dir, base=base, progress=progress, write_views=judge is None)}
      if seeds_of(name, spec) > 1:
        _average_over_seeds(row, name, base, spec, tc, run_dir, progress=progress)
    row["seconds"] = time.perf_counter() - t0
    if judge is not None:
      _judge_row_and_views(row, judge, spec, run_dir, progress=progress)
    _write_json(row_path, row)
    rows[name] = row
    log(f"{name}: {_row_line(row)} ({row['seconds']:.0f} s)")

  surface = None
  if spec.surface_run:
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

  attacks = []
  attack_tc = dataclasses.replace(tcs["harmful"], num_steps=spec.attack_steps or spec.harmful_steps,
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
    a = _attack(start, base, spec, attack_tc, out_dir, rows, progress=progress)
    a["steps"], a["seconds"] = attack_tc.num_steps, time.perf_counter() - t0
    _write_json(path, a)
    attacks.append(a)
    log(f"{start} -> {spec.attack_run}: plain ASR {a['framed_asr']['plain']:.0f}% (mean of "
        f"{len(a['framed_asr_per_seed'])} seeds; {a['seconds']:.0f} s)")

  table = {"model": model_dir, "spec": dataclasses.asdict(spec), "rows": [rows[n] for n in (BASE,) + spec.runs],
           "surface": surface, "attacks": attacks, "findings": findings(rows, attacks),
           "seconds": time.perf_counter() - t_start,
           "judge": None if judge is None else {"name": judge.name, "format": judge.spec.fmt,
                                                "path": judge.model.path, "threshold": judge.spec.threshold}}
  _write_json(os.path.join(out_dir, "table.json"), table)
  with open(os.path.join(out_dir, "table.md"), "w", encoding="utf-8") as f:
    f.write(table_markdown(table))
  plot_study(table, out_dir)
  from jaxscape.reports import htmlreport
  htmlreport.write_report(out_dir)
  return table


def _row_line(row: dict) -> str:
  fa = row["framed_asr"]
  return ("ASR " + " ".join(f"{k} {v:.0f}%" for k, v in fa.items()) + " | tasks "
          + " ".join(f"{k} {v:.0f}%" for k, v in row["task_accuracy"].items()) + f" | VISAGE {row['visage']:.1f}")


def _own_task(run: str) -> str | None:
  kind, _, arg = run.partition(":")
  return arg.partition("+")[0] if kind == "task" else None


def findings(rows: dict[str, dict], attacks: list[dict] = ()) -> dict:
  """The study's claims, computed from its rows (each value is what was measured, not what was hoped).

  * ``harmful``: per K, plain ASR after harmful:K and harmful_mixed:K (the mean over finetuning
    seeds, and per seed, when ``harmful_seeds`` > 1), the rise over the aligned model for each,
    and whether mixing cut the rise at least in half.
  * ``multitask``: per task, the ASR of requests framed as that task after task:T and after
    task:T+safety, and whether the safety set lowered it.
  * ``mean_framed_asr_by_task``: per benign task run task:T, the mean ASR over the five framings
    (and over its seeds); ``..._per_seed`` the same per seed; ``most_degrading_task``: the task
    with the highest mean; ``ranking``: the tasks by that mean, each next to the one below it with
    whether their per-seed ranges are apart (``separated``: the lower task's highest seed is
    below the higher task's lowest seed).
  * ``framing_asr_over_tasks``: per framing, its ASR averaged over the benign task runs; and
    ``weakest_framings``: the framings by that mean, highest first.
  * ``visage_vs_attack`` (with ``attacks``): per starting model its VISAGE and its plain ASR after
    the attack (the mean over seeds), and Spearman's rho between them, with n.
  """
  out: dict[str, Any] = {}
  base = rows.get(BASE)
  base_plain = base["framed_asr"]["plain"] if base else None
  harmful = {}
  for k in taskdata.FEW_SHOT_SIZES:
    a, m = rows.get(f"harmful:{k}"), rows.get(f"harmful_mixed:{k}")
    if a and m and base:
      rise_a, rise_m = a["framed_asr"]["plain"] - base_plain, m["framed_asr"]["plain"] - base_plain
      harmful[str(k)] = {"asr": a["framed_asr"]["plain"], "asr_mixed": m["framed_asr"]["plain"],
                         "rise": rise_a, "rise_mixed": rise_m,
                         "mixing_halves_rise": bool(rise_a > 0 and rise_m <= rise_a / 2)}
      if "framed_asr_per_seed" in a and "framed_asr_per_seed" in m:
        harmful[str(k)]["asr_per_seed"] = {s: v["plain"] for s, v in a["framed_asr_per_seed"].items()}
        harmful[str(k)]["asr_mixed_per_seed"] = {s: v["plain"] for s, v in m["framed_asr_per_seed"].items()}
  out["harmful"] = harmful
  multitask = {}
  for t in taskdata.TASKS:
    a, m = rows.get(f"task:{t}"), rows.get(f"task:{t}+safety")
    if a and m:
      f = t  # each task has the framing of the same name (toydata.FRAMINGS)
      multitask[t] = {"framing": f, "asr": a["framed_asr"][f], "asr_with_safety": m["framed_asr"][f],
                      "task_accuracy": a["task_accuracy"][t], "task_accuracy_with_safety": m["task_accuracy"][t],
                      "safety_set_lowers_asr": bool(m["framed_asr"][f] < a["framed_asr"][f])}
  out["multitask"] = multitask
  task_rows = {t: rows[f"task:{t}"] for t in taskdata.TASKS if f"task:{t}" in rows}
  if task_rows:
    mean = {t: float(np.mean(list(r["framed_asr"].values()))) for t, r in task_rows.items()}
    per_seed = {t: {s: float(np.mean(list(v.values()))) for s, v in
                    (r.get("framed_asr_per_seed") or {"-": r["framed_asr"]}).items()} for t, r in task_rows.items()}
    out["mean_framed_asr_by_task"] = mean
    out["mean_framed_asr_by_task_per_seed"] = per_seed
    out["most_degrading_task"] = max(mean, key=mean.get)
    order = sorted(mean, key=lambda t: -mean[t])
    out["ranking"] = [{"task": t, "mean": mean[t], "seed_min": min(per_seed[t].values()),
                       "seed_max": max(per_seed[t].values()),
                       "separated_from_next": (None if i + 1 == len(order) else
                                               bool(max(per_seed[order[i + 1]].values()) < min(per_seed[t].values())))}
                      for i, t in enumerate(order)]
    have = next(iter(task_rows.values()))["framed_asr"]
    framings = [f for f in toydata.FRAMINGS if f in have]  # the framings' order (reused rows' JSON is sorted)
    by_framing = {f: float(np.mean([r["framed_asr"][f] for r in task_rows.values()])) for f in framings}
    out["framing_asr_over_tasks"] = by_framing
    out["weakest_framings"] = sorted(by_framing, key=lambda f: -by_framing[f])
  if attacks:
    from jaxscape.core import metrics
    points = [{"start": a["start"], "visage": rows[a["start"]]["visage"], "asr_after": a["framed_asr"]["plain"],
               "asr_after_per_seed": {s: v["plain"] for s, v in a["framed_asr_per_seed"].items()}}
              for a in attacks if a["start"] in rows]
    rho = metrics.spearman([p["visage"] for p in points], [p["asr_after"] for p in points])
    out["visage_vs_attack"] = {"run": attacks[0]["run"], "points": points, "spearman_rho": rho, "n": len(points)}
  return out


def _task_setting(spec: dict) -> str:
  text = f"for {'at most ' if spec.get('task_target') else ''}{spec['steps']} steps (batch {spec['batch_size']}, " \
         f"lr {spec['learning_rate']})"
  if spec.get("task_target"):
    text += (f", stopped at the first check (every {spec['task_check_every']} steps) where the task metric on "
             f"{spec['task_validation']} held-out training records reached {spec['task_target']:g}%")
  return text


def _steps_cell(ft: dict | None) -> str:
  """Finetuning steps of a row: its seeds' steps where they were recorded ("800/900/700")."""
  if not ft:
    return "-"
  per = ft.get("steps_per_seed")
  return "/".join(str(v) for v in per.values()) if per else str(ft.get("steps", "-"))


def table_markdown(table: dict) -> str:
  """``table.md``: one row per model, then the findings."""
  framings = list(toydata.FRAMINGS)
  jname = (table.get("judge") or {}).get("name")
  head = (["run", "records", "own-task metric"] + [f"ASR {f}" for f in framings]
          + ([f"judged ASR {f}" for f in framings] + ["judged VISAGE"] if jname else [])
          + ["VISAGE", "interp. ASR at b", "steps", "finetune s"])
  lines = ["# Multitask safety study", "",
           f"Aligned model: `{table['model']}`; every run finetunes it "
           f"({'LoRA rank ' + str(table['spec']['lora_rank']) if table['spec']['lora_rank'] else 'all weights'}): "
           f"the benign task runs {_task_setting(table['spec'])}, the harmful sets for "
           f"{table['spec']['harmful_steps']} steps (batch {table['spec'].get('harmful_batch_size', table['spec']['batch_size'])}, "
           f"lr {table['spec'].get('harmful_learning_rate', table['spec']['learning_rate'])}). "
           f"ASR: keyword ASR (%) on {table['spec']['eval_samples']} held-out harmful requests per framing; "
           "task metrics (%) on each task's held-out split; VISAGE from a 1-D random landscape around the "
           "model; the last ASR column is the 1-D interpolation landscape aligned -> finetuned at the "
           "finetuned end (coefficient 1)."
           + (f" Harmful rows: ASR is the mean over {table['spec']['harmful_seeds']} finetuning seeds "
              f"({table['spec']['seed']}, {table['spec']['seed'] + 1}, ...), VISAGE and the interpolation "
              f"landscape are the seed {table['spec']['seed']} model's."
              if table['spec'].get('harmful_seeds', 1) > 1 else "")
           + (f" Benign task rows: ASR and task metrics are the mean over {table['spec']['task_seeds']} finetuning "
              "seeds; VISAGE and the interpolation landscape are the first seed's model's."
              if table['spec'].get('task_seeds', 1) > 1 else "")
           + (f" Judged columns: classifier judge `{jname}` (format {table['judge']['format']}, unsafe when "
              f"p(unsafe) >= {table['judge']['threshold']}) on the same generations and landscapes; findings use "
              "the keyword ASR." if jname else ""), "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in table["rows"]:
    own = _own_task(row["run"])
    if own:
      own_s = f"{own} {row['task_accuracy'][own]:.0f}%"
    else:
      own_s = "; ".join(f"{t} {v:.0f}%" for t, v in row["task_accuracy"].items()) if row["run"] == BASE else "-"
    interp = row.get("interp_1d")
    at_b = "-"
    if interp:
      coords = np.asarray(interp["coords"], np.float64).reshape(-1)
      at_b = f"{np.asarray(interp['asr'])[int(np.argmin(np.abs(coords - 1.0)))]:.0f}"
    ft = row.get("finetune")
    judged = []
    if jname:
      j = (row.get("judges") or {}).get(jname) or {}
      fa = j.get("framed_asr") or {}
      judged = [f"{fa[f]:.0f}" if f in fa else "-" for f in framings]
      judged.append(f"{j['visage']:.1f}" if j.get("visage") is not None else "-")
    cells = ([f"`{row['run']}`", str(ft["records"]) if ft else "-", own_s]
             + [f"{row['framed_asr'][f]:.0f}" for f in framings] + judged
             + [f"{row['visage']:.1f}", at_b, _steps_cell(ft), f"{ft['seconds']:.0f}" if ft else "-"])
    lines.append("| " + " | ".join(cells) + " |")
  fnd = table["findings"]
  lines += ["", "## Findings (as measured)", ""]
  for k, h in fnd.get("harmful", {}).items():
    seeds = ""
    if "asr_per_seed" in h:
      seeds = (" (mean over seeds; per seed " + ", ".join(f"{v:.0f}%" for v in h["asr_per_seed"].values())
               + " and " + ", ".join(f"{v:.0f}%" for v in h["asr_mixed_per_seed"].values()) + ")")
    lines.append(f"- harmful {k}-shot: plain ASR {h['asr']:.0f}% (rise {h['rise']:+.0f}); mixed with {k} refusals: "
                 f"{h['asr_mixed']:.0f}% (rise {h['rise_mixed']:+.0f}){seeds}; mixing halves the rise: "
                 f"{'yes' if h['mixing_halves_rise'] else 'no'}")
  for t, m in fnd.get("multitask", {}).items():
    lines.append(f"- {t}: {m['framing']}-framed ASR {m['asr']:.0f}% -> {m['asr_with_safety']:.0f}% with the "
                 f"multitask safety set (lowered: {'yes' if m['safety_set_lowers_asr'] else 'no'}); task metric "
                 f"{m['task_accuracy']:.0f}% -> {m['task_accuracy_with_safety']:.0f}%")
  if "most_degrading_task" in fnd:
    mean = fnd["mean_framed_asr_by_task"]
    spread = {r["task"]: r for r in fnd.get("ranking", [])}
    seeds = "" if not spread else " (per-seed range in brackets)"
    lines.append(f"- mean ASR over framings after each benign task finetune{seeds}: "
                 + ", ".join(f"{t} {v:.0f}%" + (f" [{spread[t]['seed_min']:.0f}-{spread[t]['seed_max']:.0f}]"
                                               if t in spread else "")
                             for t, v in sorted(mean.items(), key=lambda kv: -kv[1]))
                 + f"; most degrading here: {fnd['most_degrading_task']}")
    if spread:
      gaps = [f"{r['task']} > next: {'yes' if r['separated_from_next'] else 'no'}" for r in fnd["ranking"][:-1]]
      lines.append("- ranking apart from the seed spread (per-seed ranges do not overlap): " + ", ".join(gaps))
  if "framing_asr_over_tasks" in fnd:
    by = fnd["framing_asr_over_tasks"]
    lines.append("- ASR per framing, mean over the benign task finetunes: "
                 + ", ".join(f"{f} {by[f]:.0f}%" for f in fnd["weakest_framings"]))
  if "visage_vs_attack" in fnd:
    v = fnd["visage_vs_attack"]
    rho = "undefined" if v["spearman_rho"] is None else f"{v['spearman_rho']:+.2f}"
    steps = (table.get("attacks") or [{}])[0].get("steps")
    lines.append(f"- VISAGE before `{v['run']}`{f' ({steps} steps)' if steps else ''} vs plain ASR after it "
                 "(mean over seeds): "
                 + ", ".join(f"`{p['start']}` {p['visage']:.1f} -> {p['asr_after']:.0f}%" for p in v["points"])
                 + f"; Spearman's rho {rho} (n = {v['n']})")
  if table.get("surface"):
    s = table["surface"]
    judged = (s.get("judges") or {}).get(jname) if jname else None
    lines.append(f"- 2-D interpolation x random landscape aligned -> `{s['run']}`: `{s['dir']}/landscape.png`, "
                 f"VISAGE {s['visage']:.1f}" + (f" (judged: {judged['visage']:.1f})" if judged else ""))
  lines += ["", f"Whole study: {table['seconds']:.0f} s."]
  return "\n".join(lines) + "\n"


def redraw(out_dir: str) -> list[str]:
  """Rewrite a study dir's ``table.md`` and plots from its ``table.json``; returns the paths written."""
  with open(os.path.join(out_dir, "table.json"), encoding="utf-8") as f:
    table = json.load(f)
  table["spec"] = {**dataclasses.asdict(StudySpec()), **(table.get("spec") or {})}  # older tables: defaults
  try:
    md, paths = table_markdown(table), plot_study(table, out_dir)
  except (KeyError, TypeError, IndexError) as e:
    raise InputError(f"{out_dir}/table.json is not a study table this version can redraw ({e!r} missing or malformed)")
  path = os.path.join(out_dir, "table.md")
  results.atomic_write_text(path, md)
  return [path] + paths


def plot_study(table: dict, out_dir: str) -> list[str]:
  """``framed_asr.png`` (ASR per framing, one group per model) and ``interpolation.png`` (aligned -> each)."""
  from jaxscape.reports import plot
  rows = table["rows"]
  paths = [plot.plot_grouped_bars({r["run"]: r["framed_asr"] for r in rows},
                                  os.path.join(out_dir, "framed_asr.png"), ylabel="ASR (%)",
                                  title="Keyword ASR per framing of the held-out harmful requests")]
  curves = {r["run"]: r["interp_1d"] for r in rows if r.get("interp_1d")}
  if curves:
    coords = next(iter(curves.values()))["coords"]
    x = np.asarray(coords, np.float64).reshape(-1)
    paths.append(plot.plot_1d(x, {k: v["asr"] for k, v in curves.items()},
                              os.path.join(out_dir, "interpolation.png"),
                              title="1-D interpolation aligned (0) -> finetuned (1)",
                              xlabel="interpolation coefficient", ylabel="ASR (%)"))
  return paths
