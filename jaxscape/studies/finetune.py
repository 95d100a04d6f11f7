"""Supervised finetuning on chat data: the training loop (orbax training-state checkpoints, resume, early stopping)
and :func:`run_finetune`, which finetunes a model dir (full or LoRA) into an HF checkpoint dir.

Pipeline::

    records --chat_data.encode_chats--> examples --chat_data.batches--> [M, b, T] batches
      --train (train_step.make_train_step; train_state checks a resumed state)--> params
      --convert.save_model--> HF checkpoint dir (+ orbax copy)

Full finetuning trains the params themselves; LoRA trains adapters (:mod:`jaxscape.studies.lora`)
merged into the frozen base by a ``merge_fn`` (:mod:`jaxscape.studies.train_step`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp

from jaxscape.core import model as model_lib
from jaxscape.errors import InputError
from jaxscape.studies import chat_data, lora, train_state
from jaxscape.studies.chat_data import Example
from jaxscape.studies.train_step import MergeFn, TrainConfig, make_optimizer, make_train_step

PyTree = Any
EvalFn = Callable[[PyTree, int], dict]
_log = logging.getLogger("jaxscape")


# ----------------------------------------------------------------- the loop


def train(trainable: PyTree, cfg: model_lib.ModelConfig, examples: list[Example], tc: TrainConfig, *,
          pad_id: int, frozen: PyTree = None, merge_fn: MergeFn | None = None,
          eval_fn: EvalFn | None = None, eval_every: int = 0,
          progress: bool = True, checkpoint_dir: str | None = None, checkpoint_every: int = 0,
          keep_checkpoints: int = 2, fingerprint: dict | None = None) -> tuple[PyTree, dict]:
  """Train ``trainable`` for ``tc.num_steps`` steps; deterministic for a given ``tc.seed`` and initial params.

  With ``checkpoint_dir``, the training state (``trainable``, optimizer state, step, history)
  is saved with orbax every ``checkpoint_every`` steps and at the last step, keeping the
  newest ``keep_checkpoints``. If the dir already holds a state, training resumes from its
  newest one: the data order is fast-forwarded to that step, so a resumed run ends with
  params bit-identical to an uninterrupted one (same device kind). A state saved by a
  different run (see :func:`jaxscape.studies.train_state.train_fingerprint`) is refused.

  Args:
    trainable: params (full finetuning) or adapters (with ``frozen`` and ``merge_fn``).
    examples: from :func:`jaxscape.studies.chat_data.encode_chats`.
    pad_id: token id used for padding (masked out).
    eval_fn: ``eval_fn(params, step) -> dict`` called every ``eval_every`` steps (0: only at the
      end) with the merged params; results go to the history (JSON-serialisable values when
      checkpointing). A result with ``"stop": True`` ends training at that step (early
      stopping; ``history["stopped_at"]``), the state saved there as the last one.
    progress: tqdm bar on stderr showing the loss.
    fingerprint: extra JSON-serialisable facts a resumed run must share (e.g. LoRA settings).
  Returns:
    (trained ``trainable``, history ``{"loss": [per step], "evals": [...], "seconds",
    "compile_seconds", "tokens", "resumed_from", "stopped_at" (None: ran every step)}``);
    ``seconds`` counts this call only.
  Raises:
    ValueError: no examples, bad ``checkpoint_every``, or an incompatible saved state.
  """
  if not examples:
    raise ValueError("train needs at least one example")
  if checkpoint_every < 0 or keep_checkpoints < 1:
    raise InputError(f"need checkpoint_every >= 0 and keep_checkpoints >= 1, got {checkpoint_every}, "
                     f"{keep_checkpoints}")
  saver = _Checkpoints(checkpoint_dir, checkpoint_every, keep_checkpoints)
  trainable, opt_state, history, start = _initial_state(trainable, frozen, cfg, examples, tc, pad_id=pad_id,
                                                        saver=saver, fingerprint=fingerprint)
  step_fn = _cached_train_step(cfg, tc, merge_fn)
  data = chat_data.batches(examples, tc, pad_id, start=start)
  merged = (lambda t: t) if merge_fn is None else (lambda t: merge_fn(t, frozen))
  t0 = time.perf_counter()
  trainable, compile_s = _run_steps(step_fn, trainable, opt_state, frozen, data, history, tc, start=start,
                                    saver=saver, eval_fn=eval_fn, eval_every=eval_every, merged=merged,
                                    progress=progress)
  history["seconds"] = time.perf_counter() - t0
  history["compile_seconds"] = compile_s
  history["resumed_from"] = start
  if eval_fn is not None and history.get("stopped_at") is None:
    history["evals"].append({"step": tc.num_steps, **eval_fn(merged(trainable), tc.num_steps)})
  if not all(math.isfinite(x) for x in history["loss"]):
    _log.warning("non-finite training loss seen; lower the learning rate")
  return trainable, history


@dataclasses.dataclass
class _Checkpoints:
  """Where and how often :func:`train` saves its state (``dir`` None: never), and the run's fingerprint."""
  dir: str | None
  every: int
  keep: int
  fingerprint: dict | None = None

  def due(self, step: int, num_steps: int, stop: bool) -> bool:
    return self.dir is not None and (bool(self.every and step % self.every == 0) or step == num_steps or stop)

  def save(self, step: int, trainable: PyTree, opt_state: PyTree, history: dict) -> None:
    from jaxscape.core import checkpoint  # deferred: orbax is slow to import
    checkpoint.save_train_state(self.dir, step, {"trainable": trainable, "opt_state": opt_state},
                                {"fingerprint": self.fingerprint, "history": history}, keep=self.keep)


def _initial_state(trainable: PyTree, frozen: PyTree, cfg: model_lib.ModelConfig, examples: list[Example],
                   tc: TrainConfig, *, pad_id: int, saver: _Checkpoints,
                   fingerprint: dict | None) -> tuple[PyTree, PyTree, dict, int]:
  """``(trainable, opt_state, history, start step)``: fresh, or the newest state saved in ``saver.dir``.

  Sets ``saver.fingerprint``; a saved state of another fingerprint is refused.
  """
  # Copy: the step donates its inputs, and the caller may still hold the initial params.
  # Committed to their devices, like arrays restored from a checkpoint, so that a resumed
  # run in this process reuses the compiled step (committedness is part of the compile key).
  commit = lambda tree: jax.tree.map(lambda x: jax.device_put(x, x.sharding), tree)  # noqa: E731
  trainable = commit(jax.tree.map(lambda x: jnp.array(x, copy=True), trainable))
  opt_state = commit(make_optimizer(tc).init(trainable))
  history = {"loss": [], "evals": [], "tokens": 0.0, "stopped_at": None}
  if saver.dir is None:
    return trainable, opt_state, history, 0
  from jaxscape.core import checkpoint  # deferred: orbax is slow to import
  saver.fingerprint = train_state.train_fingerprint(trainable, frozen, cfg, examples, tc, pad_id=pad_id,
                                                    extra=fingerprint)
  found = checkpoint.latest_train_state(saver.dir)
  if found is None:
    return trainable, opt_state, history, 0
  start, meta = found
  train_state.check_fingerprint(meta["fingerprint"], saver.fingerprint, saver.dir)
  state = checkpoint.restore_train_state(
      saver.dir, start, checkpoint.abstract_like({"trainable": trainable, "opt_state": opt_state}))
  _log.warning("resuming from step %d of %d (%s)", start, tc.num_steps, saver.dir)
  return state["trainable"], state["opt_state"], meta["history"], start


def _run_steps(step_fn: Callable, trainable: PyTree, opt_state: PyTree, frozen: PyTree,
               data: Iterator[dict], history: dict, tc: TrainConfig, *, start: int, saver: _Checkpoints,
               eval_fn: EvalFn | None, eval_every: int, merged: Callable[[PyTree], PyTree],
               progress: bool) -> tuple[PyTree, float]:
  """Steps ``start + 1 ..`` to the last (or an early stop): ``(trainable, compile seconds of the first step)``.

  A step's stats are read (a host sync) only after the next step is dispatched, or before a save.
  """
  from tqdm.auto import tqdm  # deferred: only the loop needs it

  compile_s = 0.0
  pending = None  # stats of the previous step, read after the next one is dispatched
  bar = tqdm(total=tc.num_steps, initial=start, desc="train", disable=not progress, dynamic_ncols=True)
  try:
    last = start if history.get("stopped_at") is not None else tc.num_steps  # a state saved where it stopped
    for step in range(start + 1, last + 1):
      batch = next(data)
      ts = time.perf_counter()
      trainable, opt_state, stats = step_fn(trainable, opt_state, frozen, batch)
      if step == start + 1:
        jax.block_until_ready(stats)
        compile_s = time.perf_counter() - ts
      if pending is not None:
        _record(history, pending, bar)
      pending = stats
      stop = _evaluate(history, eval_fn, eval_every, step, tc.num_steps, lambda: merged(trainable))
      if saver.due(step, tc.num_steps, stop):
        _record(history, pending, bar)
        pending = None
        saver.save(step, trainable, opt_state, history)
      if stop:
        break
    if pending is not None:
      _record(history, pending, bar)
  finally:
    bar.close()
  return trainable, compile_s


def _evaluate(history: dict, eval_fn: EvalFn | None, eval_every: int, step: int, num_steps: int,
              params: Callable[[], PyTree]) -> bool:
  """Runs ``eval_fn`` when ``step`` is a check before the last; whether it asks to stop (then recorded)."""
  if eval_fn is None or not eval_every or step % eval_every != 0 or step >= num_steps:
    return False
  history["evals"].append({"step": step, **eval_fn(params(), step)})
  stop = bool(history["evals"][-1].get("stop"))
  if stop:
    history["stopped_at"] = step
  return stop


@functools.lru_cache(maxsize=8)
def _cached_train_step(cfg: model_lib.ModelConfig, tc: TrainConfig, merge_fn: MergeFn | None) -> Callable:
  """:func:`make_train_step` per (config, train config, merge function): a later :func:`train` with the
  same ones (a resumed run, a sweep over data) reuses the compiled step instead of compiling again."""
  return make_train_step(cfg, make_optimizer(tc), merge_fn=merge_fn)


def _record(history: dict, stats: dict, bar) -> None:
  loss = float(stats["loss"])
  history["loss"].append(loss)
  history["tokens"] += float(stats["tokens"])
  bar.update(1)
  bar.set_postfix(loss=f"{loss:.4f}", refresh=False)


# ----------------------------------------------------------------- finetune a model dir


def run_finetune(model: Any, records: list[dict], tc: TrainConfig, *, out_dir: str, lora_rank: int = 0,
                 lora_alpha: float | None = None, lora_targets: tuple[str, ...] = lora.DEFAULT_LORA_TARGETS,
                 checkpoint_every: int = 0, resume: bool = True, overwrite: bool = False, orbax_copy: bool = True,
                 keep_train_state: bool = False, eval_fn: EvalFn | None = None,
                 eval_every: int = 0, progress: bool = True, extra_info: dict | None = None) -> dict:
  """Finetune a model on chat records (full or LoRA) and write it as an HF checkpoint dir.

  Loads the model (a dir path or hub id, or a :class:`jaxscape.core.convert.Model`), encodes the chats with
  its chat template (assistant-only loss), trains (:func:`train`), and writes ``out_dir``:
  ``config.json``, ``model.safetensors``, tokenizer files, ``generation_config.json`` (the
  source's EOS ids), with ``orbax_copy`` the params under ``params/``, and last
  ``finetune_info.json`` (the returned info). LoRA writes the merged full weights. Both
  ``jaxscape.core.convert.load_model`` and ``transformers.AutoModelForCausalLM`` load the result.

  The training state is checkpointed in ``out_dir/.train_state`` every ``checkpoint_every``
  steps (0: only at the end); with ``resume``, an interrupted run in ``out_dir`` continues
  from its newest state (bit-identical final weights) and the state is deleted once the
  model is written (unless ``keep_train_state``).

  Args:
    records: ``[{"messages": [...]}, ...]`` (see :func:`jaxscape.studies.chat_data.load_chat_records`).
    tc: optimisation settings; ``tc.seed`` fixes the data order and the LoRA init.
    lora_rank: 0 trains every weight; r > 0 trains rank-r adapters on ``lora_targets``.
    lora_alpha: LoRA scale numerator (``scale = alpha / rank``; default ``2 * rank``).
    overwrite: replace an ``out_dir`` holding earlier results (never needed to resume).
    extra_info: more entries for ``finetune_info.json`` (e.g. the command line).
  Returns:
    ``{"out_dir", "source", "steps", "loss" [per step], "final_loss", "evals", "seconds"
    (whole call), "train_seconds", "compile_seconds", "resumed_from", "examples",
    "target_tokens", "trainable_params", "lora" (or None), "train_config"}``.
  Raises:
    ValueError: a non-empty ``out_dir`` (see ``overwrite``), ``out_dir`` equal to the model
      dir, a model without a chat template, buckets beyond the context window, bad records,
      or an incompatible saved training state.
  """
  from jaxscape.core import convert

  t0 = time.perf_counter()
  out_dir = os.path.abspath(out_dir)
  model, source = _model_to_finetune(model, out_dir, tc, resume=resume, overwrite=overwrite)
  examples = chat_data.encode_chats(model.tokenizer, records, max_length=tc.max_length)
  trainable, frozen, merge_fn, lora_info = _trainable_of(model, tc, lora_rank, lora_alpha, lora_targets)
  state_dir = os.path.join(out_dir, train_state.TRAIN_STATE_DIR)
  trained, history = train(trainable, model.cfg, examples, tc, pad_id=model.pad_id, frozen=frozen,
                           merge_fn=merge_fn, eval_fn=eval_fn, eval_every=eval_every, progress=progress,
                           checkpoint_dir=state_dir, checkpoint_every=checkpoint_every, fingerprint={"lora": lora_info})
  params = trained if merge_fn is None else merge_fn(trained, frozen)
  convert.save_model(params, model.cfg, model.tokenizer, out_dir, orbax_copy=orbax_copy, eos_ids=model.eos_ids)
  info = {"out_dir": out_dir, "source": source, "steps": len(history["loss"]), "loss": history["loss"],
          "stopped_at": history.get("stopped_at"),
          "final_loss": history["loss"][-1], "evals": history["evals"], "seconds": time.perf_counter() - t0,
          "train_seconds": history["seconds"], "compile_seconds": history["compile_seconds"],
          "resumed_from": history["resumed_from"], "examples": len(examples), "target_tokens": history["tokens"],
          "trainable_params": int(sum(x.size for x in jax.tree.leaves(trainable))), "lora": lora_info,
          "train_config": dataclasses.asdict(tc), **(extra_info or {})}
  tmp = os.path.join(out_dir, train_state.INFO_FILE + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2)
  os.replace(tmp, os.path.join(out_dir, train_state.INFO_FILE))  # the completion mark appears whole or not at all
  if not keep_train_state:
    shutil.rmtree(state_dir, ignore_errors=True)
  return info


def _model_to_finetune(model: Any, out_dir: str, tc: TrainConfig, *, resume: bool,
                       overwrite: bool) -> tuple[Any, str]:
  """``(model, source)``: the model, loaded when given as a path or hub id, after the checks that need no weights.

  Refuses ``out_dir`` when it is the model dir or holds other results, and a model without a chat
  template or whose context window is shorter than the longest bucket.
  """
  from jaxscape.core import convert, hub

  source = model if isinstance(model, str) else model.path
  # A hub id is no local path (it loads from the hub cache); checked before anything is downloaded.
  if source and not hub.is_hub_id(source) and os.path.realpath(source) == os.path.realpath(out_dir):
    raise InputError(f"output dir {out_dir} is the model dir; write the finetuned model elsewhere")
  train_state.prepare_out_dir(out_dir, resume=resume, overwrite=overwrite)
  if isinstance(model, str):
    model = convert.load_model(model)
  if getattr(model.tokenizer, "chat_template", None) is None:
    raise InputError(f"{source}: the tokenizer has no chat template, so chat records cannot be rendered")
  if tc.max_length > model.cfg.max_position_embeddings:
    raise InputError(f"longest bucket {tc.max_length} exceeds the model's context window "
                     f"{model.cfg.max_position_embeddings}")
  return model, source


def _trainable_of(model: Any, tc: TrainConfig, lora_rank: int, lora_alpha: float | None,
                  lora_targets: tuple[str, ...]) -> tuple[PyTree, PyTree, MergeFn | None, dict | None]:
  """``(trainable, frozen, merge_fn, lora info)``: the params themselves, or LoRA adapters over the frozen params."""
  if not lora_rank:
    return model.params, None, None, None
  alpha = float(lora_alpha if lora_alpha is not None else 2 * lora_rank)
  info = {"rank": lora_rank, "alpha": alpha, "targets": list(lora_targets)}
  adapters = lora.init_lora(model.params, model.cfg, lora_rank, jax.random.key(tc.seed), targets=tuple(lora_targets))
  return adapters, model.params, lora.lora_merge_fn(alpha / lora_rank), info
