"""The persistent compilation cache: on by default in the entry points, shared safely, never fatal.

Each case runs a tiny entry point (``experiments.common.run`` around one jitted function) as a
subprocess and counts JAX's own cache events (``jax.monitoring``).
"""

import glob
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A minimal entry point: common.run parses --[no]compilation_cache / --compilation_cache_dir and sets
# the cache up before main compiles anything.
CHILD = r"""
import json
from experiments import common

def main(argv):
  import jax
  import jax.numpy as jnp
  from jax import monitoring
  events = []
  monitoring.register_event_listener(lambda name, **kw: events.append(name))
  x = jnp.arange(64.0).reshape(8, 8)
  y = jax.jit(lambda a: jnp.tanh(a @ a.T).sum(axis=1))(x)
  print(json.dumps({"y": float(y.sum()),
                    "hits": events.count("/jax/compilation_cache/cache_hits"),
                    "misses": events.count("/jax/compilation_cache/cache_misses"),
                    "dir": jax.config.jax_compilation_cache_dir,
                    "enabled": bool(jax.config.jax_enable_compilation_cache)}))

common.run(main)
"""


def _env(tmp_path, **extra):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
  env.update(PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu",
             XDG_CACHE_HOME=str(tmp_path / "xdg"))
  env.update(extra)
  return env


def _start(tmp_path, *flags, **env):
  return subprocess.Popen([sys.executable, "-c", CHILD, *flags], cwd=REPO, env=_env(tmp_path, **env),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc):
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  return json.loads(out.strip().splitlines()[-1]), err


def _run(tmp_path, *flags, **env):
  return _finish(_start(tmp_path, *flags, **env))


def _entries(d):
  return sorted(glob.glob(os.path.join(str(d), "*-cache")))


def test_on_by_default_and_second_process_hits(tmp_path):
  default_dir = tmp_path / "xdg" / "jaxscape" / "xla"
  first, err = _run(tmp_path)
  assert err == ""
  assert first["dir"] == str(default_dir) and first["enabled"]
  entries = _entries(default_dir)
  assert first["misses"] >= 1 and first["hits"] == 0
  assert len(entries) == first["misses"]  # every program is written, however small or fast to compile
  second, err = _run(tmp_path)
  assert err == ""
  assert second["hits"] == first["misses"] and second["misses"] == 0
  assert second["y"] == first["y"] and _entries(default_dir) == entries


def test_concurrent_processes_share_a_dir(tmp_path):
  shared = str(tmp_path / "shared")
  procs = [_start(tmp_path, f"--compilation_cache_dir={shared}") for _ in range(2)]
  results = [_finish(p) for p in procs]
  for r, err in results:
    assert err == "", err  # no "Error reading persistent compilation cache entry" warnings
    assert r["dir"] == shared and r["hits"] + r["misses"] >= 1
  again, err = _run(tmp_path, f"--compilation_cache_dir={shared}")
  assert err == "" and again["misses"] == 0 and again["hits"] == len(_entries(shared)) >= 1
  assert again["y"] == results[0][0]["y"]


def test_flag_off_writes_nothing(tmp_path):
  env_dir = tmp_path / "env_dir"  # also a dir set the JAX way is left alone
  r, err = _run(tmp_path, "--nocompilation_cache", JAX_COMPILATION_CACHE_DIR=str(env_dir))
  assert err == ""
  assert not r["enabled"] and r["hits"] == 0 and r["misses"] == 0
  assert not (tmp_path / "xdg").exists() and not env_dir.exists()


def test_jax_env_dir_is_the_default_when_set(tmp_path):
  env_dir = tmp_path / "env_dir"
  r, _ = _run(tmp_path, JAX_COMPILATION_CACHE_DIR=str(env_dir))
  assert r["dir"] == str(env_dir) and len(_entries(env_dir)) == r["misses"] >= 1
  assert not (tmp_path / "xdg").exists()


def test_unwritable_dir_warns_once_and_runs(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  bad = str(blocker / "xla")  # cannot be created, even by root
  r, err = _run(tmp_path, f"--compilation_cache_dir={bad}")
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "compilation cache off" in lines[0] and bad in lines[0], err
  assert not r["enabled"] and r["hits"] == 0 and r["misses"] == 0
  ok, _ = _run(tmp_path, "--nocompilation_cache")
  assert r["y"] == ok["y"]


def test_enable_returns_none_for_an_unwritable_dir(tmp_path, monkeypatch):
  from jaxscape.core import compilation_cache
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  disabled = []
  monkeypatch.setattr(compilation_cache, "disable", lambda: disabled.append(True))  # this process's JAX stays as is
  assert compilation_cache.enable(str(blocker / "xla")) is None and disabled


def test_default_dir_follows_xdg(monkeypatch, tmp_path):
  from jaxscape.core import compilation_cache
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compilation_cache.default_dir() == str(tmp_path / "jaxscape" / "xla")
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert compilation_cache.default_dir() == os.path.join(os.path.expanduser("~"), ".cache", "jaxscape", "xla")


def test_a_size_limit_makes_jax_lock_the_dir(tmp_path):
  # JAX's own cache locks reads, writes and evictions (DIR/.lockfile) only when its size is limited.
  r, err = _run(tmp_path, f"--compilation_cache_dir={tmp_path / 'c'}")
  assert err == "" and r["misses"] >= 1
  assert (tmp_path / "c" / ".lockfile").exists()
  assert len(glob.glob(str(tmp_path / "c" / "*-atime"))) == len(_entries(tmp_path / "c"))
  code = ("from jaxscape.core import compilation_cache as c; import jax; c.enable(%r); "
          "print(jax.config.jax_compilation_cache_max_size)")
  out = lambda env: subprocess.run([sys.executable, "-c", code % str(tmp_path / "c")], cwd=REPO,  # noqa: E731
                                   env=_env(tmp_path, **env), capture_output=True, text=True, check=True).stdout
  from jaxscape.core import compilation_cache
  assert int(out({})) == compilation_cache.MAX_SIZE_BYTES
  assert int(out({"JAX_COMPILATION_CACHE_MAX_SIZE": "12345"})) == 12345  # the user's limit stays


def test_entries_without_an_access_time_get_one(tmp_path):
  # Written without a size limit (JAX's default): JAX's eviction would fail on them.
  d = tmp_path / "old"
  first, _ = _run(tmp_path, f"--compilation_cache_dir={d}")
  for atime in glob.glob(str(d / "*-atime")):
    os.unlink(atime)
  again, err = _run(tmp_path, f"--compilation_cache_dir={d}")
  assert err == "" and again["hits"] == first["misses"] and again["misses"] == 0
  assert len(glob.glob(str(d / "*-atime"))) == len(_entries(d)) >= 1


@pytest.mark.parametrize("user_flags, expected", [
    ("", "--xla_cpu_use_fusion_emitters=false"),
    ("--xla_cpu_use_fusion_emitters=true", "--xla_cpu_use_fusion_emitters=true"),  # the user's choice stays
])
def test_fast_cpu_compiler_flags_before_the_backend_only(user_flags, expected):
  code = ("import os; from jaxscape import compilation_cache as c; a = c.use_fast_cpu_compiler(); "
          "import jax; jax.numpy.zeros(1); b = c.use_fast_cpu_compiler(); "
          "print(os.environ['XLA_FLAGS'], len(a), len(b), sep='|')")
  env = {**os.environ, "XLA_FLAGS": user_flags}
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
  flags, added, added_late = out.stdout.strip().split("|")
  assert flags == expected
  assert int(added) == (0 if user_flags else 1) and int(added_late) == 0  # too late once a backend is up
