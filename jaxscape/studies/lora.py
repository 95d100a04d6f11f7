"""LoRA adapters as a pytree of their own: zero-effect init per target kernel, and the merge into the base params
(the ``merge_fn`` seam of :mod:`jaxscape.studies.train_step`; gemma ``peft`` keeps them apart the same way)."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxscape.core import model as model_lib
from jaxscape.errors import InputError
from jaxscape.studies.train_step import MergeFn

PyTree = Any


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


@functools.lru_cache(maxsize=8)
def lora_merge_fn(scale: float) -> MergeFn:
  """``merge_lora`` at ``scale`` as a ``merge_fn``; the same object per scale, so compiled steps are reused."""
  return functools.partial(merge_lora, scale=scale)
