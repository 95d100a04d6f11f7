"""The jitted programs of one slice of grid points: every point's weights under ``vmap``, all prompts at once.

Each program perturbs θ for every point of a slice (materialize or factored, see
``jaxscape.core.perturb``), then prefills and decodes all prompts (:func:`decode_slice`), decodes
them a chunk at a time (:func:`prefill_slice`, :func:`extend_slice`), or scores answer letters
(:func:`choice_logprobs_slice`). ``jaxscape.core.scan`` compiles and runs them over a grid.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxscape.core import decode as decode_lib
from jaxscape.core import perturb
from jaxscape.core import score
from jaxscape.core.config import ModelConfig
from jaxscape.core.plan import phase_strategies
from jaxscape.errors import InputError

PyTree = Any


@functools.partial(jax.jit, static_argnames=("decoder", "strategy"))
def decode_slice(params: PyTree, stacked_dirs: PyTree, coeffs: jax.Array, tokens: jax.Array,
                 mask: jax.Array, max_steps: jax.Array, pad_id: jax.Array, prefix: jax.Array | None = None,
                 *, decoder: decode_lib.Decoder, strategy: str) -> decode_lib.Generation:
  """Generations of all prompts at every point of a slice.

  Args:
    params: params pytree θ.
    stacked_dirs: directions, leaves ``[n, *S]`` (``perturb.stack_directions``).
    coeffs: [P, n] float32 coordinates of the slice's points.
    tokens, mask: [B, T] left-padded prompts (shared by every point).
    max_steps, pad_id: int32 scalars (see ``decode.generate``).
    prefix: optional [p] int32 prompt prefix shared by every prompt, prefilled once per point.
    decoder: ``decode.Decoder`` (static).
    strategy: "materialize", "factored" or "hybrid" (static; see :func:`phase_strategies`).
  Returns:
    ``Generation`` with a leading points axis: tokens [P, B, N], lengths/nonfinite/truncated [P, B].
  """
  pre, dec = phase_strategies(strategy)
  state = _prefill_points(per_point(params, stacked_dirs, coeffs, pre, decoder.cfg.dtype), decoder, tokens, mask,
                          pad_id, prefix)
  # With "hybrid" the materialized weights are dead once prefill is done: XLA frees them.
  advance = _advance_points(per_point(params, stacked_dirs, coeffs, dec, decoder.cfg.dtype), decoder)
  return decoder.run_phases(advance, state, jnp.int32(1), max_steps, pad_id)


def per_point(params: PyTree, stacked_dirs: PyTree, coeffs: jax.Array, strategy: str, compute_dtype=jnp.float32):
  """``run(fn, *batched)`` = ``vmap`` of ``fn(weights_at_point, *batched_at_point)`` over the points.

  materialize: θ(c) for every point is formed once, outside any loop, and vmapped over. With a
  narrower compute dtype (bfloat16) its matrices are stored in it: the model casts every
  matrix to the compute dtype at each use anyway (same numbers), so this halves their bytes and
  drops the casts.
  factored: only the [P, n] coefficients are vmapped; θ and the directions stay shared, so the
  base matmuls of all points become one large matmul.
  """
  if strategy == "materialize":
    weights = jax.vmap(lambda c: perturb.materialize(params, stacked_dirs, c))(coeffs)
    if jnp.dtype(compute_dtype).itemsize < 4:
      # [P, ...] matrices only; vectors (norm scales, biases) keep float32. Layer leaves have [P, L, ...].
      cast = lambda tree, vector_ndim: jax.tree.map(
          lambda w: w.astype(compute_dtype) if w.ndim > vector_ndim else w, tree)
      weights = {k: cast(v, 3 if k == "layers" else 2) for k, v in weights.items()}
    return lambda fn, *batched: jax.vmap(fn)(weights, *batched)
  if strategy == "factored":
    return lambda fn, *batched: jax.vmap(lambda c, *b: fn(perturb.factored(params, stacked_dirs, c), *b))(
        coeffs, *batched)
  raise InputError(f"unknown strategy {strategy!r}; expected 'materialize' or 'factored'")


def _prefill_points(run, decoder: decode_lib.Decoder, tokens, mask, pad_id, prefix):
  """Prefill at every point; the returned state has a leading [P] axis and is at step 1."""
  return run(lambda w: decoder.prefill(w, tokens, mask, pad_id, prefix))


def _advance_points(run, decoder: decode_lib.Decoder):
  """``advance(state, step)`` of all points: one step vmapped over the points (a scalar step shared by all)."""
  def advance(st, i):
    return run(lambda w, s: decoder.advance(w, s, i), st)
  return advance


@functools.partial(jax.jit, static_argnames=("cfg", "strategy"))
def choice_logprobs_slice(params: PyTree, stacked_dirs: PyTree, coeffs: jax.Array, tokens: jax.Array,
                          mask: jax.Array, targets: jax.Array, *, cfg: ModelConfig, strategy: str) -> jax.Array:
  """Log-probabilities of the answer letters after each multiple-choice prompt, at every point.

  Args:
    tokens, mask: [Q, T] left-padded questions; targets: [Q, 1, C] int32 letter token ids
      (``score.choice_targets``).
  Returns:
    [P, Q, C] float32 (``score.continuation_logprobs`` at each point).
  """
  def one_point(weights):
    return score.continuation_logprobs(weights, tokens, mask, targets, cfg=cfg)[:, 0]
  return per_point(params, stacked_dirs, coeffs, phase_strategies(strategy)[0], cfg.dtype)(one_point)


# Chunked decoding (``scan.decode_until_decided``): prefill, then extend a chunk at a time.


@functools.partial(jax.jit, static_argnames=("decoder", "strategy"))
def prefill_slice(params: PyTree, stacked_dirs: PyTree, coeffs: jax.Array, tokens: jax.Array, mask: jax.Array,
                  pad_id: jax.Array, prefix: jax.Array | None = None, *, decoder: decode_lib.Decoder,
                  strategy: str) -> decode_lib.DecodeState:
  """Prefill every prompt at every point of a slice: a ``DecodeState`` with leading [P] axis (step 1)."""
  run = per_point(params, stacked_dirs, coeffs, phase_strategies(strategy)[0], decoder.cfg.dtype)
  return _prefill_points(run, decoder, tokens, mask, pad_id, prefix)


@functools.partial(jax.jit, static_argnames=("decoder", "strategy"), donate_argnames=("state",))
def extend_slice(params: PyTree, stacked_dirs: PyTree, coeffs: jax.Array, state: decode_lib.DecodeState,
                 step: jax.Array, stop: jax.Array, limit: jax.Array, pad_id: jax.Array, *,
                 decoder: decode_lib.Decoder, strategy: str) -> tuple[decode_lib.DecodeState, jax.Array]:
  """Continue decoding a slice's states [P, B, ...] from ``step`` up to ``limit`` tokens.

  ``stop`` [P, B] bool marks rows to stop now (their answer is known). The cache must already
  hold the slots of step ``limit - 1`` (:data:`grow_state`). Returns (state, step).
  """
  state = state.replace(done=state.done | stop)
  run = per_point(params, stacked_dirs, coeffs, phase_strategies(strategy)[1], decoder.cfg.dtype)
  return decoder.run_loop(_advance_points(run, decoder), state, step, limit, pad_id)


grow_state = jax.jit(decode_lib.grow, static_argnums=1)
grow_state.__doc__ = ("Jitted :func:`jaxscape.core.decode.grow`: pad a state's caches to hold steps below a "
                      "static bound.")
