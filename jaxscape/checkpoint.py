"""Save and restore params pytrees with orbax (no HF conversion here)."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any


def save_params(path: str | os.PathLike, params: PyTree, *, overwrite: bool = False) -> None:
  """Write ``params`` to the orbax directory ``path`` (relative paths accepted).

  Every process must call this in a multi-host run, as orbax requires.
  Raises ValueError if ``path`` exists and ``overwrite`` is False.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not overwrite:
    raise ValueError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, params, force=overwrite)
    ckptr.wait_until_finished()


def restore_params(path: str | os.PathLike, abstract: PyTree | None = None) -> PyTree:
  """Read a params pytree written by :func:`save_params`.

  Args:
    abstract: optional tree of ``jax.ShapeDtypeStruct`` (with shardings) so arrays arrive
      placed and shape-checked; default restores as saved.
  """
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise ValueError(f"no orbax checkpoint at {path}")
  with ocp.StandardCheckpointer() as ckptr:
    if abstract is None:
      return ckptr.restore(path)
    return ckptr.restore(path, abstract)


def abstract_like(tree: PyTree) -> PyTree:
  """``jax.ShapeDtypeStruct`` tree (keeping shardings) for :func:`restore_params`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                      tree)
