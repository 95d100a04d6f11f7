"""Batched greedy decoding: prefill, then a KV-cached ``lax.while_loop``, all in one jitted call."""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxscape import model as model_lib
from jaxscape import prompts as prompts_lib

PyTree = Any


@flax.struct.dataclass
class Generation:
  """Output of :func:`greedy_generate`.

  Attributes:
    tokens: [B, N] int32 new tokens; after a row's first EOS, ``pad_id``.
    lengths: [B] int32 tokens generated per row, up to and including the first EOS.
    nonfinite: [B] bool, True if a row met NaN/Inf logits before it stopped.
  """
  tokens: jax.Array
  lengths: jax.Array
  nonfinite: jax.Array


def _prefill_prefix(params: PyTree, prefix: jax.Array, *, cfg) -> dict:
  """KV of the shared prefix [p], computed once (batch 1): ``{"k", "v": [L, K, p, E]}``."""
  p = prefix.shape[0]
  _, _, pre = model_lib.apply(params, prefix[None], jnp.arange(p, dtype=jnp.int32)[None],
                              None, jnp.int32(0), jnp.ones((1, p), bool), cfg=cfg,
                              logits_at="none")
  return {name: pre[name][:, 0] for name in ("k", "v")}


@flax.struct.dataclass
class DecodeState:
  """Carry of the greedy loop, so decoding can pause and resume (``scan``'s chunked decoding).

  Every field but ``prefix_cache`` has leading dims ``[..., B]`` (``[P, B]`` for a slice of grid
  points); ``prefix_cache`` has only the ``[...]`` ones, being shared by the B rows. The step
  counter is kept apart, as one scalar for all rows and points, so cache writes use a scalar
  index (an in-place ``dynamic_update_slice``, not a scatter).

  The cache holds only the slots decoding has reached so far: the prompt's, then room for the
  new tokens of the current phase (see :func:`phase_ends`, :func:`grow`), so attention never
  reads slots that no token has filled yet. Rows come in groups of consecutive rows (the
  prompt length groups of ``prompts.length_groups``), each with its own cache as long as its
  own prompts: a step's attention then reads ~the mean prompt length, not the longest.

  Attributes:
    cache: a tuple over row groups of ``{"k", "v": [..., L, B_g, K, S_g, E]}`` (layers stacked),
      S_g = ``prompt_slots[g]`` + room for new tokens (the same room for every group).
    prefix_cache: ``{"k", "v": [..., L, K, P0, E]}``: the shared prompt prefix, stored and read
      once for all rows instead of once per row; None without a prefix.
    key_mask: tuple over row groups of [..., B_g, S_g] bool, slots holding real tokens.
    tok: [..., B] int32 token emitted at the previous step (not yet fed to the model).
    next_pos: [..., B] int32 RoPE position of the first new token.
    done: [..., B] bool, row emitted an EOS (or was told to stop).
    nonfinite: [..., B] bool, row met NaN/Inf logits.
    lengths: [..., B] int32 tokens emitted, up to and including the first EOS.
    out: [..., B, N] int32 emitted tokens (``pad_id`` after EOS and beyond the step).
    prompt_slots: static tuple, per row group the cache slots of its prompts (their left-padded
      part after the prefix); the token fed at step ``i`` goes to slot ``prompt_slots[g] + i - 1``.
  """
  cache: tuple
  prefix_cache: dict | None
  key_mask: tuple
  tok: jax.Array
  next_pos: jax.Array
  done: jax.Array
  nonfinite: jax.Array
  lengths: jax.Array
  out: jax.Array
  prompt_slots: tuple = flax.struct.field(pytree_node=False, default=())

  @property
  def room(self) -> int:
    """Steps below this have a cache slot (step ``i`` writes slot ``prompt_slots[g] + i - 1``)."""
    return self.key_mask[0].shape[-1] - self.prompt_slots[0] + 1


# Beyond this many new tokens the cache grows by half instead of doubling (see phase_ends).
FINER_PHASES_FROM = 128


def phase_ends(max_new_tokens: int, first: int = 32) -> tuple[int, ...]:
  """Step counts at which the cache grows: ``first``, doubling up to 128, then x1.5 (rounded up
  to a multiple of 32), then ``max_new_tokens``.

  Each phase is its own ``while_loop`` over a cache sized for that phase's last step, so a
  step's attention reads ~prompt + step slots instead of prompt + ``max_new_tokens``. Each
  phase compiles the model step once more (+0.7 s compile on the toy scan): a first phase of 32
  took the default toy scan (64 new tokens after <= 40 prompt slots) from 6.5 to 6.1-6.2 s; 16
  was no faster. Doubling leaves a phase's cache up to 1/3 longer than its tokens; growing by
  half past 128 took the toy scan at 512 new tokens (32, 64, 128, 192, 288, 448, 512 instead of
  32 ... 256, 512) from 78.6 to 64.4 s for 3.3 s more compile, same tokens.
  """
  ends, end = [], first
  while end < max_new_tokens:
    ends.append(end)
    end = end * 2 if end < FINER_PHASES_FROM else -(-(end * 3 // 2) // 32) * 32  # x1.5, up to a multiple of 32
  return tuple(ends) + (max_new_tokens,)


def _pad_slots(x: jax.Array, axis_from_end: int, left: int, right: int) -> jax.Array:
  widths = [(0, 0)] * x.ndim
  widths[x.ndim - axis_from_end] = (left, right)
  return jnp.pad(x, widths)


def grow(state: DecodeState, steps: int) -> DecodeState:
  """The state with every group's cache and key mask padded to hold steps below ``steps`` (no-op if they do)."""
  more = steps - state.room
  if more <= 0:
    return state
  cache = tuple({n: _pad_slots(g[n], 2, 0, more) for n in ("k", "v")} for g in state.cache)
  return state.replace(cache=cache, key_mask=tuple(_pad_slots(m, 1, 0, more) for m in state.key_mask))


def merge_groups(state: DecodeState) -> DecodeState:
  """The same state with all rows in one group: shorter groups' caches left-padded to the longest prompt.

  Needed before rows of different groups share a batch (``scan.compact_state``). Tokens are
  unchanged: the padding slots are masked out, as a single left-padded batch's would be.
  """
  if len(state.prompt_slots) == 1:
    return state
  T = max(state.prompt_slots)
  cache = ({n: jnp.concatenate([_pad_slots(g[n], 2, T - t, 0) for g, t in zip(state.cache, state.prompt_slots)],
                               axis=-4) for n in ("k", "v")},)
  key_mask = jnp.concatenate([_pad_slots(m, 1, T - t, 0) for m, t in zip(state.key_mask, state.prompt_slots)],
                             axis=-2)
  return state.replace(cache=cache, key_mask=(key_mask,), prompt_slots=(T,))


def greedy_token(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(jnp.argmax(logits, -1), jnp.all(jnp.isfinite(logits), -1))`` for [..., V] float logits.

  Written as plain max/min reductions, which XLA fuses into one pass over the logits: 8x
  faster on CPU than argmax's variadic reduction (1.1 vs 8.6 ms for [1680, 2048]). Same
  answer, ties and NaN included: the first maximum, or the first NaN (max propagates NaN).
  """
  top = jnp.max(logits, axis=-1, keepdims=True)
  vocab = jnp.arange(logits.shape[-1], dtype=jnp.int32)
  tok = jnp.min(jnp.where((logits == top) | jnp.isnan(logits), vocab, logits.shape[-1]), axis=-1)
  finite = jnp.isfinite(top[..., 0]) & jnp.isfinite(jnp.min(logits, axis=-1))
  return tok, finite


def _emit(state: DecodeState, logits: jax.Array, step: jax.Array, pad_id, eos: jax.Array) -> DecodeState:
  """Greedy token for ``step`` from [..., B, V] logits; finished rows emit pad."""
  best, finite = greedy_token(logits)
  nonfinite = state.nonfinite | (~finite & ~state.done)
  tok = jnp.where(state.done, pad_id, best)
  out = jax.lax.dynamic_update_index_in_dim(state.out, tok, step, axis=state.out.ndim - 1)
  lengths = state.lengths + (~state.done).astype(jnp.int32)
  return state.replace(tok=tok, out=out, done=state.done | jnp.isin(tok, eos), nonfinite=nonfinite,
                       lengths=lengths)


# Decoding attends per group of rows; each group is one more attention block per layer and
# phase to compile. On the toy scan with AdvBench prompts (4 prefill groups), 1/2/4 decode
# groups measured scan 7.9/6.7/6.5 s and compile 4.8/5.8/7.9 s: 2 is the balance.
MAX_DECODE_GROUPS = 2


def decode_partition(groups: tuple[tuple[int, int, int], ...], max_groups: int) -> tuple[tuple[int, int], ...]:
  """Cut prefill length groups (longest first) into <= ``max_groups`` runs ``(first, end)`` of groups.

  Minimises the cache slots decoding reads, sum over runs of rows x the run's longest prompt.
  """
  return prompts_lib.cheapest_runs([length for _, _, length in groups], [r1 - r0 for r0, r1, _ in groups],
                                   max_groups)


def _prefill(params: PyTree, tokens: jax.Array, mask: jax.Array, pad_id: jax.Array,
             prefix: jax.Array | None = None, *, cfg: model_lib.ModelConfig, max_new_tokens: int,
             eos_ids: tuple[int, ...], groups: tuple[tuple[int, int, int], ...] | None = None) -> DecodeState:
  """Prefill the prompts (and the shared prefix) of one model and emit token 0.

  ``groups``: static ``((row_start, row_end, length), ...)`` over rows sorted by prompt length
  (see ``prompts.length_groups``): each group is prefilled over only its last ``length``
  columns, so short prompts do not pay for the longest one's padding.

  Each group's cache (``length`` prompt slots, plus room for the first phase of new tokens,
  :func:`phase_ends`) is built from its own keys/values (writing them into a zero cache instead
  is a scatter under ``vmap``, ~4x slower); for decoding, consecutive groups are joined into at
  most :data:`MAX_DECODE_GROUPS` (:func:`decode_partition`).
  """
  B, T = tokens.shape
  N = max_new_tokens
  P0 = 0 if prefix is None else prefix.shape[0]
  room = phase_ends(N)[0] - 1  # slots for the first phase's new tokens (see run_phases)
  # The shared prefix has its own cache; a group's cache holds the left-padded rest of its
  # prompts (``length`` slots), then the new tokens' slots.
  prefix_cache = _prefill_prefix(params, prefix, cfg=cfg) if P0 else None
  positions = P0 + model_lib.positions_from_mask(mask)
  groups = groups or ((0, B, T),)
  last_hidden, parts, key_mask = [], [], []
  for r0, r1, length in groups:
    _, hidden, group_cache = model_lib.apply(
        params, tokens[r0:r1, T - length:], positions[r0:r1, T - length:], None, jnp.int32(0),
        mask[r0:r1, T - length:], cfg=cfg, logits_at="last_hidden", prefix_cache=prefix_cache)
    parts.append({n: _pad_slots(group_cache[n], 2, 0, room) for n in ("k", "v")})
    key_mask.append(_pad_slots(mask[r0:r1, T - length:], 1, 0, room))
    last_hidden.append(hidden[:, -1])
  # Decoding attends per group of prefill groups (fewer groups: less to compile, see
  # decode_partition); a group's shorter members are left-padded to its longest.
  cache, merged_mask, slots = [], [], []
  for a, b in decode_partition(groups, MAX_DECODE_GROUPS):
    longest = groups[a][2]
    lpad = [longest - groups[j][2] for j in range(a, b)]
    cache.append({n: jnp.concatenate([_pad_slots(parts[j][n], 2, lp, 0) for j, lp in zip(range(a, b), lpad)],
                                     axis=1) for n in ("k", "v")})  # [L, B_g, K, S_g, E]: rows on axis 1
    merged_mask.append(jnp.concatenate([_pad_slots(key_mask[j], 1, lp, 0) for j, lp in zip(range(a, b), lpad)]))
    slots.append(longest)
  cache = tuple(cache)
  # The output head once for all rows: per group it was one more matmul each, and a one-row
  # group's bfloat16 head fell off XLA:CPU's fast matmul onto a float32 copy of the whole head.
  logits = model_lib.output_logits(params, jnp.concatenate(last_hidden, axis=0), cfg=cfg)
  state = DecodeState(cache=cache, prefix_cache=prefix_cache, key_mask=tuple(merged_mask),
                      tok=jnp.full((B,), pad_id, jnp.int32),
                      next_pos=positions[:, -1] + 1,  # left padding: the last column is a real token
                      done=jnp.zeros((B,), bool), nonfinite=jnp.zeros((B,), bool),
                      lengths=jnp.zeros((B,), jnp.int32), out=jnp.full((B, N), pad_id, jnp.int32),
                      prompt_slots=tuple(slots))
  return _emit(state, logits, jnp.int32(0), pad_id, jnp.asarray(eos_ids, jnp.int32))


def _advance(params: PyTree, state: DecodeState, step: jax.Array, *, cfg: model_lib.ModelConfig):
  """Feed the token emitted at ``step - 1`` to one model: (logits [B, V], cache, key_mask)."""
  slots = tuple(t + step - 1 for t in state.prompt_slots)  # scalars: every row of a group writes the same slot
  key_mask = tuple(jax.lax.dynamic_update_slice(m, jnp.ones((m.shape[0], 1), bool), (0, slot))
                   for m, slot in zip(state.key_mask, slots))
  logits, _, cache = model_lib.apply(params, state.tok[:, None], (state.next_pos + step - 1)[:, None],
                                     state.cache, slots, key_mask, cfg=cfg, prefix_cache=state.prefix_cache)
  return logits[:, 0], cache, key_mask


def run_loop(advance, state: DecodeState, step: jax.Array, limit: jax.Array, pad_id: jax.Array,
             eos_ids: tuple[int, ...]) -> tuple[DecodeState, jax.Array]:
  """Greedy steps from ``step`` until ``limit`` (traced), the cache's room, or every row has stopped.

  Args:
    advance: ``advance(state, step) -> (logits [..., B, V], cache, key_mask)``; for a slice of
      grid points it ``vmap``s :func:`_advance` over the points with ``step`` shared.
  Returns:
    ``(state, step)`` after the loop.
  """
  eos = jnp.asarray(eos_ids, jnp.int32)
  limit = jnp.minimum(jnp.minimum(jnp.asarray(limit, jnp.int32), state.out.shape[-1]), state.room)

  def body(carry):
    st, i = carry
    logits, cache, key_mask = advance(st, i)
    return _emit(st.replace(cache=cache, key_mask=key_mask), logits, i, pad_id, eos), i + 1

  return jax.lax.while_loop(lambda c: (c[1] < limit) & ~jnp.all(c[0].done), body,
                            (state, jnp.asarray(step, jnp.int32)))


def run_phases(advance, state: DecodeState, step: jax.Array, limit: jax.Array, pad_id: jax.Array,
               eos_ids: tuple[int, ...], ends: tuple[int, ...]) -> Generation:
  """Greedy decoding in phases (:func:`phase_ends`) up to ``limit`` tokens: the rows' results.

  Before each phase the cache grows to hold its last step (:func:`grow`: a copy of the whole
  cache). A phase after the first runs only while a row is still decoding (``lax.cond``), so a
  slice whose rows all end early never grows its cache: on the toy scan (every row done by step
  17 of 64) that growth cost 0.17 s of a device's 4.6 s.
  """
  limit = jnp.minimum(jnp.asarray(limit, jnp.int32), state.out.shape[-1])
  results = lambda st: Generation(tokens=st.out, lengths=st.lengths, nonfinite=st.nonfinite)

  def from_phase(carry, k):
    st, i = run_loop(advance, grow(carry[0], ends[k]), carry[1], limit, pad_id, eos_ids)
    if k == len(ends) - 1:
      return results(st)
    return jax.lax.cond((i < limit) & ~jnp.all(st.done), lambda c: from_phase(c, k + 1),
                        lambda c: results(c[0]), (st, i))

  return from_phase((state, jnp.asarray(step, jnp.int32)), 0)


def _greedy(params: PyTree, tokens: jax.Array, mask: jax.Array, max_steps: jax.Array, pad_id: jax.Array,
            prefix: jax.Array | None = None, *, cfg: model_lib.ModelConfig, max_new_tokens: int,
            eos_ids: tuple[int, ...], groups=None) -> Generation:
  """Un-jitted body of :func:`greedy_generate`."""
  state = _prefill(params, tokens, mask, pad_id, prefix, cfg=cfg, max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                   groups=groups)
  advance = functools.partial(_advance, params, cfg=cfg)
  return run_phases(advance, state, jnp.int32(1), max_steps, pad_id, eos_ids, phase_ends(max_new_tokens))


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "eos_ids", "groups"))
def greedy_generate(params: PyTree, tokens: jax.Array, mask: jax.Array, max_steps: jax.Array,
                    pad_id: jax.Array, prefix: jax.Array | None = None, *, cfg: model_lib.ModelConfig,
                    max_new_tokens: int, eos_ids: tuple[int, ...],
                    groups: tuple[tuple[int, int, int], ...] | None = None) -> Generation:
  """Greedy decoding of a left-padded batch, exactly as ``transformers``' ``generate(do_sample=False)``.

  Args:
    params: params pytree.
    tokens: [B, T] int32 left-padded prompts; mask: [B, T] bool, True for real tokens.
    max_steps: int32 scalar (traced): stop after this many tokens (<= ``max_new_tokens``).
    pad_id: int32 scalar written after a row's EOS.
    prefix: optional [p] int32 tokens that precede every row (chat template + system prompt):
      prefilled once (batch 1); its KV is kept once and attended to by every row (not copied
      per row), so ``tokens`` hold only the rest of each prompt (see
      ``prompts.split_shared_prefix``). Same tokens as without it, up to float summation order.
    cfg: model config (static).
    max_new_tokens: size of the static output buffer (static).
    eos_ids: tuple of EOS token ids (static); a row stops at its first one; the loop exits
      early once every row has stopped.
    groups: optional static length groups of rows sorted by length (``prompts.length_groups``):
      each group is prefilled over only its own length. Same tokens as without.
  Returns:
    :class:`Generation`.
  """
  return _greedy(params, tokens, mask, max_steps, pad_id, prefix, cfg=cfg, max_new_tokens=max_new_tokens,
                 eos_ids=eos_ids, groups=groups)


def decode_text(tokenizer, row: np.ndarray, eos_ids: tuple[int, ...]) -> str:
  """New tokens up to the first EOS, decoded with ``skip_special_tokens=True``."""
  row = list(np.asarray(row))
  for k, t in enumerate(row):
    if t in eos_ids:
      row = row[:k]
      break
  return tokenizer.decode(row, skip_special_tokens=True)


def generate_texts(model, prompts: list[str], *, max_new_tokens: int, prompt_format: str = "chat",
                   system_prompt: str | None = None, batch_size: int = 64,
                   truncate_prompts: bool = False) -> list[str]:
  """Greedy generations for ``prompts`` with a loaded :class:`jaxscape.convert.Model`.

  Prompts are formatted per ``prompt_format``/``system_prompt`` (see
  :func:`jaxscape.prompts.render`), tokenized into batches of ``batch_size`` (the last one
  padded with dummy rows so every batch has the same shape) and decoded; results are in
  input order.
  """
  if max_new_tokens <= 0:
    raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
  texts, add_special = prompts_lib.render(prompts, model.tokenizer, prompt_format=prompt_format,
                                          system_prompt=system_prompt)
  tokens, mask = prompts_lib.tokenize(texts, model.tokenizer, add_special_tokens=add_special,
                                      pad_id=model.pad_id,
                                      max_length=model.cfg.max_position_embeddings - max_new_tokens,
                                      truncate=truncate_prompts)
  B = min(batch_size, len(texts))
  out = []
  for start in range(0, len(texts), B):
    tok, msk = tokens[start:start + B], mask[start:start + B]
    n_real = len(tok)
    if n_real < B:  # pad the batch with copies of its first row; their outputs are dropped
      tok = np.concatenate([tok, np.repeat(tok[:1], B - n_real, 0)])
      msk = np.concatenate([msk, np.repeat(msk[:1], B - n_real, 0)])
    gen = greedy_generate(model.params, tok, msk, np.int32(max_new_tokens), np.int32(model.pad_id),
                          cfg=model.cfg, max_new_tokens=max_new_tokens, eos_ids=model.eos_ids)
    rows = np.asarray(gen.tokens)[:n_real]
    out += [decode_text(model.tokenizer, r, model.eos_ids) for r in rows]
  return out
