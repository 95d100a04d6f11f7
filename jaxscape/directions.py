"""Random and interpolation directions over params pytrees, grid axes, and their storage.

A *direction* is a pytree with the same tree and shapes as the params, float32
leaves. This module maps pytrees to pytrees; it only sees leaves and their paths
(``"layers/0/attn/q/kernel"``), never ``jaxscape.model``.

Random directions
  Per tensor a standard Gaussian, then normalised (``norm``):

  * ``"layer"``: ``d / ||d|| * ||w||`` over the whole tensor (Frobenius norms), as the
    reference implementation does;
  * ``"filter"``: the same per output unit. Kernels ``[in, out]`` are normalised per
    column (axis 0 reduced; for rank > 2 every axis but the last is reduced); a leaf
    whose path ends in ``embedding`` (``[V, D]``) per row, i.e. per vocabulary entry
    (every axis but the first reduced); 0-/1-D leaves (biases) as a whole tensor;
  * ``"none"``: the raw Gaussian.

  Leaves whose path matches any regex of ``exclude`` (``re.search``, case-sensitive;
  our paths are lower case) get zeros; the default ``("norm",)`` zeroes every norm
  scale, as the reference's blacklist does.

  Every leaf draws from its own key,
  ``fold_in(fold_in(PRNGKey(seed), index), crc32(path))``, never from a split in
  traversal order, so a leaf's draw depends only on (seed, index, path) and not on
  what else is in the tree. The Gaussian draws do not depend on sharding provided
  ``jax_threefry_partitionable`` is on (JAX's default since 0.5; the package init
  sets it explicitly; this module sets nothing global — users importing only this
  module should set it themselves); the norms, being reductions, may differ in the
  last ulp between shardings. Sharded params give directions with the same shardings.
  A random direction is stored as its :class:`RandomRecipe` only and regenerated from
  the params: bit-identical for the same params, placement, backend and JAX version
  (the draw is one fixed jitted program), equal to float tolerance otherwise. The torch reference draws from torch's global
  generator, so its numbers differ from ours; only the recipe's *distribution* matches.

Interpolation directions
  ``θ_b − θ_a`` in float32; stored with orbax.

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
  """Path strings of the leaves in flatten order, e.g. ``"layers/0/attn/q/kernel"``."""
  return [_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def path_index(path: str) -> int:
  """Stable per-leaf integer in ``[0, 2**32)``: ``zlib.crc32`` of the UTF-8 path string."""
  return zlib.crc32(path.encode("utf-8"))


def _shapes(tree: PyTree) -> list[tuple[str, tuple[int, ...]]]:
  return [(_path_str(p), tuple(np.shape(x))) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _first_mismatch(expected: list[tuple[str, tuple]], got: list[tuple[str, tuple]],
                    names: tuple[str, str]) -> str | None:
  """Description of the first path/shape difference between two (path, shape) lists, or None."""
  e_name, g_name = names
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
    raise ValueError(f"{_MODEL_MISMATCH}: {msg}")


# ------------------------------------------------------------------ random directions


def _validate_exclude(exclude) -> tuple[str, ...]:
  if isinstance(exclude, str):  # a bare string would otherwise be iterated per character
    exclude = (exclude,)
  exclude = tuple(exclude)
  for pat in exclude:
    if not isinstance(pat, str):
      raise ValueError(f"exclude patterns must be strings, got {pat!r}")
    try:
      re.compile(pat)
    except re.error as e:
      raise ValueError(f"invalid exclude regex {pat!r}: {e}") from None
  return exclude


def _validate_int(name: str, value, *, minimum: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be an integer, got {value!r}")
  if minimum is not None and value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}")
  return int(value)


def _validate_norm(norm: str) -> str:
  if norm not in NORMS:
    raise ValueError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")
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


def _random_leaf(w: jax.Array, key: jax.Array, *, norm: str, path: str) -> jax.Array:
  """One leaf's normalised Gaussian draw; ``key`` is that leaf's key."""
  return _normalize(jax.random.normal(key, w.shape, jnp.float32), w, path, norm)


@functools.lru_cache(maxsize=64)
def _random_leaf_jit(sharding):
  """Jitted :func:`_random_leaf` placing its output like the param (None: default placement)."""
  return jax.jit(_random_leaf, static_argnames=("norm", "path"), out_shardings=sharding)


def _norm_path(path: str, norm: str) -> str:
  # The only thing _normalize reads from a path is whether it names an embedding table (filter
  # norm); collapsing the rest lets the 12 layers of a model reuse one compiled draw per shape.
  return "embedding" if norm == "filter" and path.split("/")[-1] == "embedding" else ""


def random_direction(params: PyTree, *, seed: int, index: int = 0, norm: str = "layer",
                     exclude: Sequence[str] = ("norm",)) -> PyTree:
  """A normalised Gaussian direction with the tree and shapes of ``params``.

  Args:
    params: params pytree, any float dtype (only shapes, paths and per-tensor norms are used).
    seed: base seed; ``PRNGKey(seed)``.
    index: direction index, folded into the key (different index -> independent direction).
    norm: "layer", "filter" or "none" (see the module docstring).
    exclude: regexes; leaves whose path matches any (``re.search``) get zeros.

  Returns:
    Same tree as ``params``, float32 leaves of the same shapes (placed like the params
    when they are sharded). Bit-identical when regenerated with the same arguments.
  """
  seed = _validate_int("seed", seed)
  index = _validate_int("index", index, minimum=0)
  norm = _validate_norm(norm)
  exclude = _validate_exclude(exclude)
  # The key is built on the host so a python-int seed of any size maps exactly as PRNGKey does.
  key = jax.random.fold_in(jax.random.PRNGKey(seed), np.uint32(index))
  # One jitted draw per leaf, not one for the whole tree: a whole-tree jit held every leaf's
  # draw and output at once (+1.10 GiB RSS for the 0.36 GiB of a 100M model); per leaf, the
  # transient is one leaf. Same keys, so the same bits.
  leaves = []
  for p, w in jax.tree_util.tree_flatten_with_path(params)[0]:
    path = _path_str(p)
    # Sharded params get directions sharded alike; others, the default placement (as before).
    concrete = isinstance(w, jax.Array) and not isinstance(w, jax.core.Tracer)
    sharding = w.sharding if concrete and len(w.sharding.device_set) > 1 else None
    if any(re.search(pat, path) for pat in exclude):
      d = jnp.zeros(w.shape, jnp.float32, device=sharding)
    else:
      d = _random_leaf_jit(sharding)(w, jax.random.fold_in(key, np.uint32(path_index(path))), norm=norm,
                                     path=_norm_path(path, norm))
    leaves.append(d)
  return jax.tree_util.tree_unflatten(jax.tree.structure(params), leaves)


# ------------------------------------------------------------ interpolation / algebra


@jax.jit
def _subtract(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree.map(lambda x, y: y.astype(jnp.float32) - x.astype(jnp.float32), a, b)


def interpolation_direction(params_a: PyTree, params_b: PyTree) -> PyTree:
  """``params_b − params_a`` leaf by leaf, in float32.

  Raises:
    ValueError: naming the first path/shape that differs ("interpolation between models
      of different architecture").
  """
  msg = _first_mismatch(_shapes(params_a), _shapes(params_b), ("model a", "model b"))
  if msg is not None:
    raise ValueError(f"{_ARCH_MISMATCH}: {msg}")
  return _subtract(params_a, params_b)


@jax.jit
def _orthogonalize(d2: PyTree, d1: PyTree) -> PyTree:
  f32 = lambda x: x.astype(jnp.float32)
  # Elementwise product + reduce (not a matmul) so no backend lowers the precision of the dot.
  dot = sum(jnp.sum(f32(a) * f32(b)) for a, b in zip(jax.tree.leaves(d2), jax.tree.leaves(d1)))
  nn = sum(jnp.sum(jnp.square(f32(b))) for b in jax.tree.leaves(d1))
  coef = jnp.where(nn > 0, dot / jnp.where(nn > 0, nn, 1.0), 0.0)
  return jax.tree.map(lambda a, b: f32(a) - coef * f32(b), d2, d1)


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
        raise ValueError(f"orthogonalize_to must differ from index, got {o}")
      object.__setattr__(self, "orthogonalize_to", o)

  def to_json(self) -> dict:
    """JSON-ready dict, tagged ``"kind": "random"``."""
    return {"kind": "random", "seed": self.seed, "index": self.index, "norm": self.norm,
            "exclude": list(self.exclude), "orthogonalize_to": self.orthogonalize_to}

  @classmethod
  def from_json(cls, obj: dict | str) -> "RandomRecipe":
    """Inverse of :meth:`to_json` (a dict or its JSON string)."""
    if isinstance(obj, str):
      obj = json.loads(obj)
    if not isinstance(obj, dict):
      raise ValueError(f"a random recipe must be a JSON object, got {obj!r}")
    obj = dict(obj)
    kind = obj.pop("kind", "random")
    if kind != "random":
      raise ValueError(f"not a random-direction recipe (kind {kind!r})")
    unknown = set(obj) - {f.name for f in dataclasses.fields(cls)}
    if unknown or "seed" not in obj:
      raise ValueError(f"bad random recipe {obj!r} (unknown fields {sorted(unknown)}; seed is required)")
    if "exclude" in obj:
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
    raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
  num_directions = _validate_int("num_directions", num_directions, minimum=1)
  if num_directions > 1 and kind != "1d_random":
    raise ValueError(f"num_directions > 1 needs kind 1d_random, got {kind!r} with {num_directions}")
  if orthogonal and kind != "2d_random":
    raise ValueError(f"orthogonal is only supported for kind 2d_random, got {kind!r}")
  needs_b = "interpolation" in kind
  needs_c = kind == "2d_interpolation"
  for name, value, needed in (("params_b", params_b, needs_b), ("params_c", params_c, needs_c)):
    if needed and value is None:
      raise ValueError(f"kind {kind!r} needs {name} (a second model to interpolate to)")
    if not needed and value is not None:
      raise ValueError(f"kind {kind!r} does not use {name}; pass it only for interpolation kinds")

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
    raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps <= 0:
    raise ValueError(f"steps must be > 0, got {steps!r}")
  if isinstance(extra_steps, bool) or not isinstance(extra_steps, (int, np.integer)) or extra_steps < 0:
    raise ValueError(f"extra_steps must be an integer >= 0, got {extra_steps!r}")
  try:
    m = float(multiplier)
  except (TypeError, ValueError):
    raise ValueError(f"multiplier must be a number, got {multiplier!r}") from None
  if m == 0 or not math.isfinite(m):
    raise ValueError(f"multiplier must be finite and nonzero, got {multiplier!r}")
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
    raise ValueError(f"{path} already holds directions (pass overwrite=True to replace them)")
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
      json.dump({"format": "jaxscape.directions", "version": _FORMAT_VERSION, "directions": entries}, f, indent=1)
    os.replace(tmp, os.path.join(path, MANIFEST))


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
    raise ValueError(f"no {MANIFEST} in {path}")
  with open(manifest, encoding="utf-8") as f:
    meta = json.load(f)
  if meta.get("format") != "jaxscape.directions" or meta.get("version") != _FORMAT_VERSION:
    raise ValueError(f"{manifest} is not a jaxscape directions manifest of version {_FORMAT_VERSION}")
  expected = _shapes(params)
  directions, recipes = [], []
  for i, entry in enumerate(meta["directions"]):
    kind = entry.get("kind")
    if kind == "random":
      recipe = RandomRecipe.from_json(entry)
      directions.append(recipe.generate(params))
      recipes.append(recipe)
    elif kind == "interpolation":
      ckpt = os.path.join(path, entry["orbax"])
      if not os.path.isdir(ckpt):
        raise ValueError(f"direction {i}: no orbax checkpoint at {ckpt}")
      with ocp.StandardCheckpointer() as ckptr:
        msg = _first_mismatch(expected, _saved_shapes(ckpt, ckptr), ("the model", f"stored direction {i}"))
        if msg is not None:
          raise ValueError(f"{_MODEL_MISMATCH}: {msg}")
        d = ckptr.restore(ckpt, _abstract_f32(params))
      check_matches(params, d)
      directions.append(d)
      recipes.append(None)
    else:
      raise ValueError(f"direction {i} in {manifest} has unknown kind {kind!r}")
  return directions, recipes
