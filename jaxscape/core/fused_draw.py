"""The random draw of a small params tree on XLA:CPU, fused: a host Threefry and one hashing kernel.

:func:`jaxscape.core.directions.random_direction` draws tensor by tensor with one program per
tensor shape, and on a cold start each program's LLVM-compiled kernels cost more than the draw
itself (BENCHMARKS.md, "Host Threefry"). On XLA:CPU a small tree (the default toy scan) is drawn
instead by two programs and the host:

1. one kernel hashes (key, flat index) of every drawn value: the Threefry-2x32 hash, the
   float conversion and erf^-1 of ``jax.random.normal``, all slices at once, one row of
   ``_ROW`` values per step of a slice;
2. the host splits the values into one buffer per layer slice, and one program takes each
   slice's two sums of squares (of sqrt(2) * values, of the weight) over a buffer of the
   slice's own shape: YNNPACK reductions (>= :data:`FUSED_MIN_SLICE` values), as in the
   per-tensor program, so in the same order;
3. the host scales each slice with the float32 operations the per-tensor program's
   normalisation compiles to: XLA rewrites d / |d| * |w| into e * ((1 / |d|) * sqrt(2)) * |w|,
   e = d / sqrt(2) the erf^-1 values.

Hash, conversion, square roots, division and products are exactly rounded, so each value is
the per-tensor program's bit for bit (tests/directions_test.py checks every norm, dtype and
slice sizes around :data:`FUSED_MIN_SLICE` against the former per-layer draw). The keys are
derived on the host too (:func:`seed_key`, :func:`fold_in`): ``PRNGKey`` and ``fold_in`` are a
small compiled program each. Leaves with smaller slices, sharded or traced params, large trees
and other backends take the per-tensor path.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

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


def fold_in(key: np.ndarray, data) -> np.ndarray:
  """``jax.random.fold_in(key, d)`` of a uint32 [2] key for each ``d`` of ``data``: uint32 [n, 2].

  On the host, where ``jax.random.fold_in`` is a compiled program (compiled once per process).
  """
  data = np.atleast_1d(np.asarray(data, np.uint32))
  a, b = _threefry2x32(np.full_like(data, key[0]), np.full_like(data, key[1]), np.zeros_like(data), data)
  return np.stack([a, b], axis=-1)


def seed_key(seed: int) -> np.ndarray:
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


def backend_ok() -> bool:
  """Whether JAX's PRNG and backend are those the fused draw reproduces."""
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
  """The axes the per-tensor normalisation reduces for a tensor of rank ``ndim`` at ``path`` (None: all)."""
  if norm == "filter" and ndim >= 2:
    return tuple(range(1, ndim)) if path.split("/")[-1] == "embedding" else tuple(range(ndim - 1))
  return None


def draw(leaves, norm: str) -> list[jax.Array]:
  """The given leaves' directions by the fused path (see the module docstring).

  Args:
    leaves: per leaf ``(path, w, stacked, keys [S, 2] uint32, keep [S] bool, sharding)``, as
      :func:`jaxscape.core.directions.random_direction` lists them: float32 params, unsharded.
    norm: "layer", "filter" or "none".

  Returns:
    Per leaf, its direction (float32, ``w``'s shape): bit for bit the per-tensor program's.
  """
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
