"""Save and restore params pytrees with orbax (no HF conversion here)."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxscape.errors import InputError

PyTree = Any


def save_params(path: str | os.PathLike, params: PyTree, *, overwrite: bool = False) -> None:
  """Write ``params`` to the orbax directory ``path`` (relative paths accepted).

  Every process must call this in a multi-host run, as orbax requires.
  Raises ValueError if ``path`` exists and ``overwrite`` is False.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not overwrite:
    raise InputError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
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
    raise InputError(f"no orbax checkpoint at {path}")
  with ocp.StandardCheckpointer() as ckptr:
    if abstract is None:
      return ckptr.restore(path)
    return ckptr.restore(path, abstract)


def saved_tree(path: str | os.PathLike) -> PyTree:
  """The tree saved at ``path`` by :func:`save_params`, leaves orbax metadata (shape, dtype); reads no values."""
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise InputError(f"no orbax checkpoint at {path}")
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(path)
  tree = getattr(meta, "item_metadata", meta)
  return getattr(tree, "tree", tree)


def saved_layers_are_list(path: str | os.PathLike) -> bool:
  """Whether the params saved at ``path`` hold ``layers`` as a list of per-layer dicts (the layout
  before layers were stacked on a leading axis)."""
  tree = saved_tree(path)
  return isinstance(tree, dict) and isinstance(tree.get("layers"), (list, tuple))


def abstract_like(tree: PyTree) -> PyTree:
  """``jax.ShapeDtypeStruct`` tree (keeping shardings) for :func:`restore_params`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                      tree)


# ------------------------------------------------------------------ training state


def _manager(directory: str, keep: int | None) -> ocp.CheckpointManager:
  # Synchronous saves: the train step donates its buffers right after a save returns.
  # Each step is written to a temp dir and renamed when complete, so a kill mid-save
  # leaves the previous checkpoint intact (temp dirs are cleaned up on the next open).
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def latest_train_state(directory: str | os.PathLike) -> tuple[int, dict] | None:
  """``(step, metadata)`` of the newest complete training state in ``directory``, or None."""
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    return None
  with _manager(directory, keep=None) as mngr:
    step = mngr.latest_step()
    if step is None:
      return None
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  return int(step), meta


def save_train_state(directory: str | os.PathLike, step: int, state: PyTree, meta: dict, *,
                     keep: int = 2) -> None:
  """Write ``state`` (a pytree of arrays) and ``meta`` (JSON-serialisable) as step ``step``.

  Keeps the newest ``keep`` steps. Every process must call this in a multi-host run.
  """
  with _manager(os.fspath(directory), keep=keep) as mngr:
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
              force=True)


def restore_train_state(directory: str | os.PathLike, step: int, abstract: PyTree) -> PyTree:
  """The state saved by :func:`save_train_state` at ``step``, placed and shape-checked like ``abstract``."""
  with _manager(os.fspath(directory), keep=None) as mngr:
    return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
