"""Landscape scans: slices of grid points decoded under ``vmap`` in one jitted call, scored on the host.

The Python loop runs over *slices*, never over points: one compiled call (a program of
``jaxscape.core.slices``) perturbs the weights for every point of a slice (materialize or
factored, see ``jaxscape.core.perturb``), prefills all prompts and runs the whole greedy loop. Each finished slice is written
atomically to ``OUT/points/`` with its point indices, so an interrupted scan resumes
where it stopped (see ``jaxscape.core.results``).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxscape.core import decode as decode_lib
from jaxscape.core import model as model_lib
from jaxscape.core import plan as plan_lib
from jaxscape.core import prompts as prompts_lib
from jaxscape.core import sharding as sharding_lib
from jaxscape.core import slices
from jaxscape.core.config import ModelConfig

PyTree = Any
# ----------------------------------------------------------------- early stopping


@jax.jit  # no donation: the compacted state is smaller, so XLA could not reuse the old buffers
def compact_state(state: decode_lib.DecodeState, point_idx: jax.Array, row_idx: jax.Array,
                  keep: jax.Array) -> decode_lib.DecodeState:
  """Gather the rows still being decoded, each device from its own block of points.

  With the points split over D devices in contiguous blocks, ``point_idx[d]`` indexes within
  block d, so no point moves between devices: ``new[d * P'd + j, b] = state[d * Pd +
  point_idx[d, j], row_idx[d * P'd + j, b]]``. (A global gather over a sharded points axis made
  XLA gather the whole state onto every device first, doubling peak memory; BENCHMARKS.md,
  "--stop_when_decided after the compaction fix".) Rows of different length groups may now
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
# Each new batch shape compiles the chunk program again, so a few large cuts beat many small
# ones. Where every point keeps many of its prompts undecided, "only when it halves, to powers of
# two" never fired (no work saved); >= 15% with rows in multiples of B // ROW_STEPS fires a few
# times and beats the plain decode (BENCHMARKS.md, "--stop_when_decided after the compaction fix").
COMPACT_SAVING = 0.15
ROW_STEPS = 10  # rows per point are rounded up to a multiple of B // ROW_STEPS: <= ~10 row counts


def _round_up(n: int, multiple: int, cap: int) -> int:
  """``n`` rounded up to a multiple of ``multiple``, at most ``cap``."""
  return min(-(-n // multiple) * multiple, cap)


@dataclasses.dataclass
class _Rows:
  """Host bookkeeping of :func:`decode_until_decided`: which slice point and prompt each state row holds."""
  point_of: np.ndarray  # [P'] state point -> slice point
  row_of: np.ndarray  # [P', B'] state row -> prompt row
  valid: np.ndarray  # [P', B'] bool, a real (not filler) row still in the batch


def _compaction(rows: _Rows, running: np.ndarray, devices: int, batch: int):
  """``(local [D, P'd], ridx [P', B'], keep [P', B'])`` of a compaction that cuts the batch by at least
  :data:`COMPACT_SAVING`, or None.

  Points stay on their device (see :func:`compact_state`): each keeps its own live points, as
  many per device as the busiest device has; a device with fewer repeats its first live point
  (or point 0 of its block) as filler. Rows per point are rounded up to a multiple of
  ``batch // ROW_STEPS`` so few shapes get compiled.
  """
  block = len(rows.point_of) // devices
  live = [np.nonzero(running[d * block:(d + 1) * block].any(1))[0] for d in range(devices)]
  new_block = max(1, max(len(l) for l in live))
  new_P = devices * new_block
  new_B = _round_up(int(running.sum(1).max()), max(1, batch // ROW_STEPS), cap=rows.row_of.shape[1])
  if new_P * new_B > (1 - COMPACT_SAVING) * rows.row_of.size:
    return None
  local = np.stack([np.concatenate([l, np.full(new_block - len(l), l[0] if len(l) else 0)]) for l in live])
  pidx = (local + block * np.arange(devices)[:, None]).reshape(-1)  # state point indices, [P']
  ridx = np.zeros((new_P, new_B), np.int32)
  keep = np.zeros((new_P, new_B), bool)
  for k, p in enumerate(pidx):
    if k % new_block < len(live[k // new_block]):  # a live point, not filler
      kept = np.nonzero(running[p])[0]
      ridx[k, :len(kept)] = kept
      keep[k, :len(kept)] = True
  return local.astype(np.int32), ridx, keep


def decode_until_decided(params: PyTree, stacked_dirs: PyTree, coeffs: np.ndarray, tokens, mask, pad_id: int,
                         prefix, *, decoder: decode_lib.Decoder, strategy: str,
                         is_decided: Callable[[np.ndarray], bool], chunk: int = 32, point_multiple: int = 1,
                         put: Callable = lambda x: x, to_host: Callable = np.asarray) -> decode_lib.Generation:
  """Chunked decoding of one slice that stops rows whose answer is already known.

  After every ``chunk`` tokens the host checks each running row with ``is_decided(tokens)``
  (e.g. "the text holds a refusal keyword", which more tokens cannot undo); decided rows stop,
  and once the running rows fit in a batch at least :data:`COMPACT_SAVING` smaller, the states
  are compacted (:func:`_compaction`; with the points split over ``point_multiple`` devices,
  each device keeps its own points) and decoding goes on. Tokens of a row that ended by EOS or
  at ``max_new_tokens`` are exactly those of :func:`slices.decode_slice`; a decided row keeps the
  tokens it had.

  Returns:
    ``Generation`` of numpy arrays [P, B, ...]; ``row_steps`` sums, over the chunks, the rows of
    the decoding batch x the steps the chunk ran (compaction shrinks the batch; rows already
    stopped but not compacted away count).
  """
  P, B, N = coeffs.shape[0], tokens.shape[0], decoder.max_new_tokens
  gen = decode_lib.Generation(tokens=np.full((P, B, N), pad_id, np.int32), lengths=np.zeros((P, B), np.int32),
                              nonfinite=np.zeros((P, B), bool), truncated=np.zeros((P, B), bool), row_steps=0)
  state = slices.prefill_slice(params, stacked_dirs, put(coeffs), tokens, mask, np.int32(pad_id), prefix,
                               decoder=decoder, strategy=strategy)
  rows = _Rows(point_of=np.arange(P), row_of=np.tile(np.arange(B), (P, 1)), valid=np.ones((P, B), bool))
  limit, step, row_steps = 0, 1, 0
  ends = decode_lib.phase_ends(N)
  while True:
    limit = min(limit + chunk, N)
    # Grow the cache by phases (few distinct shapes to compile), never to more than this chunk needs.
    end = next(e for e in ends if e >= limit)
    if end > state.room:
      state = slices.grow_state(state, end)
    state, new_step = slices.extend_slice(params, stacked_dirs, put(coeffs[rows.point_of]), state, np.int32(step),
                                          put(~rows.valid), np.int32(limit), np.int32(pad_id), decoder=decoder,
                                          strategy=strategy)
    out, done, lengths, nonfinite = (to_host(x) for x in (state.out, state.done, state.lengths, state.nonfinite))
    row_steps += (int(new_step) - step) * rows.valid.size  # the shape of the decoding batch
    step = int(new_step)
    running = np.zeros_like(rows.valid)
    for p, b in zip(*np.nonzero(rows.valid)):
      sp, sb = rows.point_of[p], rows.row_of[p, b]
      finished = done[p, b] or step >= N
      decided = not finished and is_decided(out[p, b, :step])
      if finished or decided:
        gen.tokens[sp, sb], gen.lengths[sp, sb] = out[p, b], lengths[p, b]
        gen.nonfinite[sp, sb], gen.truncated[sp, sb] = nonfinite[p, b], decided
      else:
        running[p, b] = True
    if not running.any():
      return gen.replace(row_steps=row_steps)
    cut = _compaction(rows, running, point_multiple, B)
    if cut is None:
      rows.valid = running
      continue
    local, ridx, keep = cut
    state = compact_state(state, put(local), put(ridx), put(keep))
    pidx = (local + len(rows.point_of) // point_multiple * np.arange(point_multiple)[:, None]).reshape(-1)
    rows = _Rows(point_of=rows.point_of[pidx], row_of=np.take_along_axis(rows.row_of[pidx], ridx, axis=1), valid=keep)


# ----------------------------------------------------------------- the compiled scan


@dataclasses.dataclass(frozen=True)
class ScanRows:
  """The prompts every point of a scan decodes, laid out for decoding.

  Attributes:
    tokens: [B, W] int32 left-padded prompts without their shared prefix, rows sorted by length
      (longest first) and cut to the longest row's width.
    mask: [B, W] bool, True for real tokens.
    prefix: [p] int32 tokens every prompt starts with (chat template + system prompt), prefilled
      once per point; None when not shared.
    groups: static length groups of the sorted rows (``prompts.length_groups``).
    unsort: [B] int, ``sorted_rows[unsort]`` is in prompt order.
    prompt_lengths: [B] int, real tokens of each prompt (prefix included), in prompt order.
  """
  tokens: np.ndarray
  mask: np.ndarray
  prefix: np.ndarray | None
  groups: tuple[tuple[int, int, int], ...]
  unsort: np.ndarray
  prompt_lengths: np.ndarray

  @property
  def prefix_len(self) -> int:
    return 0 if self.prefix is None else len(self.prefix)


def layout_rows(tokens: np.ndarray, mask: np.ndarray, *, pad_id: int, share_prefix: bool = True) -> ScanRows:
  """:class:`ScanRows` of tokenized, left-padded prompts [B, T] (``prompts.tokenize``)."""
  prompt_lengths = mask.sum(1)
  prefix, tokens, mask = (prompts_lib.split_shared_prefix(tokens, mask, pad_id=pad_id) if share_prefix
                          else (None, tokens, mask))
  order, groups = prompts_lib.length_groups(mask)
  # Columns left of the longest group are padding in every row: dropped, so the decode cache
  # (prompt slots + new tokens) has no slot that is never filled.
  width = groups[0][2]
  return ScanRows(tokens=tokens[order, -width:], mask=mask[order, -width:], prefix=prefix, groups=groups,
                  unsort=np.argsort(order), prompt_lengths=prompt_lengths)


@dataclasses.dataclass(frozen=True)
class ChoiceRows:
  """Multiple-choice questions scored at every point: [Q, T] left-padded ``tokens``/``mask``,
  ``targets`` [Q, 1, C] answer-letter ids (``score.choice_targets``), ``answers`` [Q] correct indices."""
  tokens: np.ndarray
  mask: np.ndarray
  targets: np.ndarray
  answers: np.ndarray


class SliceOutput(NamedTuple):
  """One slice's results on the devices: its generations (None without decoding) and the
  answer-letter log-probabilities [P, Q, C] (None without multiple choice)."""
  generation: decode_lib.Generation | None
  choice_logprobs: jax.Array | None


@dataclasses.dataclass(frozen=True)
class ScanSetup:
  """What a scan runs, beyond the model: the decoder, its rows and choices, and how early stopping works.

  ``is_decided(tokens [n]) -> bool`` turns on chunked decoding that stops decided rows
  (:func:`decode_until_decided`, every ``chunk_tokens`` tokens); None decodes every row to its end.
  """
  decoder: decode_lib.Decoder
  rows: ScanRows | None
  choices: ChoiceRows | None
  pad_id: int
  is_decided: Callable[[np.ndarray], bool] | None = None
  chunk_tokens: int = 32


class CompiledScan:
  """A scan's programs, compiled once for its plan; ``scan(coeffs [P, n])`` runs one slice.

  Build it with :func:`compile_scan`, which owns the memory check. Calls dispatch
  asynchronously (except chunked early stopping, which checks rows on the host between chunks).
  """

  def __init__(self, setup: ScanSetup, plan: plan_lib.Plan, mesh, placed: dict, programs: dict,
               compiled_bytes: int | None, compile_s: float):
    self.setup, self.plan, self.mesh = setup, plan, mesh
    self.compiled_bytes, self.compile_s = compiled_bytes, compile_s
    # Per program, XLA's bytes by kind (plan.memory_breakdown): arguments are θ, the directions, the prompts.
    self.memory = {name: plan_lib.memory_breakdown(p) for name, p in programs.items()}
    self._placed, self._programs = placed, programs

  def _put_points(self, x):
    return sharding_lib.put(x, sharding_lib.points_sharding(self.mesh, np.ndim(x)))

  def __call__(self, coeffs: np.ndarray) -> SliceOutput:
    s, d, progs = self.setup, self._placed, self._programs
    c = self._put_points(coeffs)
    choice = progs["choices"](d["params"], d["stacked"], c, *d["choices"]) if "choices" in progs else None
    gen = None
    if s.rows is not None and s.is_decided is not None:
      gen = decode_until_decided(
          d["params"], d["stacked"], coeffs, d["tokens"], d["mask"], s.pad_id, d["prefix"], decoder=s.decoder,
          strategy=self.plan.strategy, is_decided=s.is_decided, chunk=s.chunk_tokens,
          point_multiple=self.mesh.shape[sharding_lib.POINTS], put=self._put_points, to_host=sharding_lib.to_host)
    elif s.rows is not None:
      gen = progs["decode"](d["params"], d["stacked"], c, d["tokens"], d["mask"],
                            np.int32(s.decoder.max_new_tokens), np.int32(s.pad_id), d["prefix"])
    return SliceOutput(gen, choice)


def _place(params, stacked, setup: ScanSetup, mesh) -> dict:
  """The scan's inputs on the mesh: params and directions by their shardings, prompts replicated."""
  rep = sharding_lib.replicated(mesh)
  placed = {"params": sharding_lib.put(params, sharding_lib.param_shardings(params, mesh)),
            "stacked": sharding_lib.put(stacked, sharding_lib.direction_shardings(params, mesh)),
            "tokens": None, "mask": None, "prefix": None}
  if setup.rows is not None:
    r = setup.rows
    placed.update(tokens=sharding_lib.put(r.tokens, rep), mask=sharding_lib.put(r.mask, rep),
                  prefix=None if r.prefix is None else sharding_lib.put(r.prefix, rep))
  if setup.choices is not None:
    ch = setup.choices
    placed["choices"] = sharding_lib.put((ch.tokens, ch.mask, ch.targets), (rep, rep, rep))
  return placed


def _compile_programs(setup: ScanSetup, plan: plan_lib.Plan, mesh, placed: dict, n_dirs: int,
                      check_chunk: bool) -> tuple[dict, int | None]:
  """The slice programs of ``plan``, compiled ahead of time, and the most device bytes one needs.

  With early stopping the chunk programs compile during the scan; ``check_chunk`` compiles its
  largest one (the whole slice, cache grown to ``max_new_tokens``) only to read its size.
  """
  d, dec = placed, setup.decoder
  coeffs = jax.ShapeDtypeStruct((plan.slice_size, n_dirs), jnp.float32, sharding=sharding_lib.points_sharding(mesh))
  programs, sizes = {}, []
  if setup.rows is not None and setup.is_decided is None:
    programs["decode"] = slices.decode_slice.lower(
        d["params"], d["stacked"], coeffs, d["tokens"], d["mask"], np.int32(dec.max_new_tokens),
        np.int32(setup.pad_id), d["prefix"], decoder=dec, strategy=plan.strategy).compile()
  if setup.rows is not None and setup.is_decided is not None and check_chunk:
    sizes.append(plan_lib.compiled_bytes(_largest_chunk(setup, plan, mesh, d, coeffs)))
  if setup.choices is not None:
    programs["choices"] = slices.choice_logprobs_slice.lower(d["params"], d["stacked"], coeffs, *d["choices"],
                                                             cfg=dec.cfg, strategy=plan.strategy).compile()
  sizes += [plan_lib.compiled_bytes(p) for p in programs.values()]
  sizes = [b for b in sizes if b is not None]
  return programs, (max(sizes) if sizes else None)


def _largest_chunk(setup: ScanSetup, plan: plan_lib.Plan, mesh, d: dict, coeffs: jax.ShapeDtypeStruct):
  """The largest program :func:`decode_until_decided` can run, compiled (for its memory analysis):
  a chunk of the whole, uncompacted slice with the cache grown for ``max_new_tokens`` (compaction
  only shrinks the state, and earlier phases hold fewer slots)."""
  dec = setup.decoder
  state = jax.eval_shape(lambda c: decode_lib.grow(
      slices.prefill_slice(d["params"], d["stacked"], c, d["tokens"], d["mask"], np.int32(setup.pad_id),
                           d["prefix"], decoder=dec, strategy=plan.strategy), dec.max_new_tokens), coeffs)
  place = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_lib.points_sharding(mesh, x.ndim))
  state = jax.tree.map(place, state)
  stop = place(jax.ShapeDtypeStruct(state.done.shape, jnp.bool_))
  return slices.extend_slice.lower(d["params"], d["stacked"], coeffs, state, np.int32(1), stop,
                                   np.int32(dec.max_new_tokens), np.int32(setup.pad_id), decoder=dec,
                                   strategy=plan.strategy).compile()


def compile_scan(params: PyTree, stacked_dirs: PyTree, setup: ScanSetup, *, mesh, n_points: int,
                 strategy: str = "auto", slice_size: int = 0, memory_budget: int | None = None,
                 log: Callable[[str], None] = lambda line: None) -> CompiledScan:
  """Plan a scan of ``n_points`` points, place its inputs on ``mesh`` and compile its programs.

  The plan (``plan.plan_scan``) estimates the bytes of a slice; the compiled programs state the
  bytes XLA assigned them. A slice whose programs need more than the budget is halved and
  compiled again (a forced ``slice_size`` only warns). Far below the budget the chunk program of
  early stopping is not compiled just to be measured.

  Args:
    params: θ (layers stacked); stacked_dirs: directions with leaves [n, *S].
    setup: :class:`ScanSetup`; its decoder's config must already be the mesh's
      (``sharding.config_for_mesh``).
    mesh: ('points', 'model') mesh.
    log: called with each line worth telling the user (the plan, a shrink, the compiled size).
  """
  cfg = setup.decoder.cfg
  n_dirs = jax.tree.leaves(stacked_dirs)[0].shape[0]
  point_shards, model_shards = mesh.shape[sharding_lib.POINTS], mesh.shape[sharding_lib.MODEL]
  rows = setup.rows
  batch = len(rows.tokens) if rows is not None else len(setup.choices.tokens)
  width = (rows.tokens.shape[1] + rows.prefix_len) if rows is not None else setup.choices.tokens.shape[1]
  size = dict(n_dirs=n_dirs, batch=batch, seq_len=width + setup.decoder.max_new_tokens, model_shards=model_shards,
              max_new_tokens=setup.decoder.max_new_tokens)
  plan = plan_lib.plan_scan(cfg, n_points=max(1, n_points), budget=memory_budget, strategy=strategy,
                            slice_size=slice_size, point_shards=point_shards, **size)
  log(plan.describe())
  if n_points == 0:  # every point is done (a finished run resumed): nothing to place or compile
    return CompiledScan(setup, plan, mesh, {}, {}, None, 0.0)
  placed = _place(params, stacked_dirs, setup, mesh)
  t0 = time.perf_counter()
  shrunk = False
  while True:
    check_chunk = shrunk or plan.bytes_per_device > plan.budget // 2
    programs, needed = _compile_programs(setup, plan, mesh, placed, n_dirs, check_chunk)
    smaller = plan.slice_size // point_shards // 2 * point_shards  # halve the points per device
    if needed is None or needed <= plan.budget:
      break
    if slice_size or smaller <= 0:  # a forced slice, or one point per device already
      log(f"warning: the compiled slice needs {needed / (1 << 30):.2f} GiB per device, over the budget of "
          f"{plan.budget / (1 << 30):.2f} GiB")
      break
    plan, shrunk = plan_lib.replan_slice(plan, cfg, slice_size=smaller, point_shards=point_shards, **size), True
    log(f"compiled slice needs {needed / (1 << 30):.2f} GiB per device, over the budget: {plan.describe()}")
  if needed is not None:
    log(f"compiled: {needed / (1 << 30):.2f} GiB per device (XLA's buffers for one slice: params, directions, "
        f"activations, KV cache)")
  return CompiledScan(setup, plan, mesh, placed, programs, needed, time.perf_counter() - t0)


def abstract_inputs(cfg: ModelConfig, mesh, *, n_dirs: int) -> tuple[PyTree, PyTree]:
  """θ and ``n_dirs`` stacked directions as ``jax.ShapeDtypeStruct`` trees: resident dtypes
  (``ModelConfig.resident_dtype``), placed on ``mesh`` as a scan places them. Nothing is allocated."""
  shapes = jax.eval_shape(lambda: model_lib.init_params(cfg, jax.random.key(0)))

  def resident(path, s):
    stacked = jax.tree_util.keystr(path[:1]) == "['layers']"
    return jax.ShapeDtypeStruct(s.shape, cfg.resident_dtype(len(s.shape) - (1 if stacked else 0)))

  params = jax.tree_util.tree_map_with_path(resident, shapes)
  dirs = jax.tree.map(lambda s: jax.ShapeDtypeStruct((n_dirs,) + s.shape, s.dtype), params)
  place = lambda tree, shardings: jax.tree.map(  # noqa: E731
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings)
  return (place(params, sharding_lib.param_shardings(params, mesh)),
          place(dirs, sharding_lib.direction_shardings(params, mesh)))


def compile_abstract(cfg: ModelConfig, plan: plan_lib.Plan, mesh, *, n_dirs: int, batch: int, prompt_tokens: int,
                     max_new_tokens: int) -> dict | None:
  """XLA's bytes per device (``plan.memory_breakdown``) of ``plan``'s slice program, compiled ahead of time
  from shapes alone: the exact program a scan of ``batch`` prompts of ``prompt_tokens`` tokens would run
  (one length group, no shared prefix), for shapes this machine could never hold."""
  cfg = sharding_lib.config_for_mesh(cfg, mesh)
  params, dirs = abstract_inputs(cfg, mesh, n_dirs=n_dirs)
  rep = sharding_lib.replicated(mesh)
  tokens = jax.ShapeDtypeStruct((batch, prompt_tokens), jnp.int32, sharding=rep)
  mask = jax.ShapeDtypeStruct((batch, prompt_tokens), jnp.bool_, sharding=rep)
  coeffs = jax.ShapeDtypeStruct((plan.slice_size, n_dirs), jnp.float32, sharding=sharding_lib.points_sharding(mesh))
  decoder = decode_lib.Decoder(cfg=cfg, max_new_tokens=max_new_tokens, eos_ids=(0,),
                               groups=((0, batch, prompt_tokens),))
  compiled = slices.decode_slice.lower(params, dirs, coeffs, tokens, mask, np.int32(max_new_tokens), np.int32(0),
                                       None, decoder=decoder, strategy=plan.strategy).compile()
  return plan_lib.memory_breakdown(compiled)


# ----------------------------------------------------------------- the loop


def pad_slice(ids: list[int], size: int) -> list[int]:
  """Pad a slice's point ids to ``size`` by repeating the last (outputs dropped on the host)."""
  return ids + [ids[-1]] * (size - len(ids))


def run_slices(scan: Callable[[np.ndarray], Any], slices: list[list[int]], coeffs: np.ndarray, *,
               slice_size: int, on_result: Callable[[list[int], Any], None], progress: bool = True) -> None:
  """Dispatch slice k+1 before pulling slice k to the host; ``on_result(ids, device_out)`` per slice.

  ``scan(coeffs[P, n])`` returns device arrays (asynchronously); ``on_result`` is the
  only place a host sync happens.
  """
  from tqdm import tqdm
  bar = tqdm(total=sum(map(len, slices)), desc="grid points", unit="pt", file=sys.stderr,
             disable=not progress, dynamic_ncols=True)
  pending = None
  for ids in slices:
    out = scan(coeffs[pad_slice(ids, slice_size)])
    if pending is not None:
      on_result(*pending)
      bar.update(len(pending[0]))
    pending = (ids, out)
  if pending is not None:
    on_result(*pending)
    bar.update(len(pending[0]))
  bar.close()
