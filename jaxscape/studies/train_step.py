"""The finetuning step: its settings, the assistant-only loss, AdamW on a warm-up/cosine schedule, and one jitted
optimizer step with gradient accumulation.

The step differentiates a loss over a *trainable* pytree. Full finetuning trains the params
themselves; LoRA passes its adapters as ``trainable``, the frozen base as ``frozen`` and a
``merge_fn(trainable, frozen) -> params`` (:func:`jaxscape.studies.lora.lora_merge_fn`; the seam
of STYLE.md §2).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxscape.core import model as model_lib
from jaxscape.errors import InputError

PyTree = Any
MergeFn = Callable[[PyTree, PyTree], PyTree]


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
    seed: data order (and the LoRA init in :func:`jaxscape.studies.finetune.run_finetune`;
      :func:`jaxscape.studies.finetune.train` takes params as given).
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


# ----------------------------------------------------------------- loss, optimizer and step


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
