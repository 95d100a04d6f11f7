"""Random and interpolation directions over params pytrees, and the recipes that regenerate them.

A *direction* is a pytree with the same tree and shapes as the params, float32
leaves. This module maps pytrees to pytrees; it only sees leaves and their paths
(``"layers/attn/q/kernel"``, :mod:`jaxscape.core.paths`), never ``jaxscape.core.model``.
Grid coordinates are in :mod:`jaxscape.core.grid`, storage in :mod:`jaxscape.core.direction_store`.

Stacked layers
  The params hold their layers stacked: ``layers/attn/q/kernel`` is one [L, D, H*E] leaf
  whose slice ``i`` is layer ``i``'s tensor, named by its per-layer path
  ``layers/{i}/attn/q/kernel`` (:func:`jaxscape.core.paths.slice_paths`). Everything below that
  is "per tensor" acts per layer slice, exactly as it did when the layers were a list of
  per-layer dicts (which this module still accepts, path for path the same).

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
  ``fold_in(fold_in(key, index), crc32(per-layer path))`` with ``key`` a PRNG key or
  ``PRNGKey(seed)``, never from a split in traversal order, so a draw depends only on
  (key, index, path) and not on what else is in the tree; stacking changed no direction (tests
  compare with the former per-layer draw bit for bit). The Gaussian draws do not depend on
  sharding provided ``jax_threefry_partitionable`` is on (JAX's default since 0.5; this module
  sets nothing global); the norms, being reductions, may differ in the last ulp between
  shardings. Sharded params give directions with the same shardings.

  Tensor by tensor, a stacked leaf slice by slice, each through the one-tensor program; on
  XLA:CPU a small unsharded tree (the toy model) is drawn instead by
  :mod:`jaxscape.core.fused_draw`, which compiles far less on a cold start. Both give the same bits.

  A random direction is stored as its :class:`RandomRecipe` only and regenerated from
  the params: bit-identical for the same params, placement, backend and JAX version
  (the draw is a fixed set of programs), equal to float tolerance otherwise. The torch
  reference draws from torch's global generator, so its numbers differ from ours; only the
  recipe's *distribution* matches.

Interpolation directions
  ``θ_b − θ_a`` in float32; stored with orbax.

Tied embeddings
  A model with ``tie_word_embeddings`` has no ``lm_head`` leaf, so the shared
  embedding gets one direction. The reference perturbs a torch state dict in which
  ``lm_head.weight`` and ``embed_tokens.weight`` are the same tensor, so that tensor
  receives two directions' worth of perturbation (the embedding's and the head's).
  We do not reproduce that quirk.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxscape.core import fused_draw
from jaxscape.core.grid import KINDS
from jaxscape.core.paths import first_mismatch, is_stacked, leaf_shapes, path_index, path_str, slice_paths
from jaxscape.errors import InputError

PyTree = Any

NORMS = ("layer", "filter", "none")
_ARCH_MISMATCH = "interpolation between models of different architecture"
MODEL_MISMATCH = "directions whose tree or shapes do not match the model"


def check_matches(params: PyTree, direction: PyTree) -> None:
  """Raise ValueError naming the first path/shape where ``direction`` differs from ``params``.

  Leaves are compared by path string and shape (dtype is not checked).
  """
  msg = first_mismatch(leaf_shapes(params), leaf_shapes(direction), ("the model", "the direction"))
  if msg is not None:
    raise InputError(f"{MODEL_MISMATCH}: {msg}")


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


def _fused_ok(leaf, norm: str) -> bool:
  """Whether :mod:`jaxscape.core.fused_draw` gives this leaf the per-tensor program's bits."""
  _, w, stacked, _, keep, sharding = leaf
  if sharding is not None or isinstance(w, jax.core.Tracer) or not keep.any():
    return False
  if direction_dtype(w) != jnp.float32:  # the fused path holds a float32 copy of every drawn leaf
    return False
  # "none" has no reductions: its values are exact whatever the shape.
  return norm == "none" or math.prod(np.shape(w)[1:] if stacked else np.shape(w)) >= fused_draw.FUSED_MIN_SLICE


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


def key_data(key) -> np.ndarray:
  """A PRNG key's raw uint32 [2] data: of a typed key (``jax.random.key``) or a raw one (``PRNGKey``).

  Raises:
    InputError: not a concrete Threefry-2x32 key (the draw derives its keys on the host).
  """
  if isinstance(key, jax.core.Tracer):
    raise InputError("random_direction needs a concrete PRNG key, not a traced one (call it outside jit)")
  if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  data = np.asarray(key)
  if data.shape != (2,) or data.dtype != np.uint32:
    raise InputError(f"expected a threefry2x32 PRNG key (jax.random.key or PRNGKey), got {data.dtype} {data.shape}")
  return data


def random_direction(params: PyTree, key: jax.Array | None = None, *, seed: int | None = None, index: int = 0,
                     norm: str = "layer", exclude: Sequence[str] = ("norm",)) -> PyTree:
  """A normalised Gaussian direction with the tree and shapes of ``params``.

  ``random_direction(params, jax.random.key(s), index=i)`` and ``random_direction(params,
  jax.random.PRNGKey(s), index=i)`` equal ``random_direction(params, seed=s, index=i)`` bit for bit.

  Args:
    params: params pytree, any float dtype (only shapes, paths and per-tensor norms are used);
      layers stacked (``layers/attn/q/kernel`` [L, ...]) or, the former layout, a list.
    key: PRNG key, typed (``jax.random.key``) or raw uint32 [2] (``jax.random.PRNGKey``),
      Threefry-2x32 (JAX's default); concrete, not traced. Give ``key`` or ``seed``.
    seed: base seed, an int of any size: the key ``PRNGKey(seed)``.
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
  if (key is None) == (seed is None):
    raise InputError("random_direction needs a PRNG key or seed=, exactly one of them")
  # Keys on the host, so a python-int seed of any size maps exactly as PRNGKey does.
  base = key_data(key) if key is not None else fused_draw.seed_key(_validate_int("seed", seed))
  index = _validate_int("index", index, minimum=0)
  norm = _validate_norm(norm)
  exclude = _validate_exclude(exclude)
  base = fused_draw.fold_in(base, index)[0]
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  leaves = []  # (path, w, stacked, keys [S, 2], keep [S] bool, sharding)
  for p, w in flat:
    path = path_str(p)
    stacked = is_stacked(path)
    per = slice_paths(path, np.shape(w)[0] if stacked else 1)
    keep = np.asarray([not any(re.search(pat, s) for pat in exclude) for s in per])
    keys = fused_draw.fold_in(base, [path_index(s) for s in per])
    # Sharded params get directions sharded alike; others, the default placement (as before).
    concrete = isinstance(w, jax.Array) and not isinstance(w, jax.core.Tracer)
    sharding = w.sharding if concrete and len(w.sharding.device_set) > 1 else None
    leaves.append((path, w, stacked, keys, keep, sharding))
  fused = [n for n, leaf in enumerate(leaves) if fused_draw.backend_ok() and _fused_ok(leaf, norm)]
  if sum(np.size(leaves[n][1]) for n in fused) > fused_draw.FUSED_MAX_VALUES:
    fused = []
  out = [None if n in fused else _per_tensor(leaf, norm) for n, leaf in enumerate(leaves)]
  for n, d in zip(fused, fused_draw.draw([leaves[n] for n in fused], norm) if fused else []):
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
  msg = first_mismatch(leaf_shapes(params_a), leaf_shapes(params_b), ("model a", "model b"))
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
  msg = first_mismatch(leaf_shapes(d1), leaf_shapes(d2), ("d1", "d2"))
  if msg is not None:
    raise ValueError(f"orthogonalize needs two directions of the same tree: {msg}")
  return _orthogonalize(d2, d1)


# ------------------------------------------------------------------------- recipes


@dataclasses.dataclass(frozen=True)
class RandomRecipe:
  """Everything needed to regenerate a random direction from the params.

  Attributes:
    seed: base seed (the key ``PRNGKey(seed)``); or None when ``key`` is given.
    index: direction index folded into the key.
    norm: "layer", "filter" or "none".
    exclude: regexes of zeroed leaves.
    orthogonalize_to: index of another random direction (same seed, norm, exclude)
      this one was orthogonalised against with :func:`orthogonalize`, or None.
    key: the data of the PRNG key drawn from (two uint32 words, :func:`key_data`), when the
      direction was drawn from a key rather than a seed; else None.
  """
  seed: int | None = None
  index: int = 0
  norm: str = "layer"
  exclude: tuple[str, ...] = ("norm",)
  orthogonalize_to: int | None = None
  key: tuple[int, int] | None = None

  def __post_init__(self):
    if (self.seed is None) == (self.key is None):
      raise InputError(f"a random recipe needs a seed or a key, exactly one of them (seed {self.seed!r}, "
                       f"key {self.key!r})")
    if self.seed is not None:
      object.__setattr__(self, "seed", _validate_int("seed", self.seed))
    else:
      words = tuple(self.key) if isinstance(self.key, (list, tuple)) else ()
      if len(words) != 2 or not all(isinstance(w, (int, np.integer)) and 0 <= w < 2**32 for w in words):
        raise InputError(f"a recipe's key must be two uint32 words, got {self.key!r}")
      object.__setattr__(self, "key", tuple(int(w) for w in words))
    object.__setattr__(self, "index", _validate_int("index", self.index, minimum=0))
    _validate_norm(self.norm)
    object.__setattr__(self, "exclude", _validate_exclude(self.exclude))
    if self.orthogonalize_to is not None:
      o = _validate_int("orthogonalize_to", self.orthogonalize_to, minimum=0)
      if o == self.index:
        raise InputError(f"orthogonalize_to must differ from index, got {o}")
      object.__setattr__(self, "orthogonalize_to", o)

  def to_json(self) -> dict:
    """JSON-ready dict, tagged ``"kind": "random"``, with ``"seed"`` or ``"key"``."""
    source = {"seed": self.seed} if self.key is None else {"key": list(self.key)}
    return {"kind": "random", **source, "index": self.index, "norm": self.norm,
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
    if unknown or ("seed" in obj) == ("key" in obj):
      raise InputError(f"bad random recipe {obj!r} (unknown fields {sorted(unknown)}; a seed or a key is required)")
    if isinstance(obj.get("exclude"), list):
      obj["exclude"] = tuple(obj["exclude"])
    return cls(**obj)

  def generate(self, params: PyTree) -> PyTree:
    """The direction this recipe describes, for ``params`` (bit-identical each time)."""
    key = None if self.key is None else np.asarray(self.key, np.uint32)
    d = random_direction(params, key, seed=self.seed, index=self.index, norm=self.norm, exclude=self.exclude)
    if self.orthogonalize_to is not None:
      d1 = random_direction(params, key, seed=self.seed, index=self.orthogonalize_to, norm=self.norm,
                            exclude=self.exclude)
      d = orthogonalize(d, d1)
    return d


def directions_for(kind: str, params: PyTree, *, params_b: PyTree | None = None,
                   params_c: PyTree | None = None, key: jax.Array | None = None, seed: int | None = None,
                   norm: str = "layer", exclude: Sequence[str] = ("norm",), orthogonal: bool = False,
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
    key, seed: the random directions' PRNG key or seed (see :func:`random_direction`); at most
      one of them; neither: seed 0.
    norm, exclude: random-direction recipe (see :func:`random_direction`).

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

  if key is not None and seed is not None:
    raise InputError("directions_for takes a PRNG key or seed=, not both")
  words = None if key is None else tuple(int(w) for w in key_data(key))
  seed = 0 if key is None and seed is None else seed
  exclude = _validate_exclude(exclude)
  recipe = lambda i, o=None: RandomRecipe(seed, i, norm, exclude, o, words)  # noqa: E731
  if kind == "1d_random":
    recipes = [recipe(i) for i in range(num_directions)]
  elif kind == "2d_random":
    recipes = [recipe(0), recipe(1, 0 if orthogonal else None)]
  elif kind == "1d_interpolation":
    recipes = [None]
  elif kind == "2d_interpolation":
    recipes = [None, None]
  else:  # 2d_interpolation_random: the random direction is normalised against model a
    recipes = [None, recipe(0)]

  if kind == "2d_random" and orthogonal:  # as RandomRecipe.generate, without drawing d1 twice
    d1 = recipes[0].generate(params)
    d2 = orthogonalize(recipe(1).generate(params), d1)
    return [d1, d2], recipes
  others = iter([params_b, params_c])
  dirs = [r.generate(params) if r is not None else interpolation_direction(params, next(others)) for r in recipes]
  return dirs, recipes
