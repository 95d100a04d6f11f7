"""Landscape scans: slices of grid points decoded under ``vmap`` in one jitted call, scored on the host.

The Python loop runs over *slices*, never over points: one compiled call perturbs the
weights for every point of a slice (materialize or factored, see ``jaxscape.perturb``),
prefills all prompts and runs the whole greedy loop. Each finished slice is written
atomically to ``OUT/points/`` with its point indices, so an interrupted scan resumes
where it stopped (see ``jaxscape.results``).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxscape import decode as decode_lib
from jaxscape import perturb
from jaxscape.model import ModelConfig, apply, kv_dtype, positions_from_mask

PyTree = Any
STRATEGIES = ("materialize", "factored", "hybrid")


def phase_strategies(strategy: str) -> tuple[str, str]:
  """(prefill, decoding) strategy of ``strategy``: "hybrid" is materialize's prefill and factored's decoding.

  Prefill multiplies many rows per point, where materialized weights cost 1x the FLOPs against
  factored's (1 + n)x; a decoding step multiplies few rows per point, where reading one weight
  copy per point costs more than factored's 1 + n shared copies. On the 100M benchmark model
  (5 points x 16 prompts, one device, Intel CPU, BENCHMARKS.md session 7), float32: prefill 4.4 s
  materialized vs 6.9 s factored, a decoding step 318 vs 211 ms. Tokens equal either strategy's
  up to float summation order.
  """
  if strategy == "hybrid":
    return "materialize", "factored"
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
  return strategy, strategy


# ----------------------------------------------------------------- jitted slices


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "eos_ids", "strategy", "groups"))
def decode_slice(params: PyTree, stacked_dirs: PyTree, coeffs: jax.Array, tokens: jax.Array,
                 mask: jax.Array, max_steps: jax.Array, pad_id: jax.Array, prefix: jax.Array | None = None,
                 *, cfg: ModelConfig, max_new_tokens: int, eos_ids: tuple[int, ...],
                 strategy: str, groups: tuple[tuple[int, int, int], ...] | None = None) -> decode_lib.Generation:
  """Greedy generations of all prompts at every point of a slice.

  Args:
    params: params pytree θ.
    stacked_dirs: directions, leaves ``[n, *S]`` (``perturb.stack_directions``).
    coeffs: [P, n] float32 coordinates of the slice's points.
    tokens, mask: [B, T] left-padded prompts (shared by every point).
    max_steps, pad_id: int32 scalars (see ``decode.greedy_generate``).
    prefix: optional [p] int32 prompt prefix shared by every prompt, prefilled once per point.
    strategy: "materialize", "factored" or "hybrid" (static; see :func:`phase_strategies`).
    groups: static length groups of rows sorted by length (``prompts.length_groups``).
  Returns:
    ``Generation`` with a leading points axis: tokens [P, B, N], lengths/nonfinite [P, B].
  """
  pre, dec = phase_strategies(strategy)
  state = _prefill_points(_per_point(params, stacked_dirs, coeffs, pre, cfg.dtype), tokens, mask, pad_id, prefix,
                          cfg=cfg, max_new_tokens=max_new_tokens, eos_ids=eos_ids, groups=groups)
  # With "hybrid" the materialized weights are dead once prefill is done: XLA frees them.
  return decode_lib.run_phases(_advance_points(_per_point(params, stacked_dirs, coeffs, dec, cfg.dtype), cfg=cfg),
                               state, jnp.int32(1), max_steps, pad_id, eos_ids, decode_lib.phase_ends(max_new_tokens))


def _per_point(params: PyTree, stacked_dirs: PyTree, coeffs: jax.Array, strategy: str, compute_dtype=jnp.float32):
  """``run(fn, *batched)`` = ``vmap`` of ``fn(weights_at_point, *batched_at_point)`` over the points.

  materialize: θ(c) for every point is formed once, outside any loop, and vmapped over. With a
  narrower compute dtype (bfloat16) its matrices are stored in it: the model casts every
  matrix to the compute dtype at each use anyway (same numbers), so this halves their bytes and
  drops the casts (100M model, 3 points x 16 prompts: prefill 2.34 -> 2.21 s).
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
  raise ValueError(f"unknown strategy {strategy!r}; expected 'materialize' or 'factored'")


def _prefill_points(run, tokens, mask, pad_id, prefix, *, cfg, max_new_tokens, eos_ids, groups=None):
  """Prefill at every point; the returned state has a leading [P] axis and is at step 1."""
  return run(lambda w: decode_lib._prefill(w, tokens, mask, pad_id, prefix, cfg=cfg, max_new_tokens=max_new_tokens,
                                           eos_ids=eos_ids, groups=groups))


def _advance_points(run, *, cfg):
  """``advance(state, step)`` of all points: one greedy step vmapped over the points (a scalar step shared by all)."""
  def advance(st, i):
    return run(lambda w, s: decode_lib._advance(w, s, i, cfg=cfg), st)
  return advance


@functools.partial(jax.jit, static_argnames=("cfg", "strategy"))
def choice_logits_slice(params: PyTree, stacked_dirs: PyTree, coeffs: jax.Array, tokens: jax.Array,
                        mask: jax.Array, choice_ids: jax.Array, *, cfg: ModelConfig,
                        strategy: str) -> jax.Array:
  """Next-token logits of the answer letters after each multiple-choice prompt.

  Args:
    tokens, mask: [Q, T] left-padded questions; choice_ids: [C] int32 letter token ids.
  Returns:
    [P, Q, C] float32.
  """
  Q = tokens.shape[0]

  def one_point(weights):
    logits, _, _ = apply(weights, tokens, positions_from_mask(mask), None, jnp.int32(0), mask,
                         cfg=cfg, logits_at="last")
    return logits[:, -1, :][:, choice_ids]
  return _per_point(params, stacked_dirs, coeffs, phase_strategies(strategy)[0], cfg.dtype)(one_point)


# ----------------------------------------------------------------- chunked decoding


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "eos_ids", "strategy", "groups"))
def prefill_slice(params: PyTree, stacked_dirs: PyTree, coeffs: jax.Array, tokens: jax.Array, mask: jax.Array,
                  pad_id: jax.Array, prefix: jax.Array | None = None, *, cfg: ModelConfig, max_new_tokens: int,
                  eos_ids: tuple[int, ...], strategy: str, groups=None) -> decode_lib.DecodeState:
  """Prefill every prompt at every point of a slice: a ``DecodeState`` with leading [P] axis (step 1)."""
  run = _per_point(params, stacked_dirs, coeffs, phase_strategies(strategy)[0], cfg.dtype)
  return _prefill_points(run, tokens, mask, pad_id, prefix, cfg=cfg, max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                         groups=groups)


@functools.partial(jax.jit, static_argnames=("cfg", "eos_ids", "strategy"), donate_argnames=("state",))
def extend_slice(params: PyTree, stacked_dirs: PyTree, coeffs: jax.Array, state: decode_lib.DecodeState,
                 step: jax.Array, stop: jax.Array, limit: jax.Array, pad_id: jax.Array, *, cfg: ModelConfig,
                 eos_ids: tuple[int, ...], strategy: str) -> tuple[decode_lib.DecodeState, jax.Array]:
  """Continue greedy decoding of a slice's states [P, B, ...] from ``step`` up to ``limit`` tokens.

  ``stop`` [P, B] bool marks rows to stop now (their answer is known). The cache must already
  hold the slots of step ``limit - 1`` (:data:`grow_state`). Returns (state, step).
  """
  state = state.replace(done=state.done | stop)
  run = _per_point(params, stacked_dirs, coeffs, phase_strategies(strategy)[1], cfg.dtype)
  return decode_lib.run_loop(_advance_points(run, cfg=cfg), state, step, limit, pad_id, eos_ids)


grow_state = jax.jit(decode_lib.grow, static_argnums=1)
grow_state.__doc__ = "Jitted :func:`jaxscape.decode.grow`: pad a state's caches to hold steps below a static bound."


@jax.jit  # no donation: the compacted state is smaller, so XLA could not reuse the old buffers
def compact_state(state: decode_lib.DecodeState, point_idx: jax.Array, row_idx: jax.Array,
                  keep: jax.Array) -> decode_lib.DecodeState:
  """Gather the rows still being decoded, each device from its own block of points.

  With the points split over D devices in contiguous blocks, ``point_idx[d]`` indexes within
  block d, so no point moves between devices: ``new[d * P'd + j, b] = state[d * Pd +
  point_idx[d, j], row_idx[d * P'd + j, b]]``. (A global gather over a sharded points axis made
  XLA gather the whole state onto every device first: 9-12 GB RSS peaks instead of 4.7 on
  the toy model at 512 new tokens over 2 CPU devices.) Rows of different length groups may now
  share a batch, so the groups are merged first (``decode.merge_groups``).

  Args:
    state: [P, B, ...] states, P = D x Pd; point_idx: [D, P'd] int32 indices within each
      device's block; row_idx: [P', B'] int32 (P' = D x P'd);
    keep: [P', B'] bool, False for filler entries (marked done so they stop at once).
  """
  D, Pd_new = point_idx.shape

  def per_device(x, gather):  # [P, ...] -> [D, P / D, ...], gather per device, -> [D * P'd, ...]
    blocks = x.reshape((D, x.shape[0] // D) + x.shape[1:])
    out = gather(blocks)
    return out.reshape((D * Pd_new,) + out.shape[2:])

  rows_by_device = row_idx.reshape(D, Pd_new, row_idx.shape[-1])
  state = decode_lib.merge_groups(state)
  prefix_cache = jax.tree.map(  # per point, not per row
      lambda x: per_device(x, lambda xb: jax.vmap(lambda xd, pd: xd[pd])(xb, point_idx)), state.prefix_cache)
  gather_rows = lambda x: per_device(x, lambda xb: jax.vmap(lambda xd, pd, rd: xd[pd[:, None], rd])(
      xb, point_idx, rows_by_device))
  # Cache leaves are [P, L, B, ...] (layers stacked): rows are gathered along axis 2.
  cache = jax.tree.map(lambda x: jnp.moveaxis(gather_rows(jnp.moveaxis(x, 2, 1)), 1, 2), state.cache)
  state = jax.tree.map(gather_rows, state.replace(prefix_cache=None, cache=()))
  return state.replace(done=state.done | ~keep, prefix_cache=prefix_cache, cache=cache)


# Compact the running rows when that cuts the batch (points x rows) by at least this fraction.
# Each new batch shape compiles the chunk program again (~0.4 s on the toy model), so a few
# large cuts beat many small ones. On the toy model at 512 new tokens, where every point keeps
# >= 40% of its prompts undecided, "only when it halves, to powers of two" never fired (no work
# saved); >= 15% with rows in multiples of 8 (80 / ROW_STEPS) fires 3 times and leaves ~0.53 of
# the attention-weighted work (simulated from that run's decision steps); measured on 2 CPU
# devices, the scan went from 104 to 66-68 s (the plain decode: 76-79 s).
COMPACT_SAVING = 0.15
ROW_STEPS = 10  # rows per point are rounded up to a multiple of B // ROW_STEPS: <= ~10 row counts


def largest_chunk_compiled(params: PyTree, stacked_dirs: PyTree, coeffs: jax.ShapeDtypeStruct, tokens, mask,
                           pad_id: jax.Array, prefix, *, cfg: ModelConfig, max_new_tokens: int,
                           eos_ids: tuple[int, ...], strategy: str, groups=None, state_sharding=None):
  """The largest program :func:`decode_until_decided` can run, compiled ahead of time (for its memory analysis).

  That is a decoding chunk of the whole, uncompacted slice with the cache grown for
  ``max_new_tokens``: compaction only shrinks the state, and earlier phases hold fewer slots.
  ``coeffs`` is the slice's abstract [P, n] coordinates; ``state_sharding(ndim)`` places the
  [P, ...] state leaves (default: as XLA likes).
  """
  state = jax.eval_shape(lambda c: decode_lib.grow(
      prefill_slice(params, stacked_dirs, c, tokens, mask, pad_id, prefix, cfg=cfg, max_new_tokens=max_new_tokens,
                    eos_ids=eos_ids, strategy=strategy, groups=groups), max_new_tokens), coeffs)
  place = (lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=state_sharding(x.ndim))) if state_sharding else (
      lambda x: x)
  state = jax.tree.map(place, state)
  stop = place(jax.ShapeDtypeStruct(state.done.shape, jnp.bool_))
  step = np.int32(1)
  return extend_slice.lower(params, stacked_dirs, coeffs, state, step, stop, np.int32(max_new_tokens), pad_id,
                            cfg=cfg, eos_ids=eos_ids, strategy=strategy).compile()


def _round_up(n: int, multiple: int, cap: int) -> int:
  """``n`` rounded up to a multiple of ``multiple``, at most ``cap``."""
  return min(-(-n // multiple) * multiple, cap)


def decode_until_decided(params: PyTree, stacked_dirs: PyTree, coeffs: np.ndarray, tokens, mask, pad_id: int,
                         prefix, *, cfg: ModelConfig, max_new_tokens: int, eos_ids: tuple[int, ...], strategy: str,
                         is_decided: Callable[[np.ndarray], bool], chunk: int = 32, point_multiple: int = 1,
                         put: Callable = lambda x: x, to_host: Callable = np.asarray, groups=None):
  """Chunked greedy decoding of one slice that stops rows whose answer is already known.

  After every ``chunk`` tokens the host checks each running row with ``is_decided(tokens)``
  (e.g. "the text holds a refusal keyword", which more tokens cannot undo); decided rows stop,
  and once the running rows fit in a batch at least :data:`COMPACT_SAVING` smaller, the states
  are compacted (fewer points and/or prompts; rows per point rounded up to a multiple of
  ``B // ROW_STEPS`` so few shapes get compiled; with the points split over ``point_multiple``
  devices, each device keeps its own points, as many as the busiest device) and decoding goes
  on. Tokens of a row that ended by EOS or at ``max_new_tokens`` are exactly those of
  :func:`decode_slice`; a decided row keeps the tokens it had.

  Returns:
    (tokens [P, B, N] int32, lengths [P, B], nonfinite [P, B] bool, truncated [P, B] bool,
    decode_row_steps): the last is the rows of the decoding batch x the steps each chunk ran, summed
    over the chunks (compaction shrinks the batch; rows already stopped but not compacted away count).
  """
  P, n = coeffs.shape
  B = tokens.shape[0]
  N = max_new_tokens
  out_tokens = np.full((P, B, N), pad_id, np.int32)
  out_lengths = np.zeros((P, B), np.int32)
  out_nonfinite = np.zeros((P, B), bool)
  truncated = np.zeros((P, B), bool)
  state = prefill_slice(params, stacked_dirs, put(coeffs), tokens, mask, np.int32(pad_id), prefix, cfg=cfg,
                        max_new_tokens=N, eos_ids=eos_ids, strategy=strategy, groups=groups)
  point_of = np.arange(P)  # state point index -> slice point
  row_of = np.tile(np.arange(B), (P, 1))  # state [p, b] -> prompt row
  valid = np.ones((P, B), bool)
  stop = np.zeros((P, B), bool)
  limit, step = 0, np.int32(1)
  row_steps = 0
  ends = decode_lib.phase_ends(N)
  while True:
    limit = min(limit + chunk, N)
    # Grow the cache by phases (few distinct shapes to compile), never to more than this chunk needs.
    end = next(e for e in ends if e >= limit)
    if end > state.room:
      state = grow_state(state, end)
    before = step
    state, step = extend_slice(params, stacked_dirs, put(coeffs[point_of]), state, step, put(stop),
                               np.int32(limit), np.int32(pad_id), cfg=cfg, eos_ids=eos_ids, strategy=strategy)
    out, done, lengths, nonfinite = (to_host(x) for x in (state.out, state.done, state.lengths, state.nonfinite))
    row_steps += (int(step) - int(before)) * valid.size  # valid: [P', B'], the shape of the decoding batch
    step = int(step)
    running = np.zeros_like(valid)
    for p, b in zip(*np.nonzero(valid)):
      sp, sb = point_of[p], row_of[p, b]
      finished = done[p, b] or step >= N
      decided = not finished and is_decided(out[p, b, :step])
      if finished or decided:
        out_tokens[sp, sb], out_lengths[sp, sb] = out[p, b], lengths[p, b]
        out_nonfinite[sp, sb], truncated[sp, sb] = nonfinite[p, b], decided
      else:
        running[p, b] = True
    if not running.any():
      return out_tokens, out_lengths, out_nonfinite, truncated, row_steps
    # Points stay on their device (see compact_state): each keeps its own live points, as many
    # per device as the busiest device has.
    D = point_multiple
    block = len(point_of) // D
    live = [np.nonzero(running[d * block:(d + 1) * block].any(1))[0] for d in range(D)]
    new_block = max(1, max(len(l) for l in live))
    new_P = D * new_block
    new_B = _round_up(int(running.sum(1).max()), max(1, B // ROW_STEPS), cap=row_of.shape[1])
    if new_P * new_B <= (1 - COMPACT_SAVING) * len(point_of) * row_of.shape[1]:
      # A device with fewer live points repeats its first one (or point 0 of its block) as filler.
      local = np.stack([np.concatenate([l, np.full(new_block - len(l), l[0] if len(l) else 0)]) for l in live])
      pidx = (local + block * np.arange(D)[:, None]).reshape(-1)  # state point indices, [P']
      ridx = np.zeros((new_P, new_B), np.int32)
      keep = np.zeros((new_P, new_B), bool)
      for k, p in enumerate(pidx):
        if k % new_block < len(live[k // new_block]):  # a live point, not filler
          rows = np.nonzero(running[p])[0]
          ridx[k, :len(rows)] = rows
          keep[k, :len(rows)] = True
      state = compact_state(state, put(local.astype(np.int32)), put(ridx), put(keep))
      new_point_of = point_of[pidx]
      row_of = np.take_along_axis(row_of[pidx], ridx, axis=1)
      point_of, valid = new_point_of, keep
    else:
      valid = running
    stop = ~valid


# ----------------------------------------------------------------- memory plan


@dataclasses.dataclass(frozen=True)
class Plan:
  """How a scan runs: strategy, points per slice and the estimated peak bytes per device."""
  strategy: str
  slice_size: int
  bytes_per_device: int
  budget: int
  reason: str

  def describe(self) -> str:
    gib = 1 << 30
    return (f"plan: strategy={self.strategy} slice_size={self.slice_size} "
            f"est_peak={self.bytes_per_device / gib:.2f} GiB of budget {self.budget / gib:.2f} GiB "
            f"({self.reason})")


def detect_memory_budget() -> int:
  """Bytes usable on one device: the accelerator's limit, or half the host's available RAM on CPU."""
  dev = jax.local_devices()[0]
  try:
    stats = dev.memory_stats() or {}
  except Exception:  # CPU backends may not implement memory_stats
    stats = {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"] * 0.9)
  try:
    import psutil
    avail = psutil.virtual_memory().available
  except ImportError:
    avail = 8 << 30
  return int(avail * 0.5 / max(1, jax.local_device_count()))


def estimate_bytes(cfg: ModelConfig, *, strategy: str, points: int, n_dirs: int, batch: int,
                   seq_len: int, model_shards: int = 1) -> int:
  """Rough peak bytes per device for a slice of ``points`` points (weights + KV cache + activations)."""
  f32 = 4
  weights = cfg.num_params() * f32 // model_shards
  resident = weights * (1 + n_dirs)  # θ and the directions
  kv = _kv_cache_bytes(cfg, batch=batch, seq_len=seq_len) // model_shards
  logits = batch * cfg.vocab_size * f32 * 2
  acts = batch * max(cfg.intermediate_size, cfg.hidden_size) * f32 * 8
  per_point = kv + logits + acts
  pre, dec = phase_strategies(strategy)
  if pre == "materialize":
    per_point += _point_weight_bytes(cfg) // model_shards
  if dec == "factored":
    per_point += n_dirs * (logits + acts)  # one extra activation set per direction
  # Prefill holds [B, T, ...] activations and [B, H, T, T] scores once.
  prefill = batch * seq_len * (cfg.intermediate_size * 3 + cfg.num_heads * seq_len) * f32
  return int(resident + points * (per_point + prefill // 4))


def _kv_cache_bytes(cfg: ModelConfig, *, batch: int, seq_len: int) -> int:
  """Bytes of one point's KV cache: ``batch`` rows of ``seq_len`` slots."""
  return 2 * cfg.num_layers * batch * seq_len * cfg.num_kv_heads * cfg.head_dim * np.dtype(kv_dtype(cfg)).itemsize


def _point_weight_bytes(cfg: ModelConfig) -> int:
  """Bytes of one materialized point θ(c), stored in the compute dtype."""
  return cfg.num_params() * min(4, np.dtype(cfg.dtype).itemsize)


def decoding_reads_weights_most(cfg: ModelConfig, *, points_per_device: int, n_dirs: int, batch: int,
                                seq_len: int) -> bool:
  """Whether factored decoding beats materialized decoding: the weights a materialized point reads
  each step outweigh its KV cache, and a device holds more than ``1 + n_dirs`` points (factored
  reads 1 + n shared copies a step, materialize one per point, at (1 + n)x fewer FLOPs).

  Measured on CPU (BENCHMARKS.md, session 8), 100M model (0.39 GB of float32 weights a point),
  5 points on one device, 136 cache slots, scan of hybrid against materialize: float32, 16 prompts
  (KV cache 0.41 of the weight bytes) 13.2 vs 16.7 s, 32 prompts (0.82) 22.1 vs 26.7 s, 64 prompts
  (1.65) 43.9 vs 43.6 s; bfloat16 (weights half the bytes), 16 prompts (0.82) 8.3 vs 10.8 s, 64
  prompts (3.3) 33.5 vs 26.3 s; toy model, 80 prompts (KV cache 8.9x the weights) 6.6 vs 6.3 s.
  """
  return (points_per_device > 1 + n_dirs
          and _point_weight_bytes(cfg) > _kv_cache_bytes(cfg, batch=batch, seq_len=seq_len))


def plan_scan(cfg: ModelConfig, *, n_points: int, n_dirs: int, batch: int, seq_len: int,
              budget: int | None = None, strategy: str = "auto", slice_size: int = 0,
              point_shards: int = 1, model_shards: int = 1) -> Plan:
  """Choose strategy and slice size that fit ``budget`` bytes per device.

  Slices are multiples of ``point_shards`` (devices along the points axis). ``auto`` takes the
  strategy whose slice covers the most points, materialize (fewer FLOPs) before factored on a tie;
  then, when hybrid's slice is as large as materialize's and decoding is bound by reading each
  point's weights (:func:`decoding_reads_weights_most`), materialize becomes hybrid (see
  :func:`phase_strategies`). Raises ValueError when no plan fits.
  """
  budget = budget or detect_memory_budget()
  candidates = STRATEGIES if strategy == "auto" else (strategy,)
  if strategy not in STRATEGIES + ("auto",):
    raise ValueError(f"unknown strategy {strategy!r}; expected auto or one of {', '.join(STRATEGIES)}")
  fits = {}
  per_shard_points = -(-n_points // point_shards)
  for s in candidates:
    est = functools.partial(estimate_bytes, cfg, strategy=s, n_dirs=n_dirs, batch=batch, seq_len=seq_len,
                            model_shards=model_shards)
    if slice_size:
      want = -(-slice_size // point_shards)
      if est(points=want) <= budget:
        cand = (want, s)
      else:
        continue
    else:
      fit = 0
      lo, hi = 1, per_shard_points
      while lo <= hi:  # largest per-device slice that fits
        mid = (lo + hi) // 2
        if est(points=mid) <= budget:
          fit, lo = mid, mid + 1
        else:
          hi = mid - 1
      if not fit:
        continue
      # Even slices: as few as possible, equally sized, so the last one is not mostly padding.
      n_slices = -(-per_shard_points // fit)
      cand = (-(-per_shard_points // n_slices), s)
    fits[s] = cand[0]
  best = None
  for s in ("materialize", "factored") if strategy == "auto" else (strategy,):
    if s in fits and (best is None or fits[s] > best[0]):
      best = (fits[s], s)
  if (strategy == "auto" and best is not None and best[1] == "materialize" and fits.get("hybrid") == best[0]
      and decoding_reads_weights_most(cfg, points_per_device=best[0], n_dirs=n_dirs, batch=batch, seq_len=seq_len)):
    best = (best[0], "hybrid")
    reason = f"auto; decoding reads weights more than KV cache: {1 + n_dirs} shared copies, not {best[0]}"
  else:
    reason = "forced" if strategy != "auto" else "auto"
  if best is None:
    need = min(estimate_bytes(cfg, strategy=s, points=1, n_dirs=n_dirs, batch=batch, seq_len=seq_len,
                              model_shards=model_shards) for s in candidates)
    raise ValueError(f"no scan plan fits the memory budget: one point needs ~{need / (1 << 30):.2f} GiB "
                     f"per device, budget is {budget / (1 << 30):.2f} GiB (raise --memory_budget, use fewer "
                     f"prompts or --mesh with a model axis)")
  per_dev, s = best
  size = per_dev * point_shards
  return Plan(strategy=s, slice_size=size, budget=budget, reason=reason,
              bytes_per_device=estimate_bytes(cfg, strategy=s, points=per_dev, n_dirs=n_dirs, batch=batch,
                                              seq_len=seq_len, model_shards=model_shards))


def replan_slice(plan: Plan, cfg: ModelConfig, *, slice_size: int, point_shards: int, n_dirs: int, batch: int,
                 seq_len: int, model_shards: int = 1) -> Plan:
  """``plan`` with a smaller slice (a multiple of ``point_shards``) and its estimate, same strategy."""
  per_dev = max(1, slice_size // point_shards)
  return dataclasses.replace(
      plan, slice_size=per_dev * point_shards, reason=f"{plan.reason}, slice shrunk to fit after compiling",
      bytes_per_device=estimate_bytes(cfg, strategy=plan.strategy, points=per_dev, n_dirs=n_dirs, batch=batch,
                                      seq_len=seq_len, model_shards=model_shards))


def compiled_bytes(compiled) -> int | None:
  """Device bytes XLA assigned a compiled call, per device: arguments + outputs + temporaries,
  less what donation aliases. None when the backend does not report it."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # not every backend implements it
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


# ----------------------------------------------------------------- the loop


def pad_slice(ids: list[int], size: int) -> list[int]:
  """Pad a slice's point ids to ``size`` by repeating the last (outputs dropped on the host)."""
  return ids + [ids[-1]] * (size - len(ids))


def run_slices(step_fn: Callable[[np.ndarray], tuple], slices: list[list[int]], coeffs: np.ndarray, *,
               slice_size: int, on_result: Callable[[list[int], Any], None], progress: bool = True) -> None:
  """Dispatch slice k+1 before pulling slice k to the host; ``on_result(ids, device_out)`` per slice.

  ``step_fn(coeffs[P, n])`` returns device arrays (asynchronously); ``on_result`` is the
  only place a host sync happens.
  """
  from tqdm import tqdm
  bar = tqdm(total=sum(map(len, slices)), desc="grid points", unit="pt", file=sys.stderr,
             disable=not progress, dynamic_ncols=True)
  pending = None
  for ids in slices:
    out = step_fn(coeffs[pad_slice(ids, slice_size)])
    if pending is not None:
      on_result(*pending)
      bar.update(len(pending[0]))
    pending = (ids, out)
  if pending is not None:
    on_result(*pending)
    bar.update(len(pending[0]))
  bar.close()
