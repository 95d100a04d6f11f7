"""Batched decoding: prefill, then a KV-cached ``lax.while_loop``, all in one jitted call.

The one decoder of jaxscape. A :class:`Decoder` (frozen, hashable: a static argument of ``jit``)
holds what shapes the program (model config, output length, EOS ids, prompt length groups,
sampling); its methods are the pieces every decode is made of:

- :meth:`Decoder.prefill`: prompts (and a shared prefix) -> :class:`DecodeState` with token 0 emitted;
- :meth:`Decoder.advance`: one model step of the rows' last tokens -> logits and the grown cache;
- :meth:`Decoder.run_loop` / :meth:`Decoder.run_phases`: steps under ``lax.while_loop`` until a
  limit or every row has stopped -> :class:`Generation`.

``jaxscape.core.scan`` runs the same pieces with an ``advance`` ``vmap``ped over grid points; a plain
batch of one model is :func:`generate`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxscape.core import model as model_lib
from jaxscape.core import prompts as prompts_lib
from jaxscape.errors import InputError

PyTree = Any


@flax.struct.dataclass
class Generation:
  """What a decode returns, for one batch or a whole slice of grid points (leading ``[...]`` = [P]).

  Attributes:
    tokens: [..., B, N] int32 new tokens; after a row's first EOS, ``pad_id``.
    lengths: [..., B] int32 tokens generated per row, up to and including the first EOS.
    nonfinite: [..., B] bool, True if a row met NaN/Inf logits before it stopped.
    truncated: [..., B] bool, True if a row was stopped early because its answer was already
      decided (``scan.decode_until_decided``); False for rows that ran to EOS or the limit.
    row_steps: int32 scalar, decoding work done: rows of the decoding batch x steps run, summed
      over the calls that made this generation (prefill's first token excluded).
  """
  tokens: jax.Array
  lengths: jax.Array
  nonfinite: jax.Array
  truncated: jax.Array
  row_steps: jax.Array


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How a token is chosen from the logits: greedy (``temperature == 0``, the default, exactly
  transformers' ``do_sample=False``) or a sample of ``softmax(logits / temperature)`` drawn with
  the decode's PRNG key, folded with the step (rows draw independently)."""
  temperature: float = 0.0

  def __post_init__(self):
    if not self.temperature >= 0:
      raise InputError(f"temperature must be >= 0, got {self.temperature}")


GREEDY = Sampling()


def prefill_prefix(params: PyTree, prefix: jax.Array, *, cfg) -> dict:
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
    key: PRNG key of a sampled decode (``Sampling.temperature > 0``), else None.
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
  key: jax.Array | None = None
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
  step's attention reads ~prompt + step slots instead of prompt + ``max_new_tokens``, at the
  price of compiling the model step once more per phase. A first phase of 32 pays for that on
  the default toy scan (64 new tokens after <= 40 prompt slots) where 16 gains nothing more.
  Doubling leaves a phase's cache up to 1/3 longer than its tokens, so past 128 the phases grow
  by half, which scans long generations faster for a little more compile, same tokens
  (BENCHMARKS.md, "Finer cache phases past 128 new tokens").
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

  Written as plain max/min reductions, which XLA fuses into one pass over the logits (argmax's
  variadic reduction was several times slower on CPU). Same answer, ties and NaN included: the
  first maximum, or the first NaN (max propagates NaN).
  """
  top = jnp.max(logits, axis=-1, keepdims=True)
  vocab = jnp.arange(logits.shape[-1], dtype=jnp.int32)
  tok = jnp.min(jnp.where((logits == top) | jnp.isnan(logits), vocab, logits.shape[-1]), axis=-1)
  finite = jnp.isfinite(top[..., 0]) & jnp.isfinite(jnp.min(logits, axis=-1))
  return tok, finite


# Decoding attends per group of rows; each group is one more attention block per layer and
# phase to compile: 2 balances compile time against attention over padding (BENCHMARKS.md).
MAX_DECODE_GROUPS = 2


def decode_partition(groups: tuple[tuple[int, int, int], ...], max_groups: int) -> tuple[tuple[int, int], ...]:
  """Cut prefill length groups (longest first) into <= ``max_groups`` runs ``(first, end)`` of groups.

  Minimises the cache slots decoding reads, sum over runs of rows x the run's longest prompt.
  """
  return prompts_lib.cheapest_runs([length for _, _, length in groups], [r1 - r0 for r0, r1, _ in groups],
                                   max_groups)


Advance = Callable[[DecodeState, jax.Array], tuple[jax.Array, tuple, tuple]]


@dataclasses.dataclass(frozen=True)
class Decoder:
  """The static description of a decode, passed to ``jit`` as a static argument.

  Attributes:
    cfg: model config.
    max_new_tokens: N, the size of the output buffer.
    eos_ids: a row stops at its first one of these; the loop exits once every row has stopped.
    groups: optional ``((row_start, row_end, length), ...)`` over rows sorted by prompt length
      (``prompts.length_groups``): each group is prefilled over only its last ``length`` columns
      and decoded over a cache as long as its own prompts. Same tokens as without.
    sampling: :class:`Sampling` (greedy by default).
  """
  cfg: model_lib.ModelConfig
  max_new_tokens: int
  eos_ids: tuple[int, ...]
  groups: tuple[tuple[int, int, int], ...] | None = None
  sampling: Sampling = GREEDY

  def prefill(self, params: PyTree, tokens: jax.Array, mask: jax.Array, pad_id: jax.Array,
              prefix: jax.Array | None = None, key: jax.Array | None = None) -> DecodeState:
    """Prefill the prompts (and the shared prefix) of one model and emit token 0.

    Args:
      tokens: [B, T] int32 left-padded prompts (rows sorted by length when ``groups`` is set);
        mask: [B, T] bool, True for real tokens.
      pad_id: int32 scalar written after a row's EOS.
      prefix: optional [p] int32 tokens preceding every row, prefilled once (batch 1) and kept
        once for all rows (``prompts.split_shared_prefix``).
      key: PRNG key, needed when sampling.
    Returns:
      :class:`DecodeState` at step 1, with room in the cache for the first phase's tokens.
    """
    if self.sampling.temperature > 0 and key is None:
      raise InputError("sampling with temperature > 0 needs a PRNG key")
    B = tokens.shape[0]
    P0 = 0 if prefix is None else prefix.shape[0]
    prefix_cache = prefill_prefix(params, prefix, cfg=self.cfg) if P0 else None
    positions = P0 + model_lib.positions_from_mask(mask)
    last_hidden, cache, key_mask, slots = self._prefill_groups(params, tokens, mask, positions, prefix_cache)
    # The output head once for all rows: per group it was one more matmul each, and a one-row
    # group's bfloat16 head fell off XLA:CPU's fast matmul onto a float32 copy of the whole head.
    logits = model_lib.output_logits(params, last_hidden, cfg=self.cfg)
    state = DecodeState(cache=cache, prefix_cache=prefix_cache, key_mask=key_mask,
                        tok=jnp.full((B,), pad_id, jnp.int32),
                        next_pos=positions[:, -1] + 1,  # left padding: the last column is a real token
                        done=jnp.zeros((B,), bool), nonfinite=jnp.zeros((B,), bool),
                        lengths=jnp.zeros((B,), jnp.int32), out=jnp.full((B, self.max_new_tokens), pad_id, jnp.int32),
                        key=key, prompt_slots=slots)
    return self.emit(state, logits, jnp.int32(0), pad_id)

  def _prefill_groups(self, params, tokens, mask, positions, prefix_cache):
    """Each length group prefilled over its own columns, then joined into <= MAX_DECODE_GROUPS caches.

    Each group's cache (its prompt slots plus room for the first phase) is built from its own
    keys/values (writing them into a zero cache instead is a scatter under ``vmap``, slower);
    a decode group's shorter members are left-padded to its longest.
    Returns (last hidden [B, D], caches, key masks, prompt slots per decode group).
    """
    B, T = tokens.shape
    room = phase_ends(self.max_new_tokens)[0] - 1  # slots for the first phase's new tokens
    groups = self.groups or ((0, B, T),)
    last_hidden, parts, masks = [], [], []
    for r0, r1, length in groups:
      _, hidden, group_cache = model_lib.apply(
          params, tokens[r0:r1, T - length:], positions[r0:r1, T - length:], None, jnp.int32(0),
          mask[r0:r1, T - length:], cfg=self.cfg, logits_at="last_hidden", prefix_cache=prefix_cache)
      parts.append({n: _pad_slots(group_cache[n], 2, 0, room) for n in ("k", "v")})
      masks.append(_pad_slots(mask[r0:r1, T - length:], 1, 0, room))
      last_hidden.append(hidden[:, -1])
    cache, key_mask, slots = [], [], []
    for a, b in decode_partition(groups, MAX_DECODE_GROUPS):
      longest = groups[a][2]
      lpad = [longest - groups[j][2] for j in range(a, b)]
      cache.append({n: jnp.concatenate([_pad_slots(parts[j][n], 2, lp, 0) for j, lp in zip(range(a, b), lpad)],
                                       axis=1) for n in ("k", "v")})  # [L, B_g, K, S_g, E]: rows on axis 1
      key_mask.append(jnp.concatenate([_pad_slots(masks[j], 1, lp, 0) for j, lp in zip(range(a, b), lpad)]))
      slots.append(longest)
    return jnp.concatenate(last_hidden, axis=0), tuple(cache), tuple(key_mask), tuple(slots)

  def advance(self, params: PyTree, state: DecodeState, step: jax.Array) -> tuple[jax.Array, tuple, tuple]:
    """Feed the token emitted at ``step - 1`` to one model: (logits [B, V], cache, key_mask)."""
    slots = tuple(t + step - 1 for t in state.prompt_slots)  # scalars: every row of a group writes the same slot
    key_mask = tuple(jax.lax.dynamic_update_slice(m, jnp.ones((m.shape[0], 1), bool), (0, slot))
                     for m, slot in zip(state.key_mask, slots))
    logits, _, cache = model_lib.apply(params, state.tok[:, None], (state.next_pos + step - 1)[:, None],
                                       state.cache, slots, key_mask, cfg=self.cfg, prefix_cache=state.prefix_cache)
    return logits[:, 0], cache, key_mask

  def emit(self, state: DecodeState, logits: jax.Array, step: jax.Array, pad_id) -> DecodeState:
    """The token for ``step`` from [..., B, V] logits (greedy or sampled); finished rows emit pad."""
    best, finite = greedy_token(logits)
    if self.sampling.temperature > 0:
      best = jax.random.categorical(jax.random.fold_in(state.key, step), logits / self.sampling.temperature)
      best = best.astype(jnp.int32)
    nonfinite = state.nonfinite | (~finite & ~state.done)
    tok = jnp.where(state.done, pad_id, best)
    out = jax.lax.dynamic_update_index_in_dim(state.out, tok, step, axis=state.out.ndim - 1)
    lengths = state.lengths + (~state.done).astype(jnp.int32)
    done = state.done | jnp.isin(tok, jnp.asarray(self.eos_ids, jnp.int32))
    return state.replace(tok=tok, out=out, done=done, nonfinite=nonfinite, lengths=lengths)

  def run_loop(self, advance: Advance, state: DecodeState, step: jax.Array, limit: jax.Array,
               pad_id: jax.Array) -> tuple[DecodeState, jax.Array]:
    """Steps from ``step`` until ``limit`` (traced), the cache's room, or every row has stopped.

    Args:
      advance: ``advance(state, step) -> (logits [..., B, V], cache, key_mask)``: ``lambda st, i:
        decoder.advance(params, st, i)`` for one model; ``jaxscape.core.scan`` ``vmap``s it over the
        points of a slice with ``step`` shared.
    Returns:
      ``(state, step)`` after the loop.
    """
    limit = jnp.minimum(jnp.minimum(jnp.asarray(limit, jnp.int32), state.out.shape[-1]), state.room)

    def body(carry):
      st, i = carry
      logits, cache, key_mask = advance(st, i)
      return self.emit(st.replace(cache=cache, key_mask=key_mask), logits, i, pad_id), i + 1

    return jax.lax.while_loop(lambda c: (c[1] < limit) & ~jnp.all(c[0].done), body,
                              (state, jnp.asarray(step, jnp.int32)))

  def run_phases(self, advance: Advance, state: DecodeState, step: jax.Array, limit: jax.Array,
                 pad_id: jax.Array) -> Generation:
    """Decoding in phases (:func:`phase_ends`) up to ``limit`` tokens: the rows' :class:`Generation`.

    Before each phase the cache grows to hold its last step (:func:`grow`: a copy of the whole
    cache, after which the outgrown one is dead), so at most two caches are live at once. A
    phase's loop exits at once when every row has stopped. (Phases nested in ``lax.cond``s, to
    skip the growth copy of a finished slice, kept every phase's cache live at the deepest one,
    because XLA keeps a conditional's operands.)
    """
    limit = jnp.minimum(jnp.asarray(limit, jnp.int32), state.out.shape[-1])
    first = i = jnp.asarray(step, jnp.int32)
    for end in phase_ends(self.max_new_tokens):
      state, i = self.run_loop(advance, grow(state, end), i, limit, pad_id)
    return Generation(tokens=state.out, lengths=state.lengths, nonfinite=state.nonfinite,
                      truncated=jnp.zeros_like(state.done), row_steps=(i - first) * state.done.size)

  def generate(self, params: PyTree, tokens: jax.Array, mask: jax.Array, max_steps: jax.Array,
               pad_id: jax.Array, prefix: jax.Array | None = None, key: jax.Array | None = None) -> Generation:
    """Prefill and decode one model's batch (un-jitted: :func:`generate` is its jitted form)."""
    state = self.prefill(params, tokens, mask, pad_id, prefix, key)
    return self.run_phases(lambda st, i: self.advance(params, st, i), state, jnp.int32(1), max_steps, pad_id)


@functools.partial(jax.jit, static_argnames=("decoder",))
def generate(params: PyTree, tokens: jax.Array, mask: jax.Array, max_steps: jax.Array, pad_id: jax.Array,
             prefix: jax.Array | None = None, key: jax.Array | None = None, *, decoder: Decoder) -> Generation:
  """Decode a left-padded batch in one jitted call; greedy, it is transformers' ``generate(do_sample=False)``.

  Args:
    params: params pytree.
    tokens: [B, T] int32 left-padded prompts; mask: [B, T] bool, True for real tokens.
    max_steps: int32 scalar (traced): stop after this many tokens (<= ``decoder.max_new_tokens``).
    pad_id: int32 scalar written after a row's EOS.
    prefix: optional [p] int32 tokens that precede every row (chat template + system prompt):
      prefilled once; its KV is kept once and attended to by every row, so ``tokens`` hold only
      the rest of each prompt (see ``prompts.split_shared_prefix``). Same tokens as without it,
      up to float summation order.
    key: PRNG key (sampling only).
    decoder: :class:`Decoder` (static).
  Returns:
    :class:`Generation`.
  """
  return decoder.generate(params, tokens, mask, max_steps, pad_id, prefix, key)


def greedy_generate(params: PyTree, tokens: jax.Array, mask: jax.Array, max_steps: jax.Array, pad_id: jax.Array,
                    prefix: jax.Array | None = None, *, cfg: model_lib.ModelConfig, max_new_tokens: int,
                    eos_ids: tuple[int, ...], groups: tuple[tuple[int, int, int], ...] | None = None) -> Generation:
  """:func:`generate` with a greedy :class:`Decoder` made of these keywords."""
  return generate(params, tokens, mask, max_steps, pad_id, prefix,
                  decoder=Decoder(cfg=cfg, max_new_tokens=max_new_tokens, eos_ids=tuple(eos_ids), groups=groups))

def decode_text(tokenizer, row: np.ndarray, eos_ids: tuple[int, ...]) -> str:
  """New tokens up to the first EOS, decoded with ``skip_special_tokens=True``."""
  row = list(np.asarray(row))
  for k, t in enumerate(row):
    if t in eos_ids:
      row = row[:k]
      break
  return tokenizer.decode(row, skip_special_tokens=True)


def generate_ids(model, prompts: list[str], *, max_new_tokens: int, prompt_format: str = "chat",
                 system_prompt: str | None = None, batch_size: int = 64, truncate_prompts: bool = False,
                 temperature: float = 0.0, key: jax.Array | None = None) -> list[list[int]]:
  """New token ids for ``prompts`` with a loaded :class:`jaxscape.core.convert.Model`, each up to and
  including its first EOS (a row that hit ``max_new_tokens`` has none): greedy, or sampled at
  ``temperature`` > 0 with the PRNG ``key`` (batch k draws with ``fold_in(key, k)``).

  Prompts are formatted per ``prompt_format``/``system_prompt`` (see
  :func:`jaxscape.core.prompts.render`), tokenized into batches of ``batch_size`` (the last one
  padded with dummy rows so every batch has the same shape) and decoded; results are in
  input order.
  """
  if max_new_tokens <= 0:
    raise InputError(f"max_new_tokens must be > 0, got {max_new_tokens}")
  if temperature > 0 and key is None:
    raise InputError("sampling (temperature > 0) needs a PRNG key")
  decoder = Decoder(cfg=model.cfg, max_new_tokens=max_new_tokens, eos_ids=tuple(model.eos_ids),
                    sampling=Sampling(temperature))
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
    batch_key = None if key is None else jax.random.fold_in(key, start // B)
    gen = generate(model.params, tok, msk, np.int32(max_new_tokens), np.int32(model.pad_id), None, batch_key,
                   decoder=decoder)
    rows, lengths = np.asarray(gen.tokens)[:n_real], np.asarray(gen.lengths)[:n_real]
    out += [row[:n].tolist() for row, n in zip(rows, lengths)]
  return out


def generate_texts(model, prompts: list[str], **kwargs) -> list[str]:
  """Generations for ``prompts`` as text (up to the first EOS, special tokens skipped); the
  arguments are :func:`generate_ids`'s: greedy by default, sampled with ``temperature`` and ``key``."""
  return [decode_text(model.tokenizer, ids, model.eos_ids) for ids in generate_ids(model, prompts, **kwargs)]
