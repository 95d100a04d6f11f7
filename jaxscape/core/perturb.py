"""Weights at a grid point: tree-mapped (materialize) and factored perturbation.

θ(c) = θ + Σᵢ cᵢ·dᵢ, over a params pytree and a list of direction pytrees of the same tree.

* ``materialize`` forms θ(c) leaf by leaf, in float32, then casts once to the
  params' dtype. Under ``vmap`` over a slice of points it holds one weight copy per
  point.
* ``factored`` wraps every leaf in a :class:`Factored` (base, stacked directions,
  coefficients). Every op of the model that consumes a weight is linear in it, so
  ``x·W(c) = x·W + Σᵢ cᵢ (x·Dᵢ)``: only ``1 + ndim`` weight sets stay resident
  whatever the slice size. ``jaxscape.core.model`` consumes these leaves through its
  weight helpers (the single seam where a weight meets an activation).

This module never imports the model; it only sees leaves.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from jaxscape.errors import InputError

PyTree = Any


@flax.struct.dataclass
class Factored:
  """A weight at a grid point, kept as ``base + Σᵢ coeffs[i] * dirs[i]``.

  Attributes:
    base: the unperturbed weight, any shape ``S``, params dtype.
    dirs: ``[n, *S]`` stacked directions (float32 or compute dtype).
    coeffs: ``[n]`` float32 coordinates of this point.
  """
  base: jax.Array
  dirs: jax.Array
  coeffs: jax.Array

  @property
  def shape(self):
    return self.base.shape

  @property
  def dtype(self):
    return self.base.dtype

  def dense(self) -> jax.Array:
    """The materialized weight, formed in float32 and cast to the base dtype.

    A 16-bit base (bfloat16 residency) is formed as one elementwise sum over the n directions,
    which XLA fuses into the cast: no float32 copy of the weight is ever a buffer (a tensordot
    over n is a dot, whose float32 result would be).
    """
    c = self.coeffs.astype(jnp.float32)
    if _is_16bit(self.base):
      total = self.base.astype(jnp.float32)
      for i in range(self.dirs.shape[0]):
        total = total + c[i] * self.dirs[i].astype(jnp.float32)
      return total.astype(self.base.dtype)
    delta = jnp.tensordot(c, self.dirs.astype(jnp.float32), axes=1)
    return (self.base.astype(jnp.float32) + delta).astype(self.base.dtype)


def _is_16bit(w) -> bool:
  return jnp.dtype(w.dtype).itemsize == 2


def _index(w: jax.Array, i: jax.Array, axis: int) -> jax.Array:
  """``w``'s slice ``i`` along ``axis``; 16-bit floats are sliced as uint16.

  Inside a ``lax.scan`` over layers, XLA:CPU converts a whole stacked bfloat16 operand of a
  dynamic slice to float32 once, outside the loop: a float32 copy of every layer. As bits the
  slice is exact and nothing is converted.
  """
  if not _is_16bit(w) or jax.default_backend() != "cpu":  # accelerators slice 16-bit floats natively
    return jax.lax.dynamic_index_in_dim(w, i, axis, keepdims=False)
  bits = jax.lax.bitcast_convert_type(w, jnp.uint16)
  return jax.lax.bitcast_convert_type(jax.lax.dynamic_index_in_dim(bits, i, axis, keepdims=False), w.dtype)


def _rows(table: jax.Array, ids: jax.Array, axis: int = 0) -> jax.Array:
  """``table[ids]`` (``axis`` 0) or ``table[:, ids]`` (1); 16-bit floats gathered as uint16 (XLA:CPU
  gathered bfloat16 from a float32 copy of the table)."""
  pick = (lambda t: t[ids]) if axis == 0 else (lambda t: t[:, ids])
  if not _is_16bit(table):
    return pick(table)
  return jax.lax.bitcast_convert_type(pick(jax.lax.bitcast_convert_type(table, jnp.uint16)), table.dtype)


def stack_directions(directions: Sequence[PyTree]) -> PyTree:
  """List of ``n`` direction trees -> one tree whose leaves are ``[n, *S]``."""
  if not directions:
    raise ValueError("at least one direction is needed")
  return jax.tree.map(lambda *ds: jnp.stack(ds), *directions)


def materialize(params: PyTree, stacked_dirs: PyTree, coeffs: jax.Array) -> PyTree:
  """θ + Σᵢ coeffs[i]·dirs[i] leaf by leaf (float32 arithmetic, cast to params dtype).

  Args:
    params: params pytree.
    stacked_dirs: same tree, leaves ``[n, *S]`` (see :func:`stack_directions`).
    coeffs: ``[n]`` float32 coordinates of one point.
  """
  return jax.tree.map(lambda w, d: Factored(w, d, coeffs).dense(), params, stacked_dirs)


def factored(params: PyTree, stacked_dirs: PyTree, coeffs: jax.Array) -> PyTree:
  """Same tree as ``params`` with every leaf a :class:`Factored` at ``coeffs``."""
  return jax.tree.map(lambda w, d: Factored(w, d, coeffs), params, stacked_dirs)


def at_point(params: PyTree, stacked_dirs: PyTree, coeffs: jax.Array, *, strategy: str) -> PyTree:
  """Weights at one grid point for ``strategy`` in {"materialize", "factored"}."""
  if strategy == "materialize":
    return materialize(params, stacked_dirs, coeffs)
  if strategy == "factored":
    return factored(params, stacked_dirs, coeffs)
  raise InputError(f"unknown strategy {strategy!r}; expected 'materialize' or 'factored'")


def layer_slice(layers: PyTree, i: jax.Array) -> PyTree:
  """Layer ``i`` (int32 scalar, traced) of a tree of stacked ``[L, ...]`` layer weights.

  A :class:`Factored` leaf keeps its coefficients and gives its base's slice ``[i]`` and its
  directions' ``[:, i]`` (stacked directions are ``[n, L, ...]``), so a factored point is never
  materialized to index it.
  """
  def one(w):
    if isinstance(w, Factored):
      return Factored(_index(w.base, i, 0), _index(w.dirs, i, 1), w.coeffs)
    return _index(w, i, 0)
  return jax.tree.map(one, layers, is_leaf=lambda w: isinstance(w, Factored))


# ---------------------------------------------------------------- weight helpers
# The model calls these for every weight use, so a plain array and a Factored leaf
# go through the same code.


def dense(w) -> jax.Array:
  """A small weight (bias, norm scale) as a plain array."""
  return w.dense() if isinstance(w, Factored) else w


def _mm(x: jax.Array, w: jax.Array) -> jax.Array:
  """``x @ w`` accumulated in float32, returned in ``x``'s dtype.

  For bfloat16 this is both more accurate and, on CPUs with AVX512-BF16, faster than a
  bfloat16-output matmul (BENCHMARKS.md, "Measurements behind the code").
  """
  return jnp.matmul(x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _directions_delta(x: jax.Array, w: Factored, spec: str) -> jax.Array:
  """Σᵢ cᵢ (x·Dᵢ) for the stacked ``w.dirs`` [n, ...], ``spec`` the einsum of one direction with a leading n.

  ``x`` is broadcast over the n directions so the product is a matmul batched over n, which
  reads each [n, ...] direction in place. Contracting ``x`` with the stacked directions
  directly (n a free dimension) made XLA transpose them to [in, n, out], and slicing out each
  Dᵢ copies it: either way a direction-sized copy kept for the whole call.
  """
  n, dtype = w.dirs.shape[0], x.dtype
  xs = jnp.broadcast_to(x, (n,) + x.shape)
  yd = jnp.einsum(spec, xs, w.dirs.astype(dtype), preferred_element_type=jnp.float32).astype(dtype)
  return _weighted_sum(w.coeffs.astype(dtype), yd)


def _weighted_sum(coeffs: jax.Array, ys: jax.Array) -> jax.Array:
  """Σᵢ coeffs[i]·ys[i] over the leading axis, a zero coefficient adding exactly 0.

  A direction's product may overflow (``x·Dᵢ`` = inf) where the weight itself does not
  (``0·Dᵢ`` = 0): the factored point must then be the materialized one, θ, not 0·inf = NaN.
  """
  c = coeffs.reshape(coeffs.shape + (1,) * (ys.ndim - 1))
  return jnp.where(c == 0, jnp.zeros((), ys.dtype), c * ys).sum(0)


def matmul(x: jax.Array, w, dtype) -> jax.Array:
  """``x @ w`` over the last axis of ``x`` and the first of ``w`` ([in, out]), in ``dtype``."""
  x = x.astype(dtype)
  if not isinstance(w, Factored):
    return _mm(x, w.astype(dtype))
  # Σᵢ cᵢ (x·Dᵢ): one extra matmul per direction, never a perturbed weight copy.
  return _mm(x, w.base.astype(dtype)) + _directions_delta(x, w, "n...i,nio->n...o")


def matmul_split(x: jax.Array, ws: Sequence, dtype, *, shards: int = 1) -> list[jax.Array]:
  """``[x @ w for w in ws]`` (all ``[in, out_k]``, same ``in``) as one matmul on the concatenated kernels.

  One wider matmul runs much closer to the CPU's peak than several narrow ones (BENCHMARKS.md,
  "Measurements behind the code"). Plain (e.g. materialized) weights only.

  ``shards``: devices the kernels' out axis is split over (``ModelConfig.model_shards``). The
  concatenation then goes shard by shard, ``[w1_s, w2_s, ...]`` for each shard s, so every device
  concatenates and splits only its own columns. A plain concatenation along the split axis made
  XLA move kernel columns between devices (collective-permutes, and several times the
  temporary bytes; BENCHMARKS.md, "Measurements behind the code").
  """
  widths = [w.shape[-1] for w in ws]
  if any(isinstance(w, Factored) for w in ws) or any(n % shards for n in widths):
    # Factored weights exist to keep one copy of θ and the directions; a concatenated copy of
    # them would defeat that. Kernels that do not split evenly are not split (sharding.param_specs).
    return [matmul(x, w, dtype) for w in ws]
  lead = ws[0].shape[:-1]
  blocks = [w.reshape(lead + (shards, n // shards)) for w, n in zip(ws, widths)]  # [..., in, shard, out_k / shard]
  y = matmul(x, _concat_last(blocks).reshape(lead + (-1,)), dtype)
  y = y.reshape(y.shape[:-1] + (shards, -1))
  bounds = [sum(widths[:k]) // shards for k in range(1, len(widths))]
  return [part.reshape(part.shape[:-2] + (-1,)) for part in jnp.split(y, bounds, axis=-1)]


def _concat_last(ws: Sequence[jax.Array]) -> jax.Array:
  """``jnp.concatenate(ws, axis=-1)``; 16-bit floats are moved as uint16.

  XLA:CPU has no bfloat16 concatenate: it converts the operands to float32 and the result
  back, which made concatenating materialized bfloat16 kernels slower than the float32
  concatenate. As bits the copy is exact and cheap everywhere.
  """
  if len({w.dtype for w in ws}) == 1 and jnp.dtype(ws[0].dtype).itemsize == 2:
    bits = [jax.lax.bitcast_convert_type(w, jnp.uint16) for w in ws]
    return jax.lax.bitcast_convert_type(jnp.concatenate(bits, axis=-1), ws[0].dtype)
  return jnp.concatenate(ws, axis=-1)


def take_rows(table, ids: jax.Array, dtype) -> jax.Array:
  """Embedding lookup ``table[ids]`` ([V, D] table) in ``dtype``."""
  if not isinstance(table, Factored):
    return _rows(table, ids).astype(dtype)
  rows = _rows(table.base, ids).astype(jnp.float32)
  drows = _rows(table.dirs, ids, axis=1).astype(jnp.float32)  # [n, *ids.shape, D]
  return (rows + _weighted_sum(table.coeffs.astype(jnp.float32), drows)).astype(dtype)


def matmul_transposed(x: jax.Array, table, dtype) -> jax.Array:
  """``x @ table.T`` for a [V, D] table (tied output embedding), in ``dtype``."""
  x = x.astype(dtype)
  if not isinstance(table, Factored):
    return _mm(x, table.astype(dtype).T)
  return _mm(x, table.base.astype(dtype).T) + _directions_delta(x, table, "n...d,nvd->n...v")
