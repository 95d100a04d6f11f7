"""Supervised finetuning on chat data: assistant-only loss, AdamW + warm-up/cosine, one jitted step with accumulation.

Pipeline::

    JSONL --load_chat_records--> records [{"messages": [...]}]
      --encode_chats--> Example(ids, loss_mask) per record
      --batches--> {"tokens", "mask", "loss_mask"}: [M, b, T] (M micro-batches of b rows, T a length bucket)
      --train (make_train_step; orbax training-state checkpoints, resume)--> params
      --save_model--> HF checkpoint dir (+ orbax copy)

:func:`run_finetune` does all of it for a model dir. The train step differentiates a loss
over a *trainable* pytree. Full finetuning trains the params themselves; LoRA passes its
adapters (:func:`init_lora`) as ``trainable``, the frozen base as ``frozen`` and
:func:`merge_lora` as ``merge_fn(trainable, frozen) -> params`` (the seam of STYLE.md §2).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import time
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxscape.core import model as model_lib
from jaxscape.core.convert import save_model  # noqa: F401 - written here first; callers use finetune.save_model
from jaxscape.errors import InputError

PyTree = Any
MergeFn = Callable[[PyTree, PyTree], PyTree]
_log = logging.getLogger("jaxscape")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation and batching settings (frozen: safe to close over in jitted code).

  Attributes:
    num_steps: optimizer steps.
    batch_size: sequences per optimizer step (split into ``micro_batches``).
    micro_batches: gradient-accumulation micro-batches per step (``lax.scan`` inside the step).
    buckets: padded sequence lengths; an example goes to the shortest bucket that holds it,
      longer ones are truncated to the last bucket. One compiled step per bucket used.
    learning_rate: peak rate after ``warmup_steps`` of linear warm-up, then cosine decay to
      ``learning_rate * end_lr_ratio`` at ``num_steps``.
    weight_decay: AdamW decay, applied to matrices only (not norm scales or biases).
    grad_clip: global-norm clip (0: off).
    seed: data order (and the LoRA init in :func:`run_finetune`; :func:`train` takes params as given).
  """
  num_steps: int = 1000
  batch_size: int = 64
  micro_batches: int = 1
  buckets: tuple[int, ...] = (32, 64, 128)
  learning_rate: float = 1e-3
  warmup_steps: int = 50
  end_lr_ratio: float = 0.1
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-9
  grad_clip: float = 1.0
  seed: int = 0

  def __post_init__(self):
    if self.num_steps <= 0:
      raise InputError(f"num_steps must be > 0, got {self.num_steps}")
    if self.micro_batches <= 0 or self.batch_size <= 0 or self.batch_size % self.micro_batches:
      raise InputError(f"batch_size ({self.batch_size}) must be a positive multiple of micro_batches "
                       f"({self.micro_batches})")
    if not self.buckets or any(b <= 1 for b in self.buckets) or list(self.buckets) != sorted(set(self.buckets)):
      raise InputError(f"buckets must be increasing lengths > 1, got {self.buckets}")
    if self.learning_rate <= 0 or not 0 <= self.warmup_steps <= self.num_steps:
      raise InputError(f"need learning_rate > 0 and 0 <= warmup_steps <= num_steps, got learning_rate="
                       f"{self.learning_rate}, warmup_steps={self.warmup_steps}, num_steps={self.num_steps}")

  @property
  def max_length(self) -> int:
    return self.buckets[-1]


class Example(NamedTuple):
  """One encoded conversation: ``ids`` int32[L] and ``loss_mask`` bool[L] (True: token is a target)."""
  ids: np.ndarray
  loss_mask: np.ndarray


# ----------------------------------------------------------------- encoding


def _render(tokenizer, messages, *, generation_prompt: bool) -> str:
  import jinja2  # noqa: PLC0415 - light; transformers has imported it already
  try:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
  except jinja2.TemplateError as e:  # the template's raise_exception, e.g. a role it does not take
    raise InputError(f"the tokenizer's chat template refuses this chat ({e})") from None


def _check_messages(messages: Any, where: str) -> None:
  if not isinstance(messages, list) or not messages:
    raise InputError(f"{where}: \"messages\" must be a non-empty list, got {messages!r:.80}")
  for m in messages:
    if not (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str)):
      raise InputError(f"{where}: bad message {m!r:.80} (need role system/user/assistant and string content)")
  if not any(m["role"] == "assistant" for m in messages):
    raise InputError(f"{where}: no assistant message to learn from")


def encode_chat(tokenizer, messages: list[dict], *, max_length: int | None = None) -> Example:
  """Token ids of a chat rendered by the tokenizer's chat template, and its assistant-only loss mask.

  The text is rendered once and tokenized once (so ids are exactly what the template
  gives); a token is a target when its characters fall in an assistant turn, i.e. between
  the render of the turns before it (with the generation prompt) and the render up to and
  including it. The template's end-of-turn token (EOS) is therefore a target too.

  Args:
    messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``.
    max_length: keep the first ``max_length`` tokens.
  Returns:
    :class:`Example` with ``ids`` int32[L] and ``loss_mask`` bool[L].
  Raises:
    ValueError: malformed messages, or a template whose renders are not prefixes of each other.
  """
  _check_messages(messages, "chat")
  text = _render(tokenizer, messages, generation_prompt=False)
  spans = []
  for k, m in enumerate(messages):
    if m["role"] != "assistant":
      continue
    before = _render(tokenizer, messages[:k], generation_prompt=True) if k else ""
    upto = _render(tokenizer, messages[:k + 1], generation_prompt=False)
    if not (upto.startswith(before) and text.startswith(upto)):
      raise InputError("the chat template does not render conversations as prefixes of each other; cannot "
                       f"locate assistant turn {k}")
    spans.append((len(before), len(upto)))
  enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
  ids = np.asarray(enc["input_ids"], np.int32)
  offsets = np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2)
  start, end = offsets[:, 0], offsets[:, 1]
  mask = np.zeros(len(ids), bool)
  for a, b in spans:
    # A token belongs to the turn when it overlaps it (zero-width tokens: when they start in it).
    mask |= np.where(end > start, (end > a) & (start < b), (start >= a) & (start < b))
  if max_length is not None:
    ids, mask = ids[:max_length], mask[:max_length]
  return Example(ids=ids, loss_mask=mask)


def encode_chats(tokenizer, records: list[dict], *, max_length: int) -> list[Example]:
  """:func:`encode_chat` over ``{"messages": [...]}`` records; drops (and logs) those with no target left."""
  out, truncated, dropped = [], 0, 0
  for n, r in enumerate(records):
    if not isinstance(r, dict) or "messages" not in r:
      raise InputError(f"record {n}: expected {{\"messages\": [...]}}, got {str(r)[:80]!r}")
    try:
      ex = encode_chat(tokenizer, r["messages"])
    except InputError as e:
      raise InputError(f"record {n}: {e}") from None
    if len(ex.ids) > max_length:
      truncated += 1
      ex = Example(ex.ids[:max_length], ex.loss_mask[:max_length])
    if not ex.loss_mask[1:].any():
      dropped += 1
      continue
    out.append(ex)
  if truncated or dropped:
    _log.warning("%d of %d conversations truncated to %d tokens, %d dropped (no assistant token left)",
                 truncated, len(records), max_length, dropped)
  if not out:
    raise InputError("no trainable conversations (every one lost its assistant tokens)")
  return out


def load_chat_records(source: str) -> list[dict]:
  """Chat records ``{"messages": [{"role", "content"}, ...]}`` from a JSONL file or ``builtin:NAME``.

  One JSON object a line (blank lines skipped). A line holds either ``"messages"`` or, as the
  built-in sets do, ``"prompt"`` and ``"response"`` strings (one user and one assistant turn,
  with an optional ``"system"`` string).

  Raises:
    ValueError: missing or empty file, or ``PATH:LINE: ...`` for the first malformed line
      (invalid JSON, neither form, bad roles or contents, no assistant turn).
  """
  from jaxscape.datasets import sources

  path = sources.resolve(source)
  if not os.path.isfile(path):
    raise InputError(f"data file {path} does not exist")
  records = []
  try:
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        where = f"{path}:{n}"
        try:
          r = json.loads(line)
        except json.JSONDecodeError as e:
          raise InputError(f"{where}: not valid JSON ({e.msg})") from None
        if isinstance(r, dict) and "messages" not in r and isinstance(r.get("prompt"), str) \
            and isinstance(r.get("response"), str):
          system = [{"role": "system", "content": r["system"]}] if isinstance(r.get("system"), str) else []
          r = {"messages": system + [{"role": "user", "content": r["prompt"]},
                                     {"role": "assistant", "content": r["response"]}]}
        if not isinstance(r, dict) or "messages" not in r:
          raise InputError(f"{where}: expected an object with \"messages\" (or \"prompt\" and \"response\"), "
                           f"got {line.strip()[:80]!r}")
        _check_messages(r["messages"], where)
        records.append({"messages": r["messages"]})
  except UnicodeDecodeError:
    raise InputError(f"{path}: not UTF-8 text") from None
  if not records:
    raise InputError(f"data file {path} holds no records")
  return records


# ----------------------------------------------------------------- batching


def pad_batch(examples: list[Example], length: int, pad_id: int) -> dict[str, np.ndarray]:
  """Left-pad examples to ``length``: ``{"tokens" int32[B, T], "mask" bool[B, T], "loss_mask" bool[B, T]}``.

  Left padding, as the model expects (positions come from ``mask``). ``loss_mask[b, t]``
  marks target tokens, predicted from position ``t - 1``.
  """
  B = len(examples)
  tokens = np.full((B, length), pad_id, np.int32)
  mask = np.zeros((B, length), bool)
  loss_mask = np.zeros((B, length), bool)
  for r, ex in enumerate(examples):
    n = len(ex.ids)
    if n > length:
      raise ValueError(f"example {r} has {n} tokens, more than the padded length {length}")
    tokens[r, length - n:] = ex.ids
    mask[r, length - n:] = True
    loss_mask[r, length - n:] = ex.loss_mask
  return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}


def bucket_of(n: int, buckets: tuple[int, ...]) -> int:
  """The shortest bucket length >= ``n`` (the last bucket if none)."""
  for b in buckets:
    if n <= b:
      return b
  return buckets[-1]


def batches(examples: list[Example], tc: TrainConfig, pad_id: int, *,
            start: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Endless deterministic batches ``{"tokens", "mask", "loss_mask"}: [M, b, T]`` (M micro-batches).

  Each epoch (seeded by ``(tc.seed, epoch)``) shuffles every length bucket, cuts it into
  full batches (a bucket's last partial batch is filled with other examples of the same
  bucket, drawn at random), and visits the batches in a random order.

  Args:
    start: skip the first ``start`` batches (resuming at step ``start``): only the epochs'
      index shuffles are replayed, no batch is padded.
  """
  by_bucket: dict[int, list[int]] = {}
  for i, ex in enumerate(examples):
    by_bucket.setdefault(bucket_of(len(ex.ids), tc.buckets), []).append(i)
  B, M = tc.batch_size, tc.micro_batches
  epoch, seen = 0, 0
  while True:
    rng = np.random.default_rng([tc.seed, epoch])
    plan = []
    for length in sorted(by_bucket):
      idx = np.asarray(by_bucket[length])[rng.permutation(len(by_bucket[length]))]
      short = -len(idx) % B
      if short:
        idx = np.concatenate([idx, rng.choice(idx, short, replace=short > len(idx))])
      plan += [(length, idx[s:s + B]) for s in range(0, len(idx), B)]
    for k in rng.permutation(len(plan)):
      seen += 1
      if seen <= start:
        continue
      length, idx = plan[k]
      batch = pad_batch([examples[i] for i in idx], length, pad_id)
      yield {name: a.reshape((M, B // M) + a.shape[1:]) for name, a in batch.items()}
    epoch += 1


# ----------------------------------------------------------------- loss and optimizer


def masked_cross_entropy(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Summed next-token cross-entropy over target tokens, and their count.

  Args:
    logits: [B, T, V] float32 (position t predicts token t+1).
    tokens: [B, T] int32.
    loss_mask: [B, T] bool, True where ``tokens[b, t]`` is a target.
  Returns:
    (loss_sum float32 scalar, count float32 scalar): mean loss is ``loss_sum / count``.
  """
  ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32), tokens[:, 1:])
  w = loss_mask[:, 1:].astype(jnp.float32)
  return jnp.sum(ce * w), jnp.sum(w)


def lm_loss(trainable: PyTree, frozen: PyTree, batch: dict[str, jax.Array], *, cfg: model_lib.ModelConfig,
            merge_fn: MergeFn | None = None) -> tuple[jax.Array, jax.Array]:
  """(loss_sum, count) of a batch ``{"tokens", "mask", "loss_mask"}: [b, T]`` under ``merge_fn(trainable, frozen)``."""
  params = trainable if merge_fn is None else merge_fn(trainable, frozen)
  logits = model_lib.forward(params, batch["tokens"], cfg=cfg, mask=batch["mask"])
  return masked_cross_entropy(logits, batch["tokens"], batch["loss_mask"])


def learning_rate_schedule(tc: TrainConfig) -> optax.Schedule:
  """Linear warm-up from 0 to ``tc.learning_rate``, cosine decay to ``end_lr_ratio`` of it at ``num_steps``."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=tc.learning_rate, warmup_steps=tc.warmup_steps,
      decay_steps=max(tc.num_steps, tc.warmup_steps + 1), end_value=tc.learning_rate * tc.end_lr_ratio)


def _is_matrix(path, x) -> bool:
  """Whether a params (or adapter) leaf is a matrix per layer: rank >= 2 without a stacked layer axis."""
  keys = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
  stacked = len(keys) > 1 and keys[0] == "layers" and not isinstance(keys[1], int)
  return jnp.ndim(x) - int(stacked) >= 2


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW on the :func:`learning_rate_schedule`; decay on matrices only.

  A matrix is a leaf of rank >= 2 besides the layer axis of stacked leaves (``layers/...``), so
  stacked norm scales [L, D] and biases [L, F] are not decayed, stacked kernels [L, in, out] are.
  """
  decay_mask = lambda tree: jax.tree_util.tree_map_with_path(_is_matrix, tree)  # noqa: E731
  adamw = optax.adamw(learning_rate_schedule(tc), b1=tc.b1, b2=tc.b2, eps=tc.eps, weight_decay=tc.weight_decay,
                      mask=decay_mask)
  return optax.chain(optax.clip_by_global_norm(tc.grad_clip), adamw) if tc.grad_clip > 0 else adamw


def make_train_step(cfg: model_lib.ModelConfig, optimizer: optax.GradientTransformation, *,
                    merge_fn: MergeFn | None = None) -> Callable:
  """One jitted optimizer step with gradient accumulation over micro-batches.

  Returns ``step(trainable, opt_state, frozen, batch) -> (trainable, opt_state, stats)`` where
  ``batch`` holds ``[M, b, T]`` arrays; a ``lax.scan`` sums loss and gradients over the M
  micro-batches and divides by the total target-token count, so the update equals one
  batch of ``M*b`` rows. ``stats = {"loss", "tokens", "grad_norm"}`` (float32 scalars).
  ``trainable`` and ``opt_state`` are donated. Build it once; it compiles once per bucket length.
  """
  grad_fn = jax.value_and_grad(functools.partial(lm_loss, cfg=cfg, merge_fn=merge_fn), has_aux=True)

  def step(trainable, opt_state, frozen, batch):
    def micro(carry, mb):
      g_acc, l_acc, n_acc = carry
      (loss_sum, count), g = grad_fn(trainable, frozen, mb)
      return (jax.tree.map(jnp.add, g_acc, g), l_acc + loss_sum, n_acc + count), None

    zeros = jax.tree.map(jnp.zeros_like, trainable)
    (g, loss_sum, count), _ = jax.lax.scan(micro, (zeros, jnp.float32(0), jnp.float32(0)), batch)
    denom = jnp.maximum(count, 1.0)
    g = jax.tree.map(lambda x: x / denom, g)
    updates, opt_state = optimizer.update(g, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    return trainable, opt_state, {"loss": loss_sum / denom, "tokens": count, "grad_norm": optax.tree.norm(g)}

  return jax.jit(step, donate_argnums=(0, 1))


# ----------------------------------------------------------------- LoRA

# HF projection name -> (block, our name) under params["layers"] (jaxscape.core.model's stacked layout).
LORA_TARGETS = {"q_proj": ("attn", "q"), "k_proj": ("attn", "k"), "v_proj": ("attn", "v"), "o_proj": ("attn", "o"),
                "gate_proj": ("mlp", "gate"), "up_proj": ("mlp", "up"), "down_proj": ("mlp", "down")}
DEFAULT_LORA_TARGETS = tuple(LORA_TARGETS)


def init_lora(params: PyTree, cfg: model_lib.ModelConfig, rank: int, key: jax.Array, *,
              targets: tuple[str, ...] = DEFAULT_LORA_TARGETS) -> PyTree:
  """Zero-effect LoRA adapters for the ``targets`` kernels of every layer: ``ΔW = scale · A @ B``.

  Args:
    params: the base params, layers stacked (only their kernel shapes are read).
    rank: adapter rank r >= 1.
    key: PRNG key; the A of (layer i, target t) draws from ``fold_in(key, i * 7 + index of t in
      LORA_TARGETS)``, so a draw does not depend on which other targets are chosen (the same
      draws as when the adapters were one dict per layer).
    targets: HF projection names, keys of :data:`LORA_TARGETS`.
  Returns:
    ``{"layers": {"attn": {"q": {"a": float32[L, in, r], "b": float32[L, r, out]}, ...},
    "mlp": {...}}}`` (stacked like the params) with ``a ~ N(0, 1/in)``, so ``x @ a`` keeps the
    scale of ``x``, and ``b = 0``, so :func:`merge_lora` starts at the base exactly.
  """
  if rank < 1:
    raise InputError(f"LoRA rank must be >= 1, got {rank}")
  unknown = [t for t in targets if t not in LORA_TARGETS]
  if unknown or not targets:
    raise InputError(f"LoRA targets must be a non-empty subset of {', '.join(LORA_TARGETS)}, got {targets}")
  layers = params["layers"]
  if isinstance(layers, (list, tuple)):
    raise ValueError("init_lora needs params with stacked layers (jaxscape.core.convert.stack_layers)")
  names = list(LORA_TARGETS)
  L = cfg.num_layers
  adapters: dict = {}
  for t in targets:
    block, name = LORA_TARGETS[t]
    shape = layers[block][name]["kernel"].shape
    assert shape[0] == L, (shape, L)
    n_in, n_out = shape[1:]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(np.arange(L) * len(names) + names.index(t))
    # Per layer its own key, as a per-layer draw would; the Gaussian bits do not depend on the batching.
    a = jax.vmap(lambda k: jax.random.normal(k, (n_in, rank), jnp.float32))(keys) / np.float32(math.sqrt(n_in))
    adapters.setdefault(block, {})[name] = {"a": a, "b": jnp.zeros((L, rank, n_out), jnp.float32)}
  return {"layers": adapters}


def merge_lora(adapters: PyTree, frozen: PyTree, *, scale: float = 1.0) -> PyTree:
  """Base params with each adapted kernel replaced by ``W + scale · A @ B`` (pure; the ``merge_fn`` seam).

  Stacked: ``A @ B`` is one batched matmul over the layers, [L, in, r] x [L, r, out]. The sum is
  formed in float32 (``A @ B`` at highest matmul precision) and cast once to ``W``'s dtype, so
  zero ``B`` gives ``W`` back exactly. Leaves not adapted are shared, not copied.

  Args:
    adapters: from :func:`init_lora` (or trained).
    frozen: the base params (layers stacked).
    scale: ``alpha / rank``.
  Returns:
    A params pytree of the base's layout and dtypes.
  """
  layers = dict(frozen["layers"])
  for block, entries in adapters["layers"].items():
    bp = dict(layers[block])
    for name, ab in entries.items():
      w = bp[name]["kernel"]
      delta = jnp.matmul(ab["a"].astype(jnp.float32), ab["b"].astype(jnp.float32),
                         precision=jax.lax.Precision.HIGHEST)  # [L, in, out]
      bp[name] = {**bp[name], "kernel": (w.astype(jnp.float32) + np.float32(scale) * delta).astype(w.dtype)}
    layers[block] = bp
  return {**frozen, "layers": layers}


# ----------------------------------------------------------------- the loop


def train(trainable: PyTree, cfg: model_lib.ModelConfig, examples: list[Example], tc: TrainConfig, *,
          pad_id: int, frozen: PyTree = None, merge_fn: MergeFn | None = None,
          eval_fn: Callable[[PyTree, int], dict] | None = None, eval_every: int = 0,
          progress: bool = True, checkpoint_dir: str | None = None, checkpoint_every: int = 0,
          keep_checkpoints: int = 2, fingerprint: dict | None = None) -> tuple[PyTree, dict]:
  """Train ``trainable`` for ``tc.num_steps`` steps; deterministic for a given ``tc.seed`` and initial params.

  With ``checkpoint_dir``, the training state (``trainable``, optimizer state, step, history)
  is saved with orbax every ``checkpoint_every`` steps and at the last step, keeping the
  newest ``keep_checkpoints``. If the dir already holds a state, training resumes from its
  newest one: the data order is fast-forwarded to that step, so a resumed run ends with
  params bit-identical to an uninterrupted one (same device kind). A state saved by a
  different run (see :func:`train_fingerprint`) is refused.

  Args:
    trainable: params (full finetuning) or adapters (with ``frozen`` and ``merge_fn``).
    examples: from :func:`encode_chats`.
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
  from tqdm.auto import tqdm  # deferred: only the loop needs it

  from jaxscape.core import checkpoint  # deferred: orbax is slow to import

  if not examples:
    raise ValueError("train needs at least one example")
  if checkpoint_every < 0 or keep_checkpoints < 1:
    raise InputError(f"need checkpoint_every >= 0 and keep_checkpoints >= 1, got {checkpoint_every}, "
                     f"{keep_checkpoints}")
  optimizer = make_optimizer(tc)
  step_fn = _cached_train_step(cfg, tc, merge_fn)
  # Copy: the step donates its inputs, and the caller may still hold the initial params.
  # Committed to their devices, like arrays restored from a checkpoint, so that a resumed
  # run in this process reuses the compiled step (committedness is part of the compile key).
  commit = lambda tree: jax.tree.map(lambda x: jax.device_put(x, x.sharding), tree)  # noqa: E731
  trainable = commit(jax.tree.map(lambda x: jnp.array(x, copy=True), trainable))
  opt_state = commit(optimizer.init(trainable))
  history = {"loss": [], "evals": [], "tokens": 0.0, "stopped_at": None}
  start = 0
  if checkpoint_dir is not None:
    prints = train_fingerprint(trainable, frozen, cfg, examples, tc, pad_id=pad_id, extra=fingerprint)
    found = checkpoint.latest_train_state(checkpoint_dir)
    if found is not None:
      start, meta = found
      _check_fingerprint(meta["fingerprint"], prints, checkpoint_dir)
      state = checkpoint.restore_train_state(
          checkpoint_dir, start, checkpoint.abstract_like({"trainable": trainable, "opt_state": opt_state}))
      trainable, opt_state, history = state["trainable"], state["opt_state"], meta["history"]
      _log.warning("resuming from step %d of %d (%s)", start, tc.num_steps, checkpoint_dir)
  data = batches(examples, tc, pad_id, start=start)
  merged = (lambda t: t) if merge_fn is None else (lambda t: merge_fn(t, frozen))
  t0 = time.perf_counter()
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
      stop = False
      if eval_fn is not None and eval_every and step % eval_every == 0 and step < tc.num_steps:
        history["evals"].append({"step": step, **eval_fn(merged(trainable), step)})
        stop = bool(history["evals"][-1].get("stop"))
        if stop:
          history["stopped_at"] = step
      if checkpoint_dir is not None and ((checkpoint_every and step % checkpoint_every == 0)
                                         or step == tc.num_steps or stop):
        _record(history, pending, bar)
        pending = None
        checkpoint.save_train_state(checkpoint_dir, step, {"trainable": trainable, "opt_state": opt_state},
                                    {"fingerprint": prints, "history": history}, keep=keep_checkpoints)
      if stop:
        break
    if pending is not None:
      _record(history, pending, bar)
  finally:
    bar.close()
  history["seconds"] = time.perf_counter() - t0
  history["compile_seconds"] = compile_s
  history["resumed_from"] = start
  if eval_fn is not None and history.get("stopped_at") is None:
    history["evals"].append({"step": tc.num_steps, **eval_fn(merged(trainable), tc.num_steps)})
  if not all(math.isfinite(x) for x in history["loss"]):
    _log.warning("non-finite training loss seen; lower the learning rate")
  return trainable, history


@functools.lru_cache(maxsize=8)
def _cached_train_step(cfg: model_lib.ModelConfig, tc: TrainConfig, merge_fn: MergeFn | None) -> Callable:
  """:func:`make_train_step` per (config, train config, merge function): a later :func:`train` with the
  same ones (a resumed run, a sweep over data) reuses the compiled step instead of compiling again."""
  return make_train_step(cfg, make_optimizer(tc), merge_fn=merge_fn)


@functools.lru_cache(maxsize=8)
def lora_merge_fn(scale: float) -> MergeFn:
  """``merge_lora`` at ``scale`` as a ``merge_fn``; the same object per scale, so compiled steps are reused."""
  return functools.partial(merge_lora, scale=scale)


def _record(history: dict, stats: dict, bar) -> None:
  loss = float(stats["loss"])
  history["loss"].append(loss)
  history["tokens"] += float(stats["tokens"])
  bar.update(1)
  bar.set_postfix(loss=f"{loss:.4f}", refresh=False)


# ----------------------------------------------------------------- resume checks


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


def _check_fingerprint(saved: dict, now: dict, checkpoint_dir: str) -> None:
  diff = _fingerprint_diff(saved, now)
  if diff:
    more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
    raise InputError(f"{checkpoint_dir} holds the training state of a different run: {'; '.join(diff[:3])}{more}. "
                     "Resume with the same settings and data, or start over without it")


# ----------------------------------------------------------------- export


# ----------------------------------------------------------------- finetune a model dir

TRAIN_STATE_DIR = ".train_state"  # inside the output dir, removed when the run completes
INFO_FILE = "finetune_info.json"  # written last: its presence marks a complete run


def _prepare_out_dir(out_dir: str, *, resume: bool, overwrite: bool) -> None:
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


def run_finetune(model: Any, records: list[dict], tc: TrainConfig, *, out_dir: str, lora_rank: int = 0,
                 lora_alpha: float | None = None, lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS,
                 checkpoint_every: int = 0, resume: bool = True, overwrite: bool = False, orbax_copy: bool = True,
                 keep_train_state: bool = False, eval_fn: Callable[[PyTree, int], dict] | None = None,
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
    records: ``[{"messages": [...]}, ...]`` (see :func:`load_chat_records`).
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
  from jaxscape.core import convert, hub

  t0 = time.perf_counter()
  out_dir = os.path.abspath(out_dir)
  source = model if isinstance(model, str) else model.path
  # A hub id is no local path (it loads from the hub cache); checked before anything is downloaded.
  if source and not hub.is_hub_id(source) and os.path.realpath(source) == os.path.realpath(out_dir):
    raise InputError(f"output dir {out_dir} is the model dir; write the finetuned model elsewhere")
  _prepare_out_dir(out_dir, resume=resume, overwrite=overwrite)
  if isinstance(model, str):
    model = convert.load_model(model)
  cfg, tok = model.cfg, model.tokenizer
  if getattr(tok, "chat_template", None) is None:
    raise InputError(f"{source}: the tokenizer has no chat template, so chat records cannot be rendered")
  if tc.max_length > cfg.max_position_embeddings:
    raise InputError(f"longest bucket {tc.max_length} exceeds the model's context window "
                     f"{cfg.max_position_embeddings}")
  examples = encode_chats(tok, records, max_length=tc.max_length)
  lora = None
  if lora_rank:
    alpha = float(lora_alpha if lora_alpha is not None else 2 * lora_rank)
    lora = {"rank": lora_rank, "alpha": alpha, "targets": list(lora_targets)}
    trainable = init_lora(model.params, cfg, lora_rank, jax.random.key(tc.seed), targets=tuple(lora_targets))
    frozen, merge_fn = model.params, lora_merge_fn(alpha / lora_rank)
  else:
    trainable, frozen, merge_fn = model.params, None, None
  state_dir = os.path.join(out_dir, TRAIN_STATE_DIR)
  trained, history = train(trainable, cfg, examples, tc, pad_id=model.pad_id, frozen=frozen, merge_fn=merge_fn,
                           eval_fn=eval_fn, eval_every=eval_every, progress=progress, checkpoint_dir=state_dir,
                           checkpoint_every=checkpoint_every, fingerprint={"lora": lora})
  params = trained if merge_fn is None else merge_fn(trained, frozen)
  save_model(params, cfg, tok, out_dir, orbax_copy=orbax_copy, eos_ids=model.eos_ids)
  info = {"out_dir": out_dir, "source": source, "steps": len(history["loss"]), "loss": history["loss"],
          "stopped_at": history.get("stopped_at"),
          "final_loss": history["loss"][-1], "evals": history["evals"], "seconds": time.perf_counter() - t0,
          "train_seconds": history["seconds"], "compile_seconds": history["compile_seconds"],
          "resumed_from": history["resumed_from"], "examples": len(examples), "target_tokens": history["tokens"],
          "trainable_params": int(sum(x.size for x in jax.tree.leaves(trainable))), "lora": lora,
          "train_config": dataclasses.asdict(tc), **(extra_info or {})}
  tmp = os.path.join(out_dir, INFO_FILE + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2)
  os.replace(tmp, os.path.join(out_dir, INFO_FILE))  # the completion mark appears whole or not at all
  if not keep_train_state:
    shutil.rmtree(state_dir, ignore_errors=True)
  return info
