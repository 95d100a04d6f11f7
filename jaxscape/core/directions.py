"""Random and interpolation directions over params pytrees, grid axes, and their storage.

A *direction* is a pytree with the same tree and shapes as the params, float32
leaves. This module maps pytrees to pytrees; it only sees leaves and their paths
(``"layers/attn/q/kernel"``), never ``jaxscape.core.model``.

Stacked layers
  The params hold their layers stacked: ``layers/attn/q/kernel`` is one [L, D, H*E] leaf
  whose slice ``i`` is layer ``i``'s tensor, named by its per-layer path
  ``layers/{i}/attn/q/kernel`` (:func:`slice_paths`). Everything below that is "per tensor"
  acts per layer slice, exactly as it did when the layers were a list of per-layer dicts
  (which this module still accepts, path for path the same).

Random directions
  Per tensor (layer slice) a standard Gaussian, then normalised (``norm``):

  * ``"layer"``: ``d / ||d|| * ||w||`` over the whole tensor (Frobenius norms), as the
    reference implementation does;
  * ``"filter"``: the same per output unit. Kernels ``[in, out]`` are normalised per
    column (axis 0 reduced; for rank > 2 every axis but the last is reduced); a leaf
    whose path ends in ``embedding`` (``[V, D]``) per row, i.e. per vocabulary entry
    (every axis but the first reduced); 0-/1-D tensors (biases) as a whole tensor;
  * ``"none"``: the raw Gaussian.

  Tensors whose per-layer path matches any regex of ``exclude`` (``re.search``,
  case-sensitive; our paths are lower case) get zeros, so ``"layers/0/"`` zeroes layer 0's
  slice of every stacked leaf; the default ``("norm",)`` zeroes every norm scale, as the
  reference's blacklist does.

  Every tensor draws from its own key,
  ``fold_in(fold_in(PRNGKey(seed), index), crc32(per-layer path))``, never from a split in
  traversal order, so a draw depends only on (seed, index, path) and not on what else is in
  the tree; stacking changed no direction (tests compare with the former per-layer draw bit
  for bit). The Gaussian draws do not depend on sharding provided
  ``jax_threefry_partitionable`` is on (JAX's default since 0.5; this module sets nothing
  global); the norms, being reductions, may differ in the last ulp between shardings.
  Sharded params give directions with the same shardings.

  On XLA:CPU a small tree (up to :data:`FUSED_MAX_VALUES` values, unsharded: the toy model)
  is drawn by one hashing kernel for all tensors and one program of per-slice sums (see "the
  draw of a small tree" below): 0.24 s on a first call for the toy model, against 1.2 s for
  one program per tensor shape. Other trees go tensor by tensor, a stacked leaf slice by slice
  through the one-tensor program. Both give the same bits.

  A random direction is stored as its :class:`RandomRecipe` only and regenerated from
  the params: bit-identical for the same params, placement, backend and JAX version
  (the draw is a fixed set of programs), equal to float tolerance otherwise. The torch
  reference draws from torch's global generator, so its numbers differ from ours; only the
  recipe's *distribution* matches.

Interpolation directions
  ``θ_b − θ_a`` in float32; stored with orbax. One saved before layers were stacked (its
  layers a list) is stacked on load.

Tied embeddings
  A model with ``tie_word_embeddings`` has no ``lm_head`` leaf, so the shared
  embedding gets one direction. The reference perturbs a torch state dict in which
  ``lm_head.weight`` and ``embed_tokens.weight`` are the same tensor, so that tensor
  receives two directions' worth of perturbation (the embedding's and the head's).
  We do not reproduce that quirk.

Coordinates (:func:`grid_axes`) follow the reference: random axes span ``[−m/2, m/2]``
in ``steps+1`` points; interpolation axes span ``[−e/steps, 1+e/steps]`` in
``steps+2e+1`` points, so that 0 is model a and 1 is model b.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import zlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxscape.errors import InputError

PyTree = Any

KINDS = ("1d_random", "2d_random", "1d_interpolation", "2d_interpolation", "2d_interpolation_random")
NORMS = ("layer", "filter", "none")
MANIFEST = "directions.json"
_FORMAT_VERSION = 1
_ARCH_MISMATCH = "interpolation between models of different architecture"
_MODEL_MISMATCH = "directions whose tree or shapes do not match the model"


# --------------------------------------------------------------------------- paths


def _key_str(k) -> str:
  for attr in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey / FlattenedIndexKey
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _path_str(path) -> str:
  return "/".join(_key_str(k) for k in path)


def leaf_paths(tree: PyTree) -> list[str]:
  """Path strings of the leaves in flatten order, e.g. ``"layers/attn/q/kernel"`` (a stacked leaf)."""
  return [_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def path_index(path: str) -> int:
  """Stable per-slice integer in ``[0, 2**32)``: ``zlib.crc32`` of the UTF-8 path string."""
  return zlib.crc32(path.encode("utf-8"))


def is_stacked(path: str) -> bool:
  """Whether a leaf path names a stacked layer leaf (``layers/attn/q/kernel``: leading axis = layer).

  A ``layers/<int>/...`` path (the former per-layer list) is an ordinary leaf.
  """
  parts = path.split("/", 2)
  return len(parts) > 1 and parts[0] == "layers" and not parts[1].isdigit()


def slice_paths(path: str, num_layers: int) -> list[str]:
  """The per-layer paths of a stacked leaf (``layers/{i}/attn/q/kernel``), or ``[path]`` for others.

  Keys, exclusion patterns and norms act on these, one per layer slice.
  """
  if not is_stacked(path):
    return [path]
  rest = path.split("/", 1)[1]
  return [f"layers/{i}/{rest}" for i in range(num_layers)]


def _shapes(tree: PyTree) -> list[tuple[str, tuple[int, ...]]]:
  return [(_path_str(p), tuple(np.shape(x))) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _layout(shapes: list[tuple[str, tuple]]) -> str:
  """"list" when the layers are a per-layer list (``layers/0/...``), "stacked" otherwise."""
  return "list" if any(p.startswith("layers/") and p.split("/")[1].isdigit() for p, _ in shapes) else "stacked"


def _first_mismatch(expected: list[tuple[str, tuple]], got: list[tuple[str, tuple]],
                    names: tuple[str, str]) -> str | None:
  """Description of the first path/shape difference between two (path, shape) lists, or None."""
  e_name, g_name = names
  layouts = _layout(expected), _layout(got)
  if layouts[0] != layouts[1]:  # one tree in the former per-layer layout: say so instead of a path diff
    old = g_name if layouts[1] == "list" else e_name
    return (f"{old} holds its layers as a per-layer list (layers/0/...), the former layout; stack it "
            "(jaxscape.core.convert.stack_layers) into one [L, ...] leaf per tensor (layers/attn/q/kernel)")
  for (pe, se), (pg, sg) in zip(expected, got):
    if pe != pg:
      return f"leaf path {pe!r} in {e_name} vs {pg!r} in {g_name}"
    if se != sg:
      return f"leaf {pe!r} has shape {se} in {e_name} but {sg} in {g_name}"
  if len(expected) != len(got):
    longer, name = (expected, e_name) if len(expected) > len(got) else (got, g_name)
    extra = longer[min(len(expected), len(got))][0]
    return f"leaf {extra!r} only in {name} ({len(expected)} leaves in {e_name}, {len(got)} in {g_name})"
  return None


def check_matches(params: PyTree, direction: PyTree) -> None:
  """Raise ValueError naming the first path/shape where ``direction`` differs from ``params``.

  Leaves are compared by path string and shape (dtype is not checked).
  """
  msg = _first_mismatch(_shapes(params), _shapes(direction), ("the model", "the direction"))
  if msg is not None:
    raise InputError(f"{_MODEL_MISMATCH}: {msg}")


# ------------------------------------------------------------------ random directions


def _validate_exclude(exclude) -> tuple[str, ...]:
  if isinstance(exclude, str):  # a bare string would otherwise be iterated per character
    exclude = (exclude,)
  try:
    exclude = tuple(exclude)
  except TypeError:
    raise InputError(f"exclude must be a list of regexes, got {exclude!r}") from None
  for pat in exclude:
    if not isinstance(pat, str):
      raise InputError(f"exclude patterns must be strings, got {pat!r}")
    try:
      re.compile(pat)
    except re.error as e:
      raise InputError(f"invalid exclude regex {pat!r}: {e}") from None
  return exclude


def _validate_int(name: str, value, *, minimum: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise InputError(f"{name} must be an integer, got {value!r}")
  if minimum is not None and value < minimum:
    raise InputError(f"{name} must be >= {minimum}, got {value}")
  return int(value)


def _validate_norm(norm: str) -> str:
  if norm not in NORMS:
    raise InputError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")
  return norm


def _normalize(d: jax.Array, w: jax.Array, path: str, norm: str) -> jax.Array:
  """Scale a float32 Gaussian ``d`` to the norm of ``w`` (whole tensor or per output unit)."""
  if norm == "none":
    return d
  if norm == "filter" and d.ndim >= 2:
    # Output units: columns of [in, out] kernels, rows (vocab entries) of the [V, D] embedding.
    if path.split("/")[-1] == "embedding":
      axes = tuple(range(1, d.ndim))
    else:
      axes = tuple(range(d.ndim - 1))
  else:
    axes = None  # "layer", and 0-/1-D leaves under "filter"
  d_norm = jnp.sqrt(jnp.sum(jnp.square(d), axis=axes, keepdims=True))
  w_norm = jnp.sqrt(jnp.sum(jnp.square(w.astype(jnp.float32)), axis=axes, keepdims=True))
  # Same op order as the reference: unit norm first, then scale to the weight's norm.
  return d / jnp.where(d_norm > 0, d_norm, 1.0) * w_norm


def direction_dtype(w) -> jnp.dtype:
  """The dtype of a direction's leaf along param leaf ``w``: ``w``'s when it is a 16-bit float
  (bfloat16 residency: drawn and normalised in float32, then cast), else float32."""
  dtype = jnp.dtype(w.dtype)
  return dtype if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize == 2 else jnp.dtype(jnp.float32)


def _random_leaf(w: jax.Array, key: jax.Array, *, norm: str, path: str) -> jax.Array:
  """One (per-layer) tensor's normalised Gaussian draw; ``key`` is its key. The reference program."""
  return _normalize(jax.random.normal(key, w.shape, jnp.float32), w, path, norm).astype(direction_dtype(w))


@functools.lru_cache(maxsize=64)
def _random_leaf_jit(sharding):
  """Jitted :func:`_random_leaf` placing its output like the param (None: default placement)."""
  return jax.jit(_random_leaf, static_argnames=("norm", "path"), out_shardings=sharding)


@functools.lru_cache(maxsize=64)
def _put_slice_jit(sharding):
  """Jitted ``out.at[i].set(x)`` writing in place (``out`` donated), placed like the param."""
  return jax.jit(lambda out, x, i: jax.lax.dynamic_update_index_in_dim(out, x, i, 0), donate_argnums=(0,),
                 out_shardings=sharding)


def _norm_path(path: str, norm: str) -> str:
  # The only thing _normalize reads from a path is whether it names an embedding table (filter
  # norm); collapsing the rest lets tensors of one shape reuse one compiled draw.
  return "embedding" if norm == "filter" and path.split("/")[-1] == "embedding" else ""


# ------------------------------------------------------- the draw of a small tree, fused
# The per-tensor programs compile one program per tensor shape on a first call, each with its
# own LLVM-compiled kernels (1.2 s for the toy model's five shapes on a 2-core CPU; a kernel costs
# 5-20 ms to compile whatever its size). On XLA:CPU a small tree (the default toy scan) is drawn
# instead by two programs and the host:
#
#   1. one kernel hashes (key, flat index) of every drawn value: the Threefry-2x32 hash, the
#      float conversion and erf^-1 of jax.random.normal, all slices at once, one row of
#      _ROW values per step of a slice;
#   2. the host splits the values into one buffer per layer slice, and one program takes each
#      slice's two sums of squares (of sqrt(2) * values, of the weight) over a buffer of the
#      slice's own shape: YNNPACK reductions (>= FUSED_MIN_SLICE values), as in the per-tensor
#      program, so in the same order;
#   3. the host scales each slice with the float32 operations the per-tensor program's
#      normalisation compiles to: XLA rewrites d / |d| * |w| into e * ((1 / |d|) * sqrt(2)) * |w|,
#      e = d / sqrt(2) the erf^-1 values.
#
# Hash, conversion, square roots, division and products are exactly rounded, so each value is
# the per-tensor program's bit for bit (tests/directions_test.py checks every norm, dtype and
# slice sizes around FUSED_MIN_SLICE against the former per-layer draw). Leaves with smaller
# slices, sharded or traced params, large trees and other backends take the per-tensor path.

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
# (add, shift left, logical shift right, or, xor) on uint32 arrays of one shape (or 0-d constants).
_NP_OPS = (np.add, np.left_shift, np.right_shift, np.bitwise_or, np.bitwise_xor)
_LAX_OPS = (jax.lax.add, jax.lax.shift_left, jax.lax.shift_right_logical, jax.lax.bitwise_or, jax.lax.bitwise_xor)


def _threefry2x32(k1, k2, x1, x2, ops=_NP_OPS):
  """The Threefry-2x32 hash (20 rounds) as ``jax.random`` computes it, on uint32 arrays of one shape.

  ``ops``: numpy's (the host) or lax's (traced: lax, not operators, for a quicker trace).
  """
  add, shl, shr, bor, xor = ops
  with np.errstate(over="ignore"):  # uint32 arithmetic wraps, as the hash is defined
    ks = (k1, k2, xor(xor(k1, k2), np.uint32(0x1BD11BDA)))
    x = [add(x1, ks[0]), add(x2, ks[1])]
    for i in range(5):
      for r in _ROTATIONS[i % 2]:
        x[0] = add(x[0], x[1])
        x[1] = xor(x[0], bor(shl(x[1], np.uint32(r)), shr(x[1], np.uint32(32 - r))))
      x = [add(x[0], ks[(i + 1) % 3]), add(add(x[1], ks[(i + 2) % 3]), np.uint32(i + 1))]
  return x[0], x[1]


def _fold_in(key: np.ndarray, data) -> np.ndarray:
  """``jax.random.fold_in(key, d)`` of a uint32 [2] key for each ``d`` of ``data``: uint32 [n, 2].

  On the host: PRNGKey and fold_in are a small compiled program each (0.1 s on a first call).
  """
  data = np.atleast_1d(np.asarray(data, np.uint32))
  a, b = _threefry2x32(np.full_like(data, key[0]), np.full_like(data, key[1]), np.zeros_like(data), data)
  return np.stack([a, b], axis=-1)


def _seed_key(seed: int) -> np.ndarray:
  """``jax.random.PRNGKey(seed)`` as a uint32 [2] numpy array."""
  cfg = jax.config
  if cfg.jax_enable_x64 or cfg.jax_random_seed_offset or cfg.jax_default_prng_impl != "threefry2x32":
    return np.asarray(jax.random.PRNGKey(seed))  # the general case: JAX's own
  np.int64(seed)  # the OverflowError PRNGKey raises beyond int64
  # 32-bit JAX: the seed becomes an int32 (mod 2**32), the key [seed >> 32, seed & 0xFFFFFFFF].
  return np.array([0, seed % 2**32], np.uint32)


# Trees of at most this many fused values take the fused path (host copies of a few times that).
FUSED_MAX_VALUES = 1 << 22
_ROW = 128  # values per row of the fused draw; every layer slice starts a row
_SQRT2 = np.array(np.sqrt(2), np.float32)


# Smallest layer slice the fused path draws under "layer" / "filter": XLA:CPU hands reductions of
# >= 4096 values to YNNPACK, which sums a buffer the same way whatever computed it. Smaller ones
# it fuses with their producer, and sums in an order that depends on it: those slices (biases,
# norm scales, tiny test models) take the per-tensor path.
FUSED_MIN_SLICE = 4096


def _fused_ok(leaf, norm: str) -> bool:
  """Whether the fused path gives this leaf the per-tensor program's bits (see above)."""
  _, w, stacked, _, keep, sharding = leaf
  if sharding is not None or isinstance(w, jax.core.Tracer) or not keep.any():
    return False
  if direction_dtype(w) != jnp.float32:  # the fused path holds a float32 copy of every drawn leaf
    return False
  # "none" has no reductions: its values are exact whatever the shape.
  return norm == "none" or math.prod(np.shape(w)[1:] if stacked else np.shape(w)) >= FUSED_MIN_SLICE


def _fused_backend() -> bool:
  # The fused draw re-derives jax.random.normal's bits from the Threefry hash of (key, flat
  # index): JAX's default PRNG with partitionable Threefry (JAX's default since 0.5). Its sums
  # are checked against the per-tensor programs on XLA:CPU only.
  return (jax.config.jax_default_prng_impl == "threefry2x32" and bool(jax.config.jax_threefry_partitionable)
          and jax.default_backend() == "cpu")


@jax.jit
def _fused_values(k1: jax.Array, k2: jax.Array, base: jax.Array) -> jax.Array:
  """``jax.random.normal`` values / sqrt(2), [R, _ROW] float32: row r hashes key (k1[r], k2[r]) at flat
  indices ``base[r] + 0 .. _ROW-1``, as ``normal(key, shape)`` hashes index j of its flat output.

  One fused kernel: the hash unrolled, then ``_uniform``'s float conversion and ``_normal_real``'s
  erf^-1 (float32: 23 mantissa bits), without the final multiplication by sqrt(2), which the
  per-tensor program's compiled normalisation folds into its scale factor.
  """
  lax = jax.lax
  shape = (base.shape[0], _ROW)
  row = lambda a: lax.broadcast_in_dim(a, shape, (0,))  # noqa: E731
  counts = lax.add(row(base), lax.broadcasted_iota(jnp.uint32, shape, 1))
  b1, b2 = _threefry2x32(row(k1), row(k2), lax.full(shape, 0, jnp.uint32), counts, _LAX_OPS)
  lo, hi = np.nextafter(np.float32(-1.0), np.float32(0.0)), np.float32(1.0)
  float_bits = lax.bitwise_or(lax.shift_right_logical(lax.bitwise_xor(b1, b2), np.uint32(32 - 23)),
                              np.uint32(0x3F800000))  # the exponent of 1.0
  floats = lax.sub(lax.bitcast_convert_type(float_bits, jnp.float32), np.float32(1.0))
  return lax.erf_inv(lax.max(lax.add(lax.mul(floats, hi - lo), lo), lo))


@functools.partial(jax.jit, static_argnames=("axes",))
def _sums_of_squares(xs, ws, *, axes):
  """Per slice, the sums of squares the per-tensor normalisation takes: of ``sqrt(2) * x`` and of ``w``.

  ``axes``: per slice the reduced axes (None: all); the sums come without the reduced axes.
  """
  lax = jax.lax
  whole = lambda x, a: tuple(range(x.ndim)) if a is None else a  # noqa: E731
  return ([lax.reduce_sum(lax.square(lax.mul(x, _SQRT2)), whole(x, a)) for x, a in zip(xs, axes)],
          [lax.reduce_sum(lax.square(lax.convert_element_type(w, jnp.float32)), whole(w, a)) for w, a in zip(ws, axes)])


def _norm_axes(path: str, ndim: int, norm: str):
  """The axes :func:`_normalize` reduces for a tensor of rank ``ndim`` at ``path`` (None: all)."""
  if norm == "filter" and ndim >= 2:
    return tuple(range(1, ndim)) if path.split("/")[-1] == "embedding" else tuple(range(ndim - 1))
  return None


def _fused(leaves, norm: str) -> list[jax.Array]:
  """The given leaves' directions by the fused path (see above); same bits as :func:`_per_tensor`."""
  slices = []  # (leaf, layer, slice shape, first row, rows)
  k1, k2, base = [], [], []
  row = 0
  for n, (_, w, stacked, keys, keep, _) in enumerate(leaves):
    shape = tuple(np.shape(w)[1:] if stacked else np.shape(w))
    rows = -(-math.prod(shape) // _ROW)
    for layer in np.flatnonzero(keep):
      slices.append((n, int(layer), shape, row, rows))
      k1.append(np.full(rows, keys[layer, 0], np.uint32))
      k2.append(np.full(rows, keys[layer, 1], np.uint32))
      base.append(np.arange(rows, dtype=np.uint32) * np.uint32(_ROW))
      row += rows
  out = [np.zeros(np.shape(w), np.float32) for _, w, *_ in leaves]
  if slices:
    e = np.asarray(_fused_values(np.concatenate(k1), np.concatenate(k2), np.concatenate(base)))
    xs = [e[r0:r0 + rows].reshape(-1)[:math.prod(shape)].reshape(shape) for _, _, shape, r0, rows in slices]
    if norm == "none":
      ys = [x * _SQRT2 for x in xs]
    else:
      host = {n: np.asarray(leaves[n][1]) for n in {s[0] for s in slices}}
      ws = [host[n][layer] if leaves[n][2] else host[n] for n, layer, *_ in slices]
      axes = tuple(_norm_axes(leaves[n][0], len(shape), norm) for n, _, shape, _, _ in slices)
      # device_put, not jnp.asarray: a transfer, where asarray compiles a copy per shape.
      sd, sw = _sums_of_squares(jax.device_put(xs), jax.device_put(ws), axes=axes)
      sd, sw = jax.device_get((sd, sw))
      ys = []
      for x, ax, a, b in zip(xs, axes, sd, sw):
        if ax is not None:  # keep the reduced axes, for broadcasting
          a, b = np.expand_dims(a, ax), np.expand_dims(b, ax)
        d_norm, w_norm = np.sqrt(a), np.sqrt(b)
        ys.append(x * ((np.float32(1.0) / np.where(d_norm > 0, d_norm, np.float32(1.0))) * _SQRT2) * w_norm)
    for (n, layer, *_), y in zip(slices, ys):
      if leaves[n][2]:
        out[n][layer] = y
      else:
        out[n] = y
  return jax.device_put(out)


def _per_tensor(leaf, norm: str) -> jax.Array:
  """One leaf's direction by the one-tensor program (compiled once per shape), a stacked leaf's slice by slice.

  Each layer slice is cut into a buffer of its own and drawn by the very program that drew the
  per-layer tensors before layers were stacked, so the bits are that program's by construction
  (a loop or ``vmap`` over the slices inside one program lets XLA fuse the slicing or hoist
  conversions, and sum in another order). The slices are written into the output in place:
  the transient is one slice.
  """
  path, w, stacked, keys, keep, sharding = leaf
  shape = np.shape(w)
  traced = isinstance(w, jax.core.Tracer)
  dtype = direction_dtype(w)
  # Zeros from the host: a transfer, where jnp.zeros compiles a program per shape.
  zeros = (lambda: jnp.zeros(shape, dtype)) if traced else (
      lambda: jax.device_put(np.zeros(shape, dtype), sharding))
  if not keep.any():
    return zeros()
  npath = _norm_path(path, norm)
  if not stacked:
    return _random_leaf_jit(sharding)(w, keys[0], norm=norm, path=npath)
  out = None if traced else zeros()
  slices = []
  for i in range(shape[0]):
    if keep[i]:
      w_i = w[i]
      sharding_i = w_i.sharding if sharding is not None else None
      d = _random_leaf_jit(sharding_i)(w_i, keys[i], norm=norm, path=npath)
    else:
      d = None
    if traced:
      slices.append(d if d is not None else jnp.zeros(shape[1:], dtype))
    elif d is not None:
      out = _put_slice_jit(sharding)(out, d, np.int32(i))
  return jnp.stack(slices) if traced else out


def random_direction(params: PyTree, *, seed: int, index: int = 0, norm: str = "layer",
                     exclude: Sequence[str] = ("norm",)) -> PyTree:
  """A normalised Gaussian direction with the tree and shapes of ``params``.

  Args:
    params: params pytree, any float dtype (only shapes, paths and per-tensor norms are used);
      layers stacked (``layers/attn/q/kernel`` [L, ...]) or, the former layout, a list.
    seed: base seed; ``PRNGKey(seed)``.
    index: direction index, folded into the key (different index -> independent direction).
    norm: "layer", "filter" or "none" (see the module docstring), per layer slice.
    exclude: regexes; layer slices (``layers/{i}/...``) and other leaves whose path matches
      any (``re.search``) get zeros.

  Returns:
    Same tree as ``params``, leaves of the same shapes (placed like the params when they are
    sharded): float32, or a 16-bit param leaf's dtype (``direction_dtype``: each layer slice
    drawn and normalised in float32, then cast). Bit-identical when regenerated with the same
    arguments.
  """
  seed = _validate_int("seed", seed)
  index = _validate_int("index", index, minimum=0)
  norm = _validate_norm(norm)
  exclude = _validate_exclude(exclude)
  # Keys on the host, so a python-int seed of any size maps exactly as PRNGKey does.
  key = _fold_in(_seed_key(seed), index)[0]
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  leaves = []  # (path, w, stacked, keys [S, 2], keep [S] bool, sharding)
  for p, w in flat:
    path = _path_str(p)
    stacked = is_stacked(path)
    per = slice_paths(path, np.shape(w)[0] if stacked else 1)
    keep = np.asarray([not any(re.search(pat, s) for pat in exclude) for s in per])
    keys = _fold_in(key, [path_index(s) for s in per])
    # Sharded params get directions sharded alike; others, the default placement (as before).
    concrete = isinstance(w, jax.Array) and not isinstance(w, jax.core.Tracer)
    sharding = w.sharding if concrete and len(w.sharding.device_set) > 1 else None
    leaves.append((path, w, stacked, keys, keep, sharding))
  fused = [n for n, leaf in enumerate(leaves) if _fused_backend() and _fused_ok(leaf, norm)]
  if sum(np.size(leaves[n][1]) for n in fused) > FUSED_MAX_VALUES:
    fused = []
  out = [None if n in fused else _per_tensor(leaf, norm) for n, leaf in enumerate(leaves)]
  for n, d in zip(fused, _fused([leaves[n] for n in fused], norm) if fused else []):
    out[n] = d
  return jax.tree_util.tree_unflatten(treedef, out)


# ------------------------------------------------------------ interpolation / algebra


@jax.jit
def _subtract(a: PyTree, b: PyTree) -> PyTree:
  # Elementwise, so a 16-bit leaf's float32 difference is fused into its cast, never a buffer.
  return jax.tree.map(lambda x, y: (y.astype(jnp.float32) - x.astype(jnp.float32)).astype(direction_dtype(x)), a, b)


def interpolation_direction(params_a: PyTree, params_b: PyTree) -> PyTree:
  """``params_b − params_a`` leaf by leaf, formed in float32 (held in a 16-bit leaf's dtype, see
  :func:`direction_dtype`: then θ_a + 1·d is θ_b only up to that rounding, documented in README).

  Raises:
    ValueError: naming the first path/shape that differs ("interpolation between models
      of different architecture").
  """
  msg = _first_mismatch(_shapes(params_a), _shapes(params_b), ("model a", "model b"))
  if msg is not None:
    raise InputError(f"{_ARCH_MISMATCH}: {msg}")
  return _subtract(params_a, params_b)


@jax.jit
def _orthogonalize(d2: PyTree, d1: PyTree) -> PyTree:
  f32 = lambda x: x.astype(jnp.float32)
  # Elementwise product + reduce (not a matmul) so no backend lowers the precision of the dot.
  dot = sum(jnp.sum(f32(a) * f32(b)) for a, b in zip(jax.tree.leaves(d2), jax.tree.leaves(d1)))
  nn = sum(jnp.sum(jnp.square(f32(b))) for b in jax.tree.leaves(d1))
  coef = jnp.where(nn > 0, dot / jnp.where(nn > 0, nn, 1.0), 0.0)
  return jax.tree.map(lambda a, b: (f32(a) - coef * f32(b)).astype(direction_dtype(a)), d2, d1)


def orthogonalize(d2: PyTree, d1: PyTree) -> PyTree:
  """Gram–Schmidt of ``d2`` against ``d1`` over the whole flattened tree.

  Returns ``d2 − (<d2, d1> / <d1, d1>) d1`` (float32; dot products summed in float32 over
  all leaves). The projection is removed globally and nothing is rescaled afterwards,
  so per-leaf norms of the result no longer equal the weights' norms (for two independent
  high-dimensional Gaussians the projection is tiny). A zero ``d1`` leaves ``d2`` unchanged.
  """
  msg = _first_mismatch(_shapes(d1), _shapes(d2), ("d1", "d2"))
  if msg is not None:
    raise ValueError(f"orthogonalize needs two directions of the same tree: {msg}")
  return _orthogonalize(d2, d1)


# ------------------------------------------------------------------------- recipes


@dataclasses.dataclass(frozen=True)
class RandomRecipe:
  """Everything needed to regenerate a random direction from the params.

  Attributes:
    seed: base seed.
    index: direction index folded into the key.
    norm: "layer", "filter" or "none".
    exclude: regexes of zeroed leaves.
    orthogonalize_to: index of another random direction (same seed, norm, exclude)
      this one was orthogonalised against with :func:`orthogonalize`, or None.
  """
  seed: int
  index: int = 0
  norm: str = "layer"
  exclude: tuple[str, ...] = ("norm",)
  orthogonalize_to: int | None = None

  def __post_init__(self):
    object.__setattr__(self, "seed", _validate_int("seed", self.seed))
    object.__setattr__(self, "index", _validate_int("index", self.index, minimum=0))
    _validate_norm(self.norm)
    object.__setattr__(self, "exclude", _validate_exclude(self.exclude))
    if self.orthogonalize_to is not None:
      o = _validate_int("orthogonalize_to", self.orthogonalize_to, minimum=0)
      if o == self.index:
        raise InputError(f"orthogonalize_to must differ from index, got {o}")
      object.__setattr__(self, "orthogonalize_to", o)

  def to_json(self) -> dict:
    """JSON-ready dict, tagged ``"kind": "random"``."""
    return {"kind": "random", "seed": self.seed, "index": self.index, "norm": self.norm,
            "exclude": list(self.exclude), "orthogonalize_to": self.orthogonalize_to}

  @classmethod
  def from_json(cls, obj: dict | str) -> "RandomRecipe":
    """Inverse of :meth:`to_json` (a dict or its JSON string)."""
    if isinstance(obj, str):
      try:
        obj = json.loads(obj)
      except json.JSONDecodeError as e:
        raise InputError(f"a random recipe must be JSON ({e})") from None
    if not isinstance(obj, dict):
      raise InputError(f"a random recipe must be a JSON object, got {obj!r}")
    obj = dict(obj)
    kind = obj.pop("kind", "random")
    if kind != "random":
      raise InputError(f"not a random-direction recipe (kind {kind!r})")
    unknown = set(obj) - {f.name for f in dataclasses.fields(cls)}
    if unknown or "seed" not in obj:
      raise InputError(f"bad random recipe {obj!r} (unknown fields {sorted(unknown)}; seed is required)")
    if isinstance(obj.get("exclude"), list):
      obj["exclude"] = tuple(obj["exclude"])
    return cls(**obj)

  def generate(self, params: PyTree) -> PyTree:
    """The direction this recipe describes, for ``params`` (bit-identical each time)."""
    d = random_direction(params, seed=self.seed, index=self.index, norm=self.norm, exclude=self.exclude)
    if self.orthogonalize_to is not None:
      d1 = random_direction(params, seed=self.seed, index=self.orthogonalize_to, norm=self.norm,
                            exclude=self.exclude)
      d = orthogonalize(d, d1)
    return d


def directions_for(kind: str, params: PyTree, *, params_b: PyTree | None = None,
                   params_c: PyTree | None = None, seed: int = 0, norm: str = "layer",
                   exclude: Sequence[str] = ("norm",), orthogonal: bool = False,
                   num_directions: int = 1) -> tuple[list[PyTree], list[RandomRecipe | None]]:
  """The direction trees of a landscape kind, with a recipe per random direction.

  Kinds:
    * ``1d_random``: ``num_directions`` independent directions, index 0..N-1.
    * ``2d_random``: index 0 and 1; ``orthogonal`` orthogonalises the second against the first.
    * ``1d_interpolation``: ``b − a`` (needs ``params_b``).
    * ``2d_interpolation``: ``b − a`` and ``c − a`` (needs ``params_b`` and ``params_c``).
    * ``2d_interpolation_random``: ``b − a``, then a random direction (index 0) normalised
      against ``params`` (model a).

  Args:
    params: model a (the centre of random kinds, the origin of interpolation kinds).
    seed, norm, exclude: random-direction recipe (see :func:`random_direction`).

  Returns:
    ``(directions, recipes)``: float32 trees like ``params``, and for each a
    :class:`RandomRecipe` (random) or None (interpolation).
  """
  if kind not in KINDS:
    raise InputError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
  num_directions = _validate_int("num_directions", num_directions, minimum=1)
  if num_directions > 1 and kind != "1d_random":
    raise InputError(f"num_directions > 1 needs kind 1d_random, got {kind!r} with {num_directions}")
  if orthogonal and kind != "2d_random":
    raise InputError(f"orthogonal is only supported for kind 2d_random, got {kind!r}")
  needs_b = "interpolation" in kind
  needs_c = kind == "2d_interpolation"
  for name, value, needed in (("params_b", params_b, needs_b), ("params_c", params_c, needs_c)):
    if needed and value is None:
      raise InputError(f"kind {kind!r} needs {name} (a second model to interpolate to)")
    if not needed and value is not None:
      raise InputError(f"kind {kind!r} does not use {name}; pass it only for interpolation kinds")

  exclude = _validate_exclude(exclude)
  if kind == "1d_random":
    recipes = [RandomRecipe(seed, i, norm, exclude) for i in range(num_directions)]
  elif kind == "2d_random":
    recipes = [RandomRecipe(seed, 0, norm, exclude), RandomRecipe(seed, 1, norm, exclude, 0 if orthogonal else None)]
  elif kind == "1d_interpolation":
    recipes = [None]
  elif kind == "2d_interpolation":
    recipes = [None, None]
  else:  # 2d_interpolation_random: the random direction is normalised against model a
    recipes = [None, RandomRecipe(seed, 0, norm, exclude)]

  if kind == "2d_random" and orthogonal:  # as RandomRecipe.generate, without drawing d1 twice
    d1 = recipes[0].generate(params)
    d2 = orthogonalize(random_direction(params, seed=seed, index=1, norm=norm, exclude=exclude), d1)
    return [d1, d2], recipes
  others = iter([params_b, params_c])
  dirs = [r.generate(params) if r is not None else interpolation_direction(params, next(others)) for r in recipes]
  return dirs, recipes


# ---------------------------------------------------------------------- coordinates


def _axis_kinds(kind: str) -> tuple[str, ...]:
  return {"1d_random": ("random",), "2d_random": ("random", "random"),
          "1d_interpolation": ("interpolation",), "2d_interpolation": ("interpolation", "interpolation"),
          "2d_interpolation_random": ("interpolation", "random")}[kind]


def grid_axes(kind: str, *, steps: int, multiplier: float = 1.0, extra_steps: int = 0) -> list[np.ndarray]:
  """Per-axis coordinates (float64), laid out as the reference does.

  Random axis: ``np.linspace(-m/2, m/2, steps+1)``. Interpolation axis:
  ``np.linspace(-e/steps, 1+e/steps, steps+2e+1)`` (0 is model a, 1 model b/c, spacing
  ``1/steps``). ``multiplier`` only affects random axes and ``extra_steps`` only
  interpolation axes, but both are validated for every kind.

  Returns:
    One array per axis: ``[steps+1]`` (random) or ``[steps+2e+1]`` (interpolation).
  """
  if kind not in KINDS:
    raise InputError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps <= 0:
    raise InputError(f"steps must be > 0, got {steps!r}")
  if isinstance(extra_steps, bool) or not isinstance(extra_steps, (int, np.integer)) or extra_steps < 0:
    raise InputError(f"extra_steps must be an integer >= 0, got {extra_steps!r}")
  try:
    m = float(multiplier)
  except (TypeError, ValueError):
    raise InputError(f"multiplier must be a number, got {multiplier!r}") from None
  if m == 0 or not math.isfinite(m):
    raise InputError(f"multiplier must be finite and nonzero, got {multiplier!r}")
  steps, e = int(steps), int(extra_steps)
  axes = []
  for axis_kind in _axis_kinds(kind):
    if axis_kind == "random":
      axes.append(np.linspace(-m / 2, m / 2, steps + 1))
    else:
      axes.append(np.linspace(-e / steps, 1 + e / steps, steps + 2 * e + 1))
  return axes


def grid_coords(axes: Sequence[np.ndarray]) -> np.ndarray:
  """All grid points ``[K, ndim]`` float64, row-major: the first axis indexes rows.

  1-D: ``axes[0][:, None]``. 2-D: point ``i*len(axes[1]) + j`` is ``(axes[0][i], axes[1][j])``.
  """
  if not 1 <= len(axes) <= 2:
    raise ValueError(f"grid_coords needs 1 or 2 axes, got {len(axes)}")
  grids = np.meshgrid(*[np.asarray(a, np.float64) for a in axes], indexing="ij")
  return np.stack([g.reshape(-1) for g in grids], axis=-1)


# -------------------------------------------------------------------------- storage


def _abstract_f32(params: PyTree) -> PyTree:
  """ShapeDtypeStruct float32 tree (with the params' shardings where concrete) for orbax restores."""
  def one(x):
    sharding = x.sharding if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) else None
    return jax.ShapeDtypeStruct(np.shape(x), jnp.float32, sharding=sharding)
  return jax.tree.map(one, params)


def save_directions(path: str | os.PathLike, directions: Sequence[PyTree],
                    recipes: Sequence[RandomRecipe | None], *, overwrite: bool = False) -> None:
  """Write directions to the directory ``path``.

  Random directions (recipe given) are stored as their JSON recipe only; the others
  (recipe None, interpolation) with orbax in ``path/direction_<i>``. ``path/directions.json``
  lists them in order. Every process must call this in a multi-host run (orbax saves are
  collective); only process 0 writes the manifest.

  Raises:
    ValueError: mismatched lengths, or ``path`` already holds directions and not ``overwrite``.
  """
  import orbax.checkpoint as ocp

  if len(directions) != len(recipes):
    raise ValueError(f"{len(directions)} directions but {len(recipes)} recipes")
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(os.path.join(path, MANIFEST)) and not overwrite:
    raise InputError(f"{path} already holds directions (pass overwrite=True to replace them)")
  os.makedirs(path, exist_ok=True)
  entries = []
  for i, (d, r) in enumerate(zip(directions, recipes)):
    if r is not None:
      if not isinstance(r, RandomRecipe):
        raise ValueError(f"recipe {i} must be a RandomRecipe or None, got {r!r}")
      entries.append(r.to_json())
      continue
    name = f"direction_{i}"
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(path, name), jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), d),
                 force=overwrite)
      ckptr.wait_until_finished()
    entries.append({"kind": "interpolation", "orbax": name, "leaves": len(jax.tree.leaves(d))})
  if jax.process_index() == 0:
    tmp = os.path.join(path, f".{MANIFEST}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump({"format": "jaxscape.core.directions", "version": _FORMAT_VERSION, "directions": entries}, f, indent=1)
    os.replace(tmp, os.path.join(path, MANIFEST))


def _stack_list_layers(tree: PyTree) -> PyTree:
  """``tree["layers"]`` as a list of per-layer dicts (the former layout) -> one dict of [L, ...] leaves."""
  layers = tree.get("layers") if isinstance(tree, dict) else None
  if not isinstance(layers, (list, tuple)) or not layers:
    return tree
  return {**tree, "layers": jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *layers)}


def _saved_shapes(ckpt: str, ckptr) -> list[tuple[str, tuple]]:
  meta = ckptr.metadata(ckpt)
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
  return [(_path_str(p), tuple(x.shape)) for p, x in flat]


def load_directions(path: str | os.PathLike, params: PyTree) -> tuple[list[PyTree], list[RandomRecipe | None]]:
  """Read directions written by :func:`save_directions` for the model ``params``.

  Random directions are regenerated from their recipes (bit-identical to the saved run's);
  interpolation directions are restored from orbax as float32, placed like ``params``.

  Returns:
    ``(directions, recipes)`` as :func:`directions_for` returns them.

  Raises:
    ValueError: no manifest, or a stored direction whose tree or shapes do not match
      ``params`` (naming the path and both shapes).
  """
  import orbax.checkpoint as ocp

  path = os.path.abspath(os.fspath(path))
  manifest = os.path.join(path, MANIFEST)
  if not os.path.isfile(manifest):
    raise InputError(f"no {MANIFEST} in {path}")
  try:
    with open(manifest, encoding="utf-8") as f:
      meta = json.load(f)
  except ValueError as e:  # bad JSON or not UTF-8
    raise InputError(f"{manifest}: not valid JSON ({e})") from None
  if (not isinstance(meta, dict) or meta.get("format") != "jaxscape.core.directions"
      or meta.get("version") != _FORMAT_VERSION or not isinstance(meta.get("directions"), list)):
    raise InputError(f"{manifest} is not a jaxscape directions manifest of version {_FORMAT_VERSION}")
  expected = _shapes(params)
  directions, recipes = [], []
  for i, entry in enumerate(meta["directions"]):
    kind = entry.get("kind") if isinstance(entry, dict) else None
    if kind == "random":
      try:
        recipe = RandomRecipe.from_json(entry)
      except InputError as e:
        raise InputError(f"{manifest}: direction {i}: {e}") from None
      directions.append(recipe.generate(params))
      recipes.append(recipe)
    elif kind == "interpolation":
      if not isinstance(entry.get("orbax"), str):
        raise InputError(f"{manifest}: direction {i} names no orbax checkpoint (\"orbax\": DIR)")
      ckpt = os.path.join(path, entry["orbax"])
      if not os.path.isdir(ckpt):
        raise InputError(f"direction {i}: no orbax checkpoint at {ckpt}")
      with ocp.StandardCheckpointer() as ckptr:
        saved = _saved_shapes(ckpt, ckptr)
        if _layout(saved) == "list" and _layout(expected) == "stacked":
          # Saved before layers were stacked: read it as saved, stack it, place it like the params.
          d = _stack_list_layers(ckptr.restore(ckpt))
          check_matches(params, d)
          d = jax.tree.map(lambda x, a: jax.device_put(np.asarray(x, np.float32), a.sharding), d,
                           _abstract_f32(params))
        else:
          msg = _first_mismatch(expected, saved, ("the model", f"stored direction {i}"))
          if msg is not None:
            raise InputError(f"{_MODEL_MISMATCH}: {msg}")
          d = ckptr.restore(ckpt, _abstract_f32(params))
      check_matches(params, d)
      directions.append(d)
      recipes.append(None)
    else:
      raise InputError(f"direction {i} in {manifest} has unknown kind {kind!r}")
  return directions, recipes
