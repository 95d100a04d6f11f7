"""Device mesh ('points', 'model'), partition rules for params/directions, multi-host helpers."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxscape.core.paths import is_stacked, path_str
from jaxscape.errors import InputError

PyTree = Any
POINTS = "points"
MODEL = "model"

# Regex on the param path -> spec of one layer's tensor; first match wins; default replicated.
# Kernels are [in, out]: column-parallel for q/k/v/gate/up and the output head, row-parallel for
# o/down, so each attention head and MLP unit lives on one model shard. The embedding is split
# over the vocab. Stacked layer leaves (``layers/attn/q/kernel`` [L, in, out]) get the spec
# behind a leading None: the layer axis is never split (the layer scan reads one slice per step).
PARAM_RULES: tuple[tuple[str, P], ...] = (
    (r"attn/(q|k|v)/kernel$", P(None, MODEL)),
    (r"attn/(q|k|v)/bias$", P(MODEL)),
    (r"attn/o/kernel$", P(MODEL, None)),
    (r"mlp/(gate|up)/kernel$", P(None, MODEL)),
    (r"mlp/(gate|up)/bias$", P(MODEL)),
    (r"mlp/down/kernel$", P(MODEL, None)),
    (r"embed/embedding$", P(MODEL, None)),
    (r"lm_head/kernel$", P(None, MODEL)),
)


# Auto split: a device per core only if padding the points to a multiple of the devices adds
# at most this fraction of idle point-slots (see split_cpu_host).
MAX_IDLE_POINT_SLOTS = 0.1


def cpu_devices_for(points: int, cores: int) -> int:
  """The most devices (<= ``cores``) whose padding of ``points`` leaves <= 10% of point-slots idle.

  The points of a slice are padded to a multiple of the device count, and a padded slot costs as
  much as a real point: one device per core pays on the toy scan (21 points over 2 devices, 1 idle
  slot of 22) but not for 5 points of a 100M model over 2 devices (6 slots), where the split was
  slower than one device (BENCHMARKS.md, "One device per core"). So a split must not idle more
  than it gains.
  """
  for d in range(max(1, cores), 1, -1):
    if d * -(-points // d) - points <= MAX_IDLE_POINT_SLOTS * points:
      return d
  return 1


def split_cpu_host(n: int = 0, *, points: int | None = None) -> int:
  """Expose a CPU-only host as ``n`` JAX devices (0: one per core), so grid points run in parallel.

  XLA:CPU runs the many small ops of a decoding step on fewer cores than the host has; with one
  device per core each device decodes its own share of the points (splitting points is
  bit-identical), which is faster on the toy scan (BENCHMARKS.md, "One device per core"). With
  ``n`` = 0 and the grid's ``points`` given, fewer devices are used when one per core would leave
  many padded point-slots idle (:func:`cpu_devices_for`). Sets ``jax_num_cpu_devices``, which JAX
  reads when it starts its CPU backend: call it before anything runs on a device. Does nothing
  (returns 0) when ``n`` is 1, when ``XLA_FLAGS`` or ``jax_num_cpu_devices`` already sets a device
  count, when ``JAX_PLATFORMS`` names another platform, when an accelerator plugin is installed or
  when the backends are already up. Returns the device count it set.
  """
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
  n = n or (cpu_devices_for(points, cores) if points else cores)
  platforms = os.environ.get("JAX_PLATFORMS", "")
  accelerator = (importlib.util.find_spec("jax_plugins") is not None or importlib.util.find_spec("libtpu") is not None
                 or any(True for _ in importlib.metadata.entry_points(group="jax_plugins")))
  if (n <= 1 or jax.config.jax_num_cpu_devices >= 0
      or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
      or platforms not in ("", "cpu") or (accelerator and platforms != "cpu")):
    return 0
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:  # JAX refuses once a backend is up: too late to add devices
    return 0
  return n


def parse_mesh(text: str | None, n_devices: int | None = None) -> dict[str, int]:
  """'points:4,model:2' -> {'points': 4, 'model': 2}; None/'' -> all devices on points.

  A size of -1 takes the remaining devices. Raises ValueError on a malformed spec or a
  product different from the device count.
  """
  n = n_devices or jax.device_count()
  if not text:
    return {POINTS: n, MODEL: 1}
  sizes = {POINTS: 1, MODEL: 1}
  for part in text.split(","):
    m = re.fullmatch(r"\s*(points|model)\s*:\s*(-?\d+)\s*", part)
    if not m:
      raise InputError(f"--mesh={text!r}: expected e.g. points:4,model:2")
    sizes[m.group(1)] = int(m.group(2))
  free = [k for k, v in sizes.items() if v == -1]
  if len(free) > 1 or any(v == 0 or v < -1 for v in sizes.values()):
    raise InputError(f"--mesh={text!r}: sizes must be positive (one may be -1)")
  if free:
    other = sizes[MODEL if free[0] == POINTS else POINTS]
    sizes[free[0]] = n // other
  if sizes[POINTS] * sizes[MODEL] != n:
    raise InputError(f"--mesh={text!r} needs {sizes[POINTS] * sizes[MODEL]} devices, {n} are available")
  return sizes


def make_mesh(text: str | None = None, devices=None) -> Mesh:
  """Mesh with axes ('points', 'model') over ``devices`` (default: all, every process)."""
  devices = list(devices) if devices is not None else jax.devices()
  sizes = parse_mesh(text, len(devices))
  return Mesh(np.asarray(devices).reshape(sizes[POINTS], sizes[MODEL]), (POINTS, MODEL))


def param_specs(params: PyTree, mesh: Mesh) -> PyTree:
  """PartitionSpec per leaf from :data:`PARAM_RULES` (replicated where a dim does not divide).

  Stacked layer leaves [L, ...] get ``P(None, *spec)``: the layer axis stays whole.
  """
  model_size = mesh.shape[MODEL]

  def spec(path, leaf):
    if model_size == 1:
      return P()
    name = path_str(path)
    lead = 1 if is_stacked(name) else 0
    for pattern, s in PARAM_RULES:
      if re.search(pattern, name):
        ok = len(leaf.shape) == lead + len(s) and all(
            ax is None or leaf.shape[lead + i] % model_size == 0 for i, ax in enumerate(s))
        return P(*([None] * lead), *s) if ok else P()
    return P()

  return jax.tree_util.tree_map_with_path(spec, params)


def config_for_mesh(cfg, mesh: Mesh):
  """``cfg`` (a ``ModelConfig``) with ``model_shards`` set to the mesh's model axis.

  Pass this config to the model and scan functions whose params are placed with
  :func:`param_shardings` on ``mesh``: their fused projections then stay on their shards.
  """
  return dataclasses.replace(cfg, model_shards=mesh.shape[MODEL])


def param_shardings(params: PyTree, mesh: Mesh) -> PyTree:
  return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(params, mesh))


def direction_shardings(params: PyTree, mesh: Mesh) -> PyTree:
  """Shardings for stacked directions ``[n, *S]``: the params' spec behind a replicated axis."""
  return jax.tree.map(lambda s: NamedSharding(mesh, P(None, *s)), param_specs(params, mesh))


def points_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading axis over 'points', the rest replicated."""
  return NamedSharding(mesh, P(POINTS, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put(tree: PyTree, shardings: PyTree) -> PyTree:
  """Place host arrays (the same full value on every process) onto ``shardings``."""
  def one(x, s):
    x = np.asarray(x)
    if jax.process_count() == 1:
      return jax.device_put(x, s)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree.map(one, tree, shardings)


def to_host(x: jax.Array) -> np.ndarray:
  """A (possibly multi-process) array as one numpy array on every process."""
  if jax.process_count() == 1 or not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def initialize_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None,
                           local_device_ids: str | None = None) -> None:
  """``jax.distributed.initialize`` from explicit values, or from the environment when all are None.

  On CPU the gloo collectives are selected so several local processes can run one scan.
  """
  if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if coordinator:
    kwargs.update(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
  if local_device_ids:
    kwargs["local_device_ids"] = [int(i) for i in local_device_ids.split(",")]
  jax.distributed.initialize(**kwargs)
