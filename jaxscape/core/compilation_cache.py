"""JAX's persistent compilation cache, on by default for jaxscape's entry points.

Every entry point in ``experiments/`` calls :func:`enable` before its first compile (through
``experiments.common.run``; ``--compilation_cache_dir=DIR`` moves the cache,
``--nocompilation_cache`` turns it off). From Python, call it yourself before the first ``jit``::

    from jaxscape.core import compilation_cache
    compilation_cache.enable()              # $XDG_CACHE_HOME/jaxscape/xla or ~/.cache/jaxscape/xla
    compilation_cache.enable("/fast/disk")  # or a directory of your own

Every compiled program is cached, however small or quick to compile
(``jax_persistent_cache_min_compile_time_secs=0``, no minimum entry size), so a second run of
the same shapes (model, prompts, slice size, tokens, devices) loads its programs from disk instead
of compiling them. Entries are keyed by JAX on the program, the devices, the compile options and
the jax/jaxlib version, so runs of other shapes or versions add entries and never load wrong ones.

Size and sharing: :func:`enable` sets ``jax_compilation_cache_max_size`` to :data:`MAX_SIZE_BYTES`
(unless it is already set, e.g. by ``JAX_COMPILATION_CACHE_MAX_SIZE``). A size limit is what
makes JAX's own file cache safe to share between processes (parallel runs, the processes of a
multi-host run, several users who trust each other): with a limit, JAX takes a ``filelock``
lock (``DIR/.lockfile``) around every read, write and eviction, so no process reads a
half-written entry and two writers of one key do not interleave their bytes; without one (JAX's
default, -1) it writes entries in place, unlocked. Every process sharing the directory must be
able to open the lock file for writing (users sharing it: a group-writable directory and umask);
one that cannot gets JAX's one-line warnings and compiles instead.

The limit also turns on eviction of the least recently used entries once the directory holds
more. It is generous: entries hold compiled programs, not weights (the README's toy scan writes
under 1 MiB), so eviction only trims a cache that has served many models, shapes and JAX
versions, and an evicted program is simply compiled again. An entry that fails to decompress or
deserialize is reported by JAX as a warning and the program is compiled instead
(``jax_raise_persistent_cache_errors=False``). In a multi-host run (``jax.distributed``) only
process 0 writes entries; all processes read. On GPU, JAX also points XLA's per-fusion
autotuning cache at ``DIR/xla_gpu_per_fusion_autotune_cache_dir``.

The cache is trusted: whoever can write to the directory can make your runs execute their code,
so share it only with people you trust. A directory that cannot be created or written does not
stop a run: :func:`enable` warns on one line and the run goes on without the cache.

Python-API users: ``import jaxscape`` turns nothing on. Enabling a persistent cache changes
process-wide JAX configuration (and writes to the user's disk), which a library should not do
behind its caller's back: a researcher may have their own cache directory, size or JAX's own
``JAX_COMPILATION_CACHE_DIR``, and a notebook session compiles each program once anyway. The entry
points, which own their process, turn it on; from Python it is one call (above).

Cold compiles on CPU: :func:`use_fast_cpu_compiler` (also called by every entry point) has
XLA:CPU emit its fused loops with its classic emitters instead of the newer MLIR fusion
emitters (``--xla_cpu_use_fusion_emitters=false``), which compile the scan's programs markedly
faster with the same scan time (measured in BENCHMARKS.md).
"""

from __future__ import annotations

import glob
import logging
import os
import time
import uuid

_log = logging.getLogger("jaxscape")

# Bytes the cache directory may hold before JAX evicts its least recently used entries (see the
# module docstring: a limit is what makes JAX lock the directory).
MAX_SIZE_BYTES = 4 << 30

_CONFIG = {
    "jax_persistent_cache_min_compile_time_secs": 0.0,  # cache every program, not only slow ones
    "jax_persistent_cache_min_entry_size_bytes": -1,    # no minimum size (and no filesystem override)
}


def default_dir() -> str:
  """``$XDG_CACHE_HOME/jaxscape/xla``, or ``~/.cache/jaxscape/xla`` when that is unset."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "jaxscape", "xla")


def _problem_writing(path: str) -> str | None:
  """Why entries cannot be written to ``path`` (``None`` when they can): creates the dir, probes a file."""
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    return e.strerror or str(e)
  return None


def enable(cache_dir: str | None = None) -> str | None:
  """Turn on JAX's persistent compilation cache for this process; best before the first compile.

  Programs compiled before the call are not cached (they are compiled again, and then cached, by
  the next process); a cache JAX already opened on another directory is reopened on this one.

  Args:
    cache_dir: where entries live. ``None``: ``$JAX_COMPILATION_CACHE_DIR`` when set, else
      :func:`default_dir`. ``~`` is expanded.

  Returns:
    The absolute cache directory, or ``None`` when it cannot be created or written: then one
    warning line is logged, the cache is off for this process, and the caller goes on without it.
  """
  path = cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_dir()
  remote = "://" in path and not path.startswith("file://")
  if not remote:
    path = os.path.abspath(os.path.expanduser(path.removeprefix("file://")))
    problem = _problem_writing(path)
    if problem:
      _log.warning("compilation cache off: cannot write %s (%s)", path, problem)
      disable()
      return None
  import jax
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  for name, value in _CONFIG.items():
    jax.config.update(name, value)
  if jax.config.jax_compilation_cache_max_size == -1:  # JAX's default: unlimited, and unlocked
    jax.config.update("jax_compilation_cache_max_size", MAX_SIZE_BYTES)
  if not remote:
    _add_missing_access_times(path)
  from jax.experimental.compilation_cache import compilation_cache as jax_cache
  jax_cache.reset_cache()  # JAX opens its cache once: a cache opened before this call reopens on ``path``
  return path


# XLA:CPU flags for faster cold compiles (see the module docstring); each is left alone when
# XLA_FLAGS already names it.
FAST_CPU_COMPILER_FLAGS = ("--xla_cpu_use_fusion_emitters=false",)


def use_fast_cpu_compiler() -> list[str]:
  """Add :data:`FAST_CPU_COMPILER_FLAGS` to ``XLA_FLAGS``, each unless ``XLA_FLAGS`` already sets it.

  XLA reads ``XLA_FLAGS`` once, when JAX starts its first backend: call this before anything runs
  on a device (a no-op once a backend is up). Accelerator backends ignore these flags. Tokens may
  differ from the default emitters' by float summation order only: on the README's default scan
  1 generation of 1,680 (a far point's garbage) changed, every ASR and VISAGE stayed the same.

  Returns:
    The flags it added.
  """
  if _backend_started():
    return []
  current = os.environ.get("XLA_FLAGS", "")
  added = [f for f in FAST_CPU_COMPILER_FLAGS if f.split("=")[0] not in current]
  if added:
    os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added


def disable() -> None:
  """Turn the persistent compilation cache off for this process (also one set by ``JAX_COMPILATION_CACHE_DIR``).

  Like :func:`enable`, it takes effect when called before the first compile: JAX decides once
  per process whether it uses the cache.
  """
  import jax
  jax.config.update("jax_enable_compilation_cache", False)


def is_enabled() -> bool:
  """Whether JAX will use a persistent cache directory in this process."""
  import jax
  return bool(jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir)


def _backend_started() -> bool:
  """Whether JAX has started a backend (too late for ``XLA_FLAGS``, which it reads then).

  JAX has no public query for this, but its config refuses to change a backend option once a
  backend is up: change one (a CPU topology timeout, nothing we use) and put it back.
  """
  import jax
  name = "jax_cpu_get_local_topology_timeout_minutes"
  value = getattr(jax.config, name, None)
  if value is None:  # a JAX without the option: assume not (a late XLA_FLAGS edit only goes unread)
    return False
  try:
    jax.config.update(name, value + 1)
  except RuntimeError:
    return True
  jax.config.update(name, value)
  return False


def _add_missing_access_times(path: str) -> None:
  """Give every entry of ``path`` the access-time file JAX's eviction reads (``KEY-atime``).

  Entries written without a size limit (by JAX's default, or by jaxscape before it set one) have
  none, and JAX's eviction fails on an entry without one (every later write would warn and be
  dropped). JAX's format: the time in nanoseconds, 8 bytes little-endian.
  """
  now = time.time_ns().to_bytes(8, "little")
  for entry in glob.glob(os.path.join(glob.escape(path), "*-cache")):
    atime = entry.removesuffix("-cache") + "-atime"
    if not os.path.exists(atime):
      try:
        with open(atime, "wb") as f:
          f.write(now)
      except OSError:  # read-only entries of a shared dir: JAX warns on the writes that need them
        pass
