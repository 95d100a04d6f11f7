"""Directions on disk: a manifest of random recipes (regenerated) and interpolation directions (orbax).

``DIR/directions.json`` lists the directions in order. A random direction is stored as its
:class:`~jaxscape.core.directions.RandomRecipe` only and regenerated from the params on load; an
interpolation direction is stored with orbax in ``DIR/direction_<i>`` as float32. One saved
before layers were stacked (its layers a list) is stacked on load.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxscape.core.directions import MODEL_MISMATCH, RandomRecipe, check_matches
from jaxscape.core.paths import first_mismatch, layers_layout, leaf_shapes, path_str
from jaxscape.errors import InputError

PyTree = Any

MANIFEST = "directions.json"
_FORMAT_VERSION = 1


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
  return [(path_str(p), tuple(x.shape)) for p, x in flat]


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
  expected = leaf_shapes(params)
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
        if layers_layout(saved) == "list" and layers_layout(expected) == "stacked":
          # Saved before layers were stacked: read it as saved, stack it, place it like the params.
          d = _stack_list_layers(ckptr.restore(ckpt))
          check_matches(params, d)
          d = jax.tree.map(lambda x, a: jax.device_put(np.asarray(x, np.float32), a.sharding), d,
                           _abstract_f32(params))
        else:
          msg = first_mismatch(expected, saved, ("the model", f"stored direction {i}"))
          if msg is not None:
            raise InputError(f"{MODEL_MISMATCH}: {msg}")
          d = ckptr.restore(ckpt, _abstract_f32(params))
      check_matches(params, d)
      directions.append(d)
      recipes.append(None)
    else:
      raise InputError(f"direction {i} in {manifest} has unknown kind {kind!r}")
  return directions, recipes
