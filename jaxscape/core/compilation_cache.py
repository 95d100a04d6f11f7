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
The directory grows without bound (JAX's default, ``jax_compilation_cache_max_size=-1``); delete
it at any time.

Sharing one directory between processes (parallel runs, the processes of a multi-host run,
several users who trust each other) is safe:

* Reads: JAX (0.10) reads an entry with one ``read_bytes`` of ``KEY-cache`` and treats a
  missing file as a miss; an entry that fails to decompress or deserialize is reported by JAX as
  a warning and the program is compiled instead (``jax_raise_persistent_cache_errors=False``).
* Writes: JAX's own file cache (``jax._src.lru_cache.LRUCache.put``, without a size limit: no
  file lock either) writes ``KEY-cache`` in place with ``Path.write_bytes``, so another process
  could read a half-written entry, and two processes writing one key at the same time could
  interleave their bytes. :func:`enable` therefore makes JAX's cache write each entry to a
  private temporary file in the same directory (``.tmp-PID-RANDOM``, created with ``O_EXCL``)
  and ``os.replace`` it onto ``KEY-cache``: a rename within one file system is atomic, so readers
  see no file or a whole entry, never a partial one, and the last of two concurrent writers of a
  key wins with an equally valid entry. A temporary file left by a killed process is never read
  (JAX opens only ``*-cache`` names) and can be deleted. With a size limit
  (``jax_compilation_cache_max_size``) or a non-local path (``gs://...``), JAX's own code runs
  unchanged: it then serialises reads, writes and evictions with a ``filelock`` lock file.
* In a multi-host run (``jax.distributed``) only process 0 writes entries; all processes read.
* On GPU, JAX also points XLA's per-fusion autotuning cache at
  ``DIR/xla_gpu_per_fusion_autotune_cache_dir`` (only process 0 of a multi-host run updates it);
  XLA writes each of its files to a temporary file first and renames it into place, too.

The cache is trusted: whoever can write to the directory can make your runs execute their code,
so share it only with people you trust. A directory that cannot be created or written does not
stop a run: :func:`enable` warns on one line and the run goes on without the cache.

Cold compiles on CPU: :func:`use_fast_cpu_compiler` (also called by every entry point) has
XLA:CPU emit its fused loops with its classic emitters instead of the newer MLIR fusion
emitters (``--xla_cpu_use_fusion_emitters=false``), which compile the scan's programs markedly
faster with the same scan time (measured in BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import os
import uuid

_log = logging.getLogger("jaxscape")

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
  _install_atomic_writes()
  _reopen_if_elsewhere(path)
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
  try:
    from jax._src import xla_bridge  # private: whether a backend is up (too late for XLA_FLAGS)
    if xla_bridge.backends_are_initialized():
      return []
  except (ImportError, AttributeError):
    pass
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


def _reopen_if_elsewhere(path: str) -> None:
  """JAX opens its cache once, at the first compile: drop one already open on another dir (or without
  the atomic writer), so the next compile opens ``path``."""
  try:
    from jax._src import compilation_cache as jax_cc
    from jax._src import lru_cache
    cache = jax_cc._cache
    if cache is not None and (str(cache._path) != path or type(cache) is lru_cache.LRUCache):
      jax_cc.reset_cache()
  except (ImportError, AttributeError):
    pass


def _install_atomic_writes() -> bool:
  """Make JAX's file cache write entries by temporary file + ``os.replace`` (see the module docstring).

  Returns whether the atomic writer is installed; ``False`` (JAX's own writer stays) when this JAX
  version's internals differ from 0.10's.
  """
  try:
    from jax._src import compilation_cache as jax_cc
    from jax._src import lru_cache
  except ImportError:
    return False
  base = getattr(jax_cc, "LRUCache", None)
  if getattr(base, "_jaxscape_atomic", False):
    return True
  if base is not lru_cache.LRUCache or not hasattr(lru_cache, "_CACHE_SUFFIX"):
    return False

  class AtomicLRUCache(base):
    """JAX's ``LRUCache``; without a size limit, on a local path, each entry is written atomically."""

    _jaxscape_atomic = True

    def put(self, key: str, value: bytes) -> None:
      root = str(self.path)
      if self.eviction_enabled or "://" in root:
        return super().put(key, value)
      if not key:
        raise ValueError("key cannot be empty")
      final = os.path.join(root, f"{key}{lru_cache._CACHE_SUFFIX}")
      if os.path.exists(final):
        return
      tmp = os.path.join(root, f".tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
      fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode: as JAX's, minus the umask
      try:
        with os.fdopen(fd, "wb") as f:
          f.write(value)
        os.replace(tmp, final)
      except BaseException:
        try:
          os.unlink(tmp)
        except OSError:
          pass
        raise

  AtomicLRUCache.__name__ = AtomicLRUCache.__qualname__ = "AtomicLRUCache"
  jax_cc.LRUCache = AtomicLRUCache  # what jax_cc.get_file_cache builds when it opens the cache
  return True
