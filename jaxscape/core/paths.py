"""Leaf paths of params pytrees: path strings, stacked layer leaves, per-slice indices, tree comparison.

A leaf's path is its keys joined by ``/`` (``"layers/attn/q/kernel"``). The params hold their
layers stacked: ``layers/attn/q/kernel`` is one [L, ...] leaf whose slice ``i`` is layer ``i``'s
tensor, named by its per-layer path ``layers/{i}/attn/q/kernel``. A ``layers/<int>/...`` path
(the former per-layer list layout) is an ordinary leaf.
"""

from __future__ import annotations

import zlib
from typing import Any

import jax
import numpy as np

PyTree = Any


def _key_str(k) -> str:
  for attr in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey / FlattenedIndexKey
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_str(path) -> str:
  """A ``jax.tree_util`` key path as a string: ``(DictKey('layers'), DictKey('attn'), ...)`` -> ``"layers/attn/..."``."""
  return "/".join(_key_str(k) for k in path)


def leaf_paths(tree: PyTree) -> list[str]:
  """Path strings of the leaves in flatten order, e.g. ``"layers/attn/q/kernel"`` (a stacked leaf)."""
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


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

  Random keys, exclusion patterns and norms act on these, one per layer slice.
  """
  if not is_stacked(path):
    return [path]
  rest = path.split("/", 1)[1]
  return [f"layers/{i}/{rest}" for i in range(num_layers)]


def leaf_shapes(tree: PyTree) -> list[tuple[str, tuple[int, ...]]]:
  """``(path, shape)`` of every leaf in flatten order."""
  return [(path_str(p), tuple(np.shape(x))) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def layers_layout(shapes: list[tuple[str, tuple]]) -> str:
  """"list" when the layers are a per-layer list (``layers/0/...``), "stacked" otherwise."""
  return "list" if any(p.startswith("layers/") and p.split("/")[1].isdigit() for p, _ in shapes) else "stacked"


def first_mismatch(expected: list[tuple[str, tuple]], got: list[tuple[str, tuple]],
                   names: tuple[str, str]) -> str | None:
  """Description of the first path/shape difference between two :func:`leaf_shapes` lists, or None.

  ``names``: what to call the two trees in the message (e.g. ``("the model", "the direction")``).
  """
  e_name, g_name = names
  layouts = layers_layout(expected), layers_layout(got)
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
