"""What a multitask safety study runs: :class:`StudySpec` and the run names, each a finetuning set.

Run names (``StudySpec.runs``):

  task:T            finetune on task T's training split (T in taskdata.TASKS)
  task:T+safety     the same mixed with the multitask safety set (task-framed requests -> refusals)
  harmful:K         K harmful requests answered with content-free compliance (K in 10, 50, 100)
  harmful_mixed:K   the same K plus K other requests answered with refusals

and ``aligned`` (:data:`BASE`), the row of the model before finetuning.
"""

from __future__ import annotations

import dataclasses
import random

from jaxscape.datasets import registry, taskdata
from jaxscape.errors import InputError
from jaxscape.reports.study_table import BASE, own_task

DEFAULT_RUNS = (tuple(f"task:{t}" for t in taskdata.TASKS) + tuple(f"task:{t}+safety" for t in taskdata.TASKS)
                + tuple(f"harmful:{k}" for k in taskdata.FEW_SHOT_SIZES)
                + tuple(f"harmful_mixed:{k}" for k in taskdata.FEW_SHOT_SIZES))


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
  task = own_task(run)
  return [{"prompt": r["messages"][0]["content"], **r} for r in registry.load(f"finetune/{task}_train")[-n:]]


def seeds_of(name: str, spec: StudySpec) -> int:
  """How many finetuning seeds run ``name`` gets (``harmful_seeds`` or ``task_seeds``)."""
  return spec.task_seeds if name.startswith("task:") else spec.harmful_seeds
