"""Continuous batching for landscape scans: (grid point, prompt) rows stream through fixed decode slots.

A slice's rows ``r = p * B + b`` (point p, prompt b; point-major) are decoded in a batch of S
*slots* of fixed shape. A slot holds one row: its own KV cache, its own step counter and its own
point's coefficients. Decoding is factored per slot (``x·θ + Σᵢ cᵢ (x·Dᵢ)`` with each slot's
``cᵢ``), so rows of all points share one batch and one copy of θ and the directions. When a row
finishes (EOS, the token limit, or told to stop), its tokens go to the results and its slot is
refilled with a pending row within R decode steps (the *refill interval*).

The shape follows the engines of JetStream / MaxText (``prefill`` / ``insert`` / ``generate``):

* **prefill** runs G pending rows at once (a fixed group) into a staging buffer: one materialized
  point per group (``strategy`` "materialize"/"hybrid": groups never span points, 1x the FLOPs of
  the weights) or factored per row ("factored": groups span points, (1 + n)x the FLOPs, but no
  weight copy: for models whose weights dwarf the rows' activations);
* **insert** moves buffered rows into free slots (a scatter of G rows, never the whole cache);
* **generate** runs up to R greedy steps over all S slots.

Every shape is fixed, so the whole scan is one compiled program, or one program per refill
interval when the host must look at the rows in between (``--stop_when_decided``); see
:func:`programs`. Each device of the mesh's 'points' axis runs its own engine on its block of
points. Tokens are those of ``decode.greedy_generate`` at the same point, up
to float summation order (factored decoding sums θ's and the directions' products apart).

Cache layout per slot: ``[prefix (P0) | left-padded prompt (T) | new tokens (N - 1)]``; the
token fed at step ``i >= 1`` goes to slot ``P0 + T + i - 1``. The shared prefix's KV is
computed once per point (:func:`prefix_kv`) and copied into each row's cache at prefill.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jaxscape import decode as decode_lib
from jaxscape import model as model_lib
from jaxscape import perturb

PyTree = Any
MAX_REFILL_INTERVAL = 8


@dataclasses.dataclass(frozen=True)
class EngineSpec:
  """Static shape of the engine: S slots, prefill groups of G rows, refill every R steps."""
  slots: int
  group: int
  interval: int
  prefill: str = "materialize"  # "materialize" (one point per group) or "factored" (per row)

  def __post_init__(self):
    if not 1 <= self.interval <= MAX_REFILL_INTERVAL:
      raise ValueError(f"refill interval must be in [1, {MAX_REFILL_INTERVAL}], got {self.interval}")
    if not 1 <= self.group <= self.slots:
      raise ValueError(f"prefill group must be in [1, slots={self.slots}], got {self.group}")
    if self.prefill not in ("materialize", "factored"):
      raise ValueError(f"prefill must be 'materialize' or 'factored', got {self.prefill!r}")

  def describe(self) -> str:
    return (f"engine: {self.slots} decode slots, prefill groups of {self.group} ({self.prefill}), "
            f"refill every R={self.interval} steps")


def plan_engine(n_rows: int, prompts: int, *, strategy: str, slots: int = 0, group: int = 0,
                interval: int = 4) -> EngineSpec:
  """The engine shape for ``n_rows`` rows of ``prompts`` prompts per point.

  Auto slots (``slots=0``): every row when there are at most 256, else 256 (toy scan, 21 points
  x 80 prompts x 64 tokens on one CPU device of a loaded 2-core machine: 128 / 256 / 512 slots,
  scan 8.4 / 6.4 / 7.7 s). Auto group: 16, at most the prompts per point under a materialized
  prefill (a group is one point's rows) and at most the slots.
  """
  slots = slots or min(n_rows, 256)
  group = min(group or 16, slots)
  if strategy != "factored":  # a materialized prefill group holds one point's rows
    group = min(group, prompts)
  return EngineSpec(slots=slots, group=group, interval=interval,
                    prefill="factored" if strategy == "factored" else "materialize")


@flax.struct.dataclass
class Rows:
  """Per-row decoding state of S slots (or of the G-row prefill buffer); leading axis [S].

  Attributes:
    cache: {"k", "v": [S, L, 1, K, C, E]}, C = P0 + T + N - 1 slots per row.
    key_mask: [S, 1, C] bool, slots holding real tokens.
    tok: [S] int32 token emitted last (fed at the next step).
    pos: [S] int32 its RoPE position.
    emitted: [S] int32 tokens emitted so far (= the next step's index).
    done: [S] bool: not decoding (EOS, the token limit, stopped, or an empty slot).
    nonfinite: [S] bool; lengths: [S] int32 tokens up to and including the first EOS.
    out: [S, N] int32 emitted tokens (pad after EOS).
    row: [S] int32 row id ``p * B + b``, -1 for an empty slot.
    coeffs: [S, n] float32 the row's point.
  """
  cache: dict
  key_mask: jax.Array
  tok: jax.Array
  pos: jax.Array
  emitted: jax.Array
  done: jax.Array
  nonfinite: jax.Array
  lengths: jax.Array
  out: jax.Array
  row: jax.Array
  coeffs: jax.Array


@flax.struct.dataclass
class EngineState:
  """Carry of the engine: slots, the prefill buffer, the queue and the results of every row.

  Attributes:
    slots: :class:`Rows` [S]; buf: :class:`Rows` [G], prefilled rows ``buf_at .. buf_n - 1`` not
      yet inserted; next_row: first row not yet prefilled.
    res_*: per row [R]: tokens [R, N], lengths, nonfinite, truncated (stopped before its end).
    decode_steps: int32 decoding steps run (each over all S slots: row-steps = S x decode_steps).
  """
  slots: Rows
  buf: Rows
  buf_at: jax.Array
  buf_n: jax.Array
  next_row: jax.Array
  res_tokens: jax.Array
  res_lengths: jax.Array
  res_nonfinite: jax.Array
  res_truncated: jax.Array
  decode_steps: jax.Array


def _empty_rows(n: int, cfg: model_lib.ModelConfig, cache_len: int, max_new_tokens: int, n_dirs: int,
                pad_id) -> Rows:
  shape = (n, cfg.num_layers, 1, cfg.num_kv_heads, cache_len, cfg.head_dim)
  kv = model_lib.kv_dtype(cfg)
  return Rows(cache={"k": jnp.zeros(shape, kv), "v": jnp.zeros(shape, kv)},
              key_mask=jnp.zeros((n, 1, cache_len), bool), tok=jnp.full((n,), pad_id, jnp.int32),
              pos=jnp.zeros((n,), jnp.int32), emitted=jnp.zeros((n,), jnp.int32), done=jnp.ones((n,), bool),
              nonfinite=jnp.zeros((n,), bool), lengths=jnp.zeros((n,), jnp.int32),
              out=jnp.full((n, max_new_tokens), pad_id, jnp.int32), row=jnp.full((n,), -1, jnp.int32),
              coeffs=jnp.zeros((n, n_dirs), jnp.float32))


def prefix_kv(params: PyTree, stacked_dirs: PyTree, coeffs: jax.Array, prefix: jax.Array | None, *,
              cfg: model_lib.ModelConfig) -> dict | None:
  """KV of the shared prefix [P0] at every point: ``{"k", "v": [P, L, K, P0, E]}`` (None without a prefix)."""
  if prefix is None:
    return None
  return jax.vmap(lambda c: decode_lib._prefill_prefix(perturb.materialize(params, stacked_dirs, c), prefix,
                                                       cfg=cfg))(coeffs)


def prefill_widths(prompt_len: int) -> tuple[int, ...]:
  """Static prompt widths a prefill group is run at: the group takes the narrowest that holds its
  longest prompt, so short prompts do not pay for the longest one's padding (rows arrive sorted
  by length, so a group's prompts are alike)."""
  widths = {prompt_len} | {-(-prompt_len * f // 4 // 8) * 8 for f in (1, 2, 3)}
  return tuple(sorted(w for w in widths if 0 < w <= prompt_len))


def _prefill_kv(params, stacked_dirs, coeffs, tok, msk, positions, pre, point, *, cfg, spec):
  """The model part of a prefill: (logits [G, V] of the last position, KV {"k", "v": [G, L, 1, K, w, E]})."""
  if spec.prefill == "materialize":  # one point per group: its weights, once
    weights = perturb.materialize(params, stacked_dirs, coeffs[point[0]])
    pre = None if pre is None else jax.tree.map(lambda x: x[0], pre)
    _, hidden, kv = model_lib.apply(weights, tok, positions, None, jnp.int32(0), msk, cfg=cfg,
                                    logits_at="last_hidden", prefix_cache=pre)
    logits = model_lib.output_logits(weights, hidden[:, -1], cfg=cfg)
    return logits, jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0)[:, :, None], kv)  # [L, G, ...] -> [G, L, 1, ...]

  def one(c, t, p, m, pre):  # factored per row: groups may span points
    w = perturb.factored(params, stacked_dirs, c)
    _, hidden, kv = model_lib.apply(w, t[None], p[None], None, jnp.int32(0), m[None], cfg=cfg,
                                    logits_at="last_hidden", prefix_cache=pre)
    return model_lib.output_logits(w, hidden[0, -1], cfg=cfg), kv
  return jax.vmap(one)(coeffs[point], tok, positions, msk, pre)


def _prefill(params, stacked_dirs, coeffs, tokens, mask, pre_kv, row0, n_rows, pad_id, *, cfg, spec: EngineSpec,
             max_new_tokens: int, eos_ids) -> Rows:
  """Prefill rows ``row0 .. row0 + n_rows - 1`` (n_rows <= G; the rest of the group repeats row0) and emit token 0."""
  G, (B, T), N = spec.group, tokens.shape, max_new_tokens
  valid = jnp.arange(G) < n_rows
  rows = jnp.where(valid, row0 + jnp.arange(G), row0)
  point, prompt = rows // B, rows % B
  tok, msk = tokens[prompt], mask[prompt]
  P0 = 0 if pre_kv is None else pre_kv["k"].shape[-2]
  positions = P0 + model_lib.positions_from_mask(msk)
  pre = None if pre_kv is None else jax.tree.map(lambda x: x[point], pre_kv)  # [G, L, K, P0, E]
  kv_dtype, room = model_lib.kv_dtype(cfg), N - 1

  def at_width(w):
    def run(_):
      logits, kv = _prefill_kv(params, stacked_dirs, coeffs, tok[:, T - w:], msk[:, T - w:], positions[:, T - w:],
                               pre, point, cfg=cfg, spec=spec)
      # [prefix | padding the narrower width skipped | the prompt's w columns | new tokens]
      parts = [] if pre is None else [jax.tree.map(lambda x: x[:, :, None], pre)]
      cache = {n: jnp.concatenate([p[n] for p in parts] + [
          jnp.zeros(kv[n].shape[:-2] + (T - w, kv[n].shape[-1]), kv_dtype), kv[n].astype(kv_dtype),
          jnp.zeros(kv[n].shape[:-2] + (room, kv[n].shape[-1]), kv_dtype)], axis=-2) for n in ("k", "v")}
      return logits, cache
    return run

  widths = prefill_widths(T)
  longest = jnp.max(jnp.where(valid, msk.sum(1), 0))
  logits, cache = jax.lax.switch(jnp.searchsorted(jnp.asarray(widths), longest), [at_width(w) for w in widths], None)
  key_mask = jnp.concatenate([jnp.ones((G, P0), bool), msk, jnp.zeros((G, room), bool)], axis=1)[:, None]
  best, finite = decode_lib.greedy_token(logits)
  eos = jnp.asarray(eos_ids, jnp.int32)
  done = ~valid | jnp.isin(best, eos) | (N <= 1)
  out = jnp.full((G, N), pad_id, jnp.int32).at[:, 0].set(best)
  return Rows(cache=cache, key_mask=key_mask, tok=best, pos=positions[:, -1] + 1, emitted=jnp.ones((G,), jnp.int32),
              done=done, nonfinite=~finite, lengths=jnp.ones((G,), jnp.int32), out=out,
              row=jnp.where(valid, rows, -1), coeffs=coeffs[point])


def _flush(state: EngineState, stop: jax.Array, max_new_tokens: int) -> EngineState:
  """Write every finished (or ``stop``-ped) slot's row to the results and free its slot."""
  s = state.slots
  finished = s.done | (s.emitted >= max_new_tokens)
  flush = (s.row >= 0) & (finished | stop)
  R = state.res_lengths.shape[0]
  at = jnp.where(flush, s.row, R)  # R: out of range, dropped
  return state.replace(
      res_tokens=state.res_tokens.at[at].set(s.out, mode="drop"),
      res_lengths=state.res_lengths.at[at].set(s.lengths, mode="drop"),
      res_nonfinite=state.res_nonfinite.at[at].set(s.nonfinite, mode="drop"),
      res_truncated=state.res_truncated.at[at].set(~finished, mode="drop"),
      slots=s.replace(row=jnp.where(flush, -1, s.row), done=s.done | flush))


def _insert(state: EngineState) -> EngineState:
  """Move buffered rows into free slots, lowest slot first: a scatter of the G buffer rows."""
  s, b = state.slots, state.buf
  S, G = s.row.shape[0], b.row.shape[0]
  free = s.row < 0
  k = jnp.minimum(free.sum(), state.buf_n - state.buf_at)
  free_idx = jnp.nonzero(free, size=S, fill_value=S)[0]
  rel = jnp.arange(G) - state.buf_at
  take = (rel >= 0) & (rel < k)
  target = jnp.where(take, free_idx[jnp.clip(rel, 0, S - 1)], S)
  slots = jax.tree.map(lambda x, y: x.at[target].set(y, mode="drop"), s, b)
  return state.replace(slots=slots, buf_at=state.buf_at + k)


def _refill(state: EngineState, prefill_fn, n_rows_total: int, rows_per_point: int, spec: EngineSpec) -> EngineState:
  """Fill free slots: the buffer's rows first, then new prefill groups while slots are free and rows pending.

  After an insert either no slot is free or the buffer is empty, so a group is only ever
  prefilled into an empty buffer. (A ``lax.cond`` around the prefill copied the whole state,
  KV cache included, at every refill on CPU.)
  """
  def more(st):
    return jnp.any(st.slots.row < 0) & (st.next_row < n_rows_total)

  def body(st):
    n = jnp.minimum(spec.group, n_rows_total - st.next_row)
    if spec.prefill == "materialize":  # a group never spans two points
      n = jnp.minimum(n, rows_per_point - st.next_row % rows_per_point)
    st = st.replace(buf=prefill_fn(st.next_row, n), buf_at=jnp.int32(0), buf_n=n.astype(jnp.int32),
                    next_row=st.next_row + n)
    return _insert(st)

  return jax.lax.while_loop(more, body, _insert(state))


def _generate(state: EngineState, params, stacked_dirs, pad_id, *, cfg, spec: EngineSpec, max_new_tokens: int,
              eos_ids, prompt_slots: int) -> EngineState:
  """Up to R greedy steps over all S slots (fewer once every slot is done)."""
  N = max_new_tokens
  eos = jnp.asarray(eos_ids, jnp.int32)

  def step_one(c, cache, key_mask, tok, pos, emitted):
    w = perturb.factored(params, stacked_dirs, c)
    index = prompt_slots + emitted - 1  # the fed token's cache slot
    key_mask = jax.lax.dynamic_update_slice(key_mask, jnp.ones((1, 1), bool), (0, index))
    logits, _, cache = model_lib.apply(w, tok[None, None], pos[None, None], cache, index, key_mask, cfg=cfg)
    return logits[0, 0], cache, key_mask

  def body(carry):
    st, i = carry
    s = st.slots
    logits, cache, key_mask = jax.vmap(step_one)(s.coeffs, s.cache, s.key_mask, s.tok, s.pos, s.emitted)
    best, finite = decode_lib.greedy_token(logits)
    active = ~s.done
    tok = jnp.where(active, best, pad_id)
    write = active[:, None] & (jnp.arange(N)[None, :] == s.emitted[:, None])
    emitted = s.emitted + active
    s = s.replace(cache=cache, key_mask=key_mask, tok=tok, pos=s.pos + active, emitted=emitted,
                  out=jnp.where(write, tok[:, None], s.out), lengths=s.lengths + active,
                  nonfinite=s.nonfinite | (~finite & active),
                  done=s.done | (active & jnp.isin(tok, eos)) | (emitted >= N))
    return st.replace(slots=s, decode_steps=st.decode_steps + 1), i + 1

  state, _ = jax.lax.while_loop(lambda c: (c[1] < spec.interval) & ~jnp.all(c[0].slots.done), body,
                                (state, jnp.int32(0)))
  return state


def init_state(cfg: model_lib.ModelConfig, spec: EngineSpec, *, n_rows: int, n_dirs: int, cache_len: int,
               max_new_tokens: int, pad_id) -> EngineState:
  """Empty slots and buffer, every row pending."""
  return EngineState(
      slots=_empty_rows(spec.slots, cfg, cache_len, max_new_tokens, n_dirs, pad_id),
      buf=_empty_rows(spec.group, cfg, cache_len, max_new_tokens, n_dirs, pad_id),
      buf_at=jnp.int32(0), buf_n=jnp.int32(0), next_row=jnp.int32(0),
      res_tokens=jnp.full((n_rows, max_new_tokens), pad_id, jnp.int32),
      res_lengths=jnp.zeros((n_rows,), jnp.int32), res_nonfinite=jnp.zeros((n_rows,), bool),
      res_truncated=jnp.zeros((n_rows,), bool), decode_steps=jnp.int32(0))


def _parts(params, stacked_dirs, coeffs, tokens, mask, pre_kv, pad_id, *, cfg, spec, max_new_tokens, eos_ids):
  """(initial state, refill, generate) of one slice; ``pre_kv`` from :func:`prefix_kv`."""
  P, (B, T) = coeffs.shape[0], tokens.shape
  n_rows = P * B
  P0 = 0 if pre_kv is None else pre_kv["k"].shape[-2]
  cache_len = P0 + T + max_new_tokens - 1
  state = init_state(cfg, spec, n_rows=n_rows, n_dirs=coeffs.shape[1], cache_len=cache_len,
                     max_new_tokens=max_new_tokens, pad_id=pad_id)
  prefill_fn = lambda r0, n: _prefill(params, stacked_dirs, coeffs, tokens, mask, pre_kv, r0, n, pad_id, cfg=cfg,
                                      spec=spec, max_new_tokens=max_new_tokens, eos_ids=eos_ids)
  refill = lambda st: _refill(st, prefill_fn, n_rows, B, spec)
  generate = lambda st: _generate(st, params, stacked_dirs, pad_id, cfg=cfg, spec=spec,
                                  max_new_tokens=max_new_tokens, eos_ids=eos_ids, prompt_slots=P0 + T)
  return state, refill, generate


def _pending(st: EngineState, n_rows: int) -> jax.Array:
  return (st.next_row < n_rows) | (st.buf_at < st.buf_n) | jnp.any(st.slots.row >= 0)


def _run(params, stacked_dirs, coeffs, tokens, mask, pad_id, prefix, *, cfg, spec, max_new_tokens, eos_ids):
  """One device's whole scan of its points (the body of :func:`programs`' ``run``)."""
  n_rows = coeffs.shape[0] * tokens.shape[0]
  pre_kv = prefix_kv(params, stacked_dirs, coeffs, prefix, cfg=cfg)
  state, refill, generate = _parts(params, stacked_dirs, coeffs, tokens, mask, pre_kv, pad_id, cfg=cfg, spec=spec,
                                   max_new_tokens=max_new_tokens, eos_ids=eos_ids)
  no_stop = jnp.zeros((spec.slots,), bool)
  return jax.lax.while_loop(lambda st: _pending(st, n_rows),
                            lambda st: generate(refill(_flush(st, no_stop, max_new_tokens))), state)


def _start(params, stacked_dirs, coeffs, tokens, mask, pad_id, prefix, *, cfg, spec, max_new_tokens, eos_ids):
  """One device's first refill interval, and its prefix KV."""
  pre_kv = prefix_kv(params, stacked_dirs, coeffs, prefix, cfg=cfg)
  state, refill, generate = _parts(params, stacked_dirs, coeffs, tokens, mask, pre_kv, pad_id, cfg=cfg, spec=spec,
                                   max_new_tokens=max_new_tokens, eos_ids=eos_ids)
  return generate(refill(state)), pre_kv


def _interval(state, stop, params, stacked_dirs, coeffs, tokens, mask, pad_id, pre_kv, *, cfg, spec, max_new_tokens,
              eos_ids):
  """One device's refill interval: flush finished and ``stop`` [S] slots, refill, then up to R greedy steps."""
  _, refill, generate = _parts(params, stacked_dirs, coeffs, tokens, mask, pre_kv, pad_id, cfg=cfg, spec=spec,
                               max_new_tokens=max_new_tokens, eos_ids=eos_ids)
  return generate(refill(_flush(state, stop, max_new_tokens)))


def default_mesh() -> Mesh:
  """One device, axes ('points', 'model'): the engine's mesh when none is given."""
  return Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("points", "model"))


_add_device_axis = functools.partial(jax.tree.map, lambda x: x[None])
_drop_device_axis = functools.partial(jax.tree.map, lambda x: x[0])


@functools.lru_cache(maxsize=16)
def programs(mesh: Mesh, *, cfg: model_lib.ModelConfig, spec: EngineSpec, max_new_tokens: int,
             eos_ids: tuple[int, ...]):
  """The engine's jitted programs on ``mesh``: ``(run, start, interval)``.

  Every device of the 'points' axis runs its own engine on its own block of the slice's points
  (``shard_map``): its own S slots, queue and results, no communication but the model axis'.
  ``run(params, dirs, coeffs, tokens, mask, pad_id, prefix) -> {"tokens" [P, B, N], "lengths",
  "nonfinite" [P, B], "decode_steps" [D]}``; ``start(...same) -> (state, prefix_kv)`` and
  ``interval(state, stop [D, S], params, dirs, coeffs, tokens, mask, pad_id, prefix_kv) -> state``
  (state donated), where every leaf of a state has a leading [D] devices axis.
  """
  static = dict(cfg=cfg, spec=spec, max_new_tokens=max_new_tokens, eos_ids=eos_ids)
  pts, rep = PartitionSpec("points"), PartitionSpec()
  args = (rep, rep, pts, rep, rep, rep, rep)  # params, dirs, coeffs, tokens, mask, pad_id, prefix / prefix_kv
  shard = functools.partial(jax.shard_map, mesh=mesh, axis_names=frozenset({"points"}), check_vma=False)

  def run(params, stacked_dirs, coeffs, tokens, mask, *a):
    st = _run(params, stacked_dirs, coeffs, tokens, mask, *a, **static)
    shape = (coeffs.shape[0], tokens.shape[0])  # this device's points x prompts
    return {"tokens": st.res_tokens.reshape(shape + (max_new_tokens,)), "lengths": st.res_lengths.reshape(shape),
            "nonfinite": st.res_nonfinite.reshape(shape), "decode_steps": st.decode_steps[None]}

  def start(*a):
    return _add_device_axis(_start(*a, **static))

  def interval(state, stop, *a):
    *a, pre_kv = a
    return _add_device_axis(_interval(_drop_device_axis(state), stop[0], *a, _drop_device_axis(pre_kv), **static))

  interval_args = (pts, pts) + args[:-1] + (pts,)  # the prefix KV is per point: [P, ...]
  return (jax.jit(shard(run, in_specs=args, out_specs=pts)),
          jax.jit(shard(start, in_specs=args, out_specs=(pts, pts))),
          jax.jit(shard(interval, in_specs=interval_args, out_specs=pts), donate_argnums=(0,)))


@dataclasses.dataclass
class _RowSteps:
  """Decoding row-steps, pulled to the host on ``int()``: slots x the steps each device ran."""
  steps: jax.Array  # [D]
  slots: int
  to_host: Any = np.asarray

  def __int__(self) -> int:
    return int(self.to_host(self.steps).sum()) * self.slots


def decode_rows(params, stacked_dirs, coeffs, tokens, mask, pad_id: int, prefix=None, *, cfg, spec: EngineSpec,
                max_new_tokens: int, eos_ids: tuple[int, ...], is_decided=None, to_host=np.asarray,
                mesh: Mesh | None = None, compiled=None) -> dict:
  """Generations of a slice of P points: ``tokens [P, B, N]``, ``lengths``, ``nonfinite`` [P, B],
  ``truncated`` [P, B] (with ``is_decided``) and ``decode_row_steps`` (slots x steps run, all devices).

  Device arrays without ``is_decided``, host ones with it. P must be a multiple of the mesh's
  'points' devices; each device decodes its block of points with ``spec.slots`` slots.

  With ``is_decided(tokens) -> bool`` the host looks at every running row once per refill
  interval and stops those whose answer is known (e.g. a refusal keyword, which more tokens
  cannot undo); they keep the tokens they had and are marked truncated. ``compiled``: the
  ahead-of-time compiled programs (:func:`programs`, ``.lower(...).compile()``), the same tuple.
  """
  mesh = mesh or default_mesh()
  P, (B, _) = coeffs.shape[0], tokens.shape
  args = (params, stacked_dirs, coeffs, tokens, mask, np.int32(pad_id), prefix)
  run_fn, start_fn, interval_fn = compiled or programs(mesh, cfg=cfg, spec=spec, max_new_tokens=max_new_tokens,
                                                       eos_ids=tuple(eos_ids))
  shape = (P, B)
  if is_decided is None:  # device arrays: the host pulls them when it needs them
    out = run_fn(*args)
    steps = out.pop("decode_steps")
    return {**out, "decode_row_steps": _RowSteps(steps, spec.slots, to_host)}
  state, pre_kv = start_fn(*args)
  while True:  # one host look per refill interval, never per token
    s = state.slots
    row, done, emitted, out, next_row, buf_at, buf_n = (to_host(x) for x in (
        s.row, s.done, s.emitted, s.out, state.next_row, state.buf_at, state.buf_n))
    if not ((next_row < P // len(next_row) * B).any() or (buf_at < buf_n).any() or (row >= 0).any()):
      break
    stop = np.zeros(row.shape, bool)  # [D, S]
    for d, k in zip(*np.nonzero((row >= 0) & ~done & (emitted < max_new_tokens))):
      stop[d, k] = is_decided(out[d, k, :emitted[d, k]])
    state = interval_fn(state, stop, *args[:-1], pre_kv)
  return {"tokens": to_host(state.res_tokens).reshape(shape + (max_new_tokens,)),
          "lengths": to_host(state.res_lengths).reshape(shape),
          "nonfinite": to_host(state.res_nonfinite).reshape(shape),
          "truncated": to_host(state.res_truncated).reshape(shape),
          "decode_row_steps": int(to_host(state.decode_steps).sum()) * spec.slots}
