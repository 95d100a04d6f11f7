"""Supervised finetuning on chat data: assistant-only loss, AdamW + warm-up/cosine, one jitted step with accumulation.

Pipeline::

    records [{"messages": [...]}] --encode_chats--> Example(ids, loss_mask) per record
      --batches--> {"tokens", "mask", "loss_mask"}: [M, b, T] (M micro-batches of b rows, T a length bucket)
      --train (make_train_step)--> params

The train step differentiates a loss over a *trainable* pytree. Full finetuning trains the
params themselves; LoRA (later) passes its adapters as ``trainable``, the frozen base as
``frozen`` and a ``merge_fn(trainable, frozen) -> params`` (the seam of STYLE.md §2).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxscape import model as model_lib

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
    seed: data order (and nothing else: initialise params from your own key).
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
      raise ValueError(f"num_steps must be > 0, got {self.num_steps}")
    if self.micro_batches <= 0 or self.batch_size <= 0 or self.batch_size % self.micro_batches:
      raise ValueError(f"batch_size ({self.batch_size}) must be a positive multiple of micro_batches "
                       f"({self.micro_batches})")
    if not self.buckets or any(b <= 1 for b in self.buckets) or list(self.buckets) != sorted(set(self.buckets)):
      raise ValueError(f"buckets must be increasing lengths > 1, got {self.buckets}")
    if self.learning_rate <= 0 or not 0 <= self.warmup_steps <= self.num_steps:
      raise ValueError(f"need learning_rate > 0 and 0 <= warmup_steps <= num_steps, got learning_rate="
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
  return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _check_messages(messages: Any, where: str) -> None:
  if not isinstance(messages, list) or not messages:
    raise ValueError(f"{where}: \"messages\" must be a non-empty list, got {messages!r:.80}")
  for m in messages:
    if not (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str)):
      raise ValueError(f"{where}: bad message {m!r:.80} (need role system/user/assistant and string content)")
  if not any(m["role"] == "assistant" for m in messages):
    raise ValueError(f"{where}: no assistant message to learn from")


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
      raise ValueError("the chat template does not render conversations as prefixes of each other; cannot "
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
      raise ValueError(f"record {n}: expected {{\"messages\": [...]}}, got {str(r)[:80]!r}")
    try:
      ex = encode_chat(tokenizer, r["messages"])
    except ValueError as e:
      raise ValueError(f"record {n}: {e}") from None
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
    raise ValueError("no trainable conversations (every one lost its assistant tokens)")
  return out


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


def batches(examples: list[Example], tc: TrainConfig, pad_id: int) -> Iterator[dict[str, np.ndarray]]:
  """Endless deterministic batches ``{"tokens", "mask", "loss_mask"}: [M, b, T]`` (M micro-batches).

  Each epoch (seeded by ``(tc.seed, epoch)``) shuffles every length bucket, cuts it into
  full batches (a bucket's last partial batch is filled with other examples of the same
  bucket, drawn at random), and visits the batches in a random order.
  """
  by_bucket: dict[int, list[int]] = {}
  for i, ex in enumerate(examples):
    by_bucket.setdefault(bucket_of(len(ex.ids), tc.buckets), []).append(i)
  B, M = tc.batch_size, tc.micro_batches
  epoch = 0
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


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW on the :func:`learning_rate_schedule`; decay on matrices only."""
  decay_mask = lambda tree: jax.tree.map(lambda x: jnp.ndim(x) >= 2, tree)  # noqa: E731
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


# ----------------------------------------------------------------- the loop


def train(trainable: PyTree, cfg: model_lib.ModelConfig, examples: list[Example], tc: TrainConfig, *,
          pad_id: int, frozen: PyTree = None, merge_fn: MergeFn | None = None,
          eval_fn: Callable[[PyTree, int], dict] | None = None, eval_every: int = 0,
          progress: bool = True) -> tuple[PyTree, dict]:
  """Train ``trainable`` for ``tc.num_steps`` steps; deterministic for a given ``tc.seed`` and initial params.

  Args:
    trainable: params (full finetuning) or adapters (with ``frozen`` and ``merge_fn``).
    examples: from :func:`encode_chats`.
    pad_id: token id used for padding (masked out).
    eval_fn: ``eval_fn(params, step) -> dict`` called every ``eval_every`` steps (0: only at the
      end) with the merged params; results go to the history.
    progress: tqdm bar on stderr showing the loss.
  Returns:
    (trained ``trainable``, history ``{"loss": [per step], "evals": [...], "seconds",
    "compile_seconds", "tokens"}``).
  """
  from tqdm.auto import tqdm  # deferred: only the loop needs it

  if not examples:
    raise ValueError("train needs at least one example")
  optimizer = make_optimizer(tc)
  step_fn = make_train_step(cfg, optimizer, merge_fn=merge_fn)
  # Copy: the step donates its inputs, and the caller may still hold the initial params.
  trainable = jax.tree.map(lambda x: jnp.array(x, copy=True), trainable)
  opt_state = optimizer.init(trainable)
  history = {"loss": [], "evals": [], "tokens": 0.0}
  data = batches(examples, tc, pad_id)
  merged = (lambda t: t) if merge_fn is None else (lambda t: merge_fn(t, frozen))
  t0 = time.perf_counter()
  compile_s = 0.0
  pending = None  # stats of the previous step, read after the next one is dispatched
  bar = tqdm(total=tc.num_steps, desc="train", disable=not progress, dynamic_ncols=True)
  try:
    for step in range(1, tc.num_steps + 1):
      batch = next(data)
      ts = time.perf_counter()
      trainable, opt_state, stats = step_fn(trainable, opt_state, frozen, batch)
      if step == 1:
        jax.block_until_ready(stats)
        compile_s = time.perf_counter() - ts
      if pending is not None:
        _record(history, pending, bar)
      pending = stats
      if eval_fn is not None and eval_every and step % eval_every == 0 and step < tc.num_steps:
        history["evals"].append({"step": step, **eval_fn(merged(trainable), step)})
    _record(history, pending, bar)
  finally:
    bar.close()
  history["seconds"] = time.perf_counter() - t0
  history["compile_seconds"] = compile_s
  if eval_fn is not None:
    history["evals"].append({"step": tc.num_steps, **eval_fn(merged(trainable), tc.num_steps)})
  if not all(math.isfinite(x) for x in history["loss"]):
    _log.warning("non-finite training loss seen; lower the learning rate")
  return trainable, history


def _record(history: dict, stats: dict, bar) -> None:
  loss = float(stats["loss"])
  history["loss"].append(loss)
  history["tokens"] += float(stats["tokens"])
  bar.update(1)
  bar.set_postfix(loss=f"{loss:.4f}", refresh=False)


# ----------------------------------------------------------------- export


def save_model(params: PyTree, cfg: model_lib.ModelConfig, tokenizer, out_dir: str, *,
               orbax_copy: bool = False, dtype: str | None = None) -> str:
  """Write an HF checkpoint dir that jaxscape and ``transformers`` both load.

  ``config.json`` and ``model.safetensors`` (``convert.save_hf``), the tokenizer files,
  ``generation_config.json`` with the EOS/BOS/pad ids (also written into ``config.json``),
  and with ``orbax_copy`` the params as orbax under ``params/``. Returns ``out_dir``.
  """
  import json
  import os

  from jaxscape import checkpoint, convert

  os.makedirs(out_dir, exist_ok=True)
  params = jax.tree.map(np.asarray, params)
  convert.save_hf(params, cfg, out_dir, dtype=dtype)
  tokenizer.save_pretrained(out_dir)
  ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
         "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id}
  path = os.path.join(out_dir, "config.json")
  with open(path, encoding="utf-8") as f:
    hf_cfg = json.load(f)
  hf_cfg.update(ids)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(hf_cfg, f, indent=2, sort_keys=True)
  with open(os.path.join(out_dir, "generation_config.json"), "w", encoding="utf-8") as f:
    json.dump({**ids, "eos_token_id": [ids["eos_token_id"]], "do_sample": False}, f, indent=2, sort_keys=True)
  if orbax_copy:
    checkpoint.save_params(os.path.join(out_dir, convert.ORBAX_DIR), params, overwrite=True)
  return out_dir
