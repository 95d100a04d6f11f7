"""The pieces of a side-by-side benchmark, shared by ``experiments.bench`` and ``experiments.gpu_check``.

No absl flags here (both entry points define their own ``--anchor``, ``--prompts`` and ``--out``
with different meanings), and no JAX at import: the device ceilings are measured by whoever calls
:func:`matmul_rate` / :func:`copy_bandwidth`, which on a GPU should be a child process, since a
JAX process keeps most of the GPU's memory for itself until it exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

RANDOM_MODELS = {  # random-init Llamas built offline with jaxscape.testing (make_tiny_checkpoint's keywords)
    "llama100m": dict(num_layers=12, hidden_size=768, intermediate_size=2048, num_heads=12, num_kv_heads=12,
                      head_dim=64, vocab_size=8000),
    "llama1b": dict(num_layers=16, hidden_size=2048, intermediate_size=5632, num_heads=32, num_kv_heads=8,
                    head_dim=64, vocab_size=32000),
    # Llama-2-7B's widths with 8 of its 32 layers, stored in bfloat16 (experiments.gpu_check)
    "llama7b_w8": dict(num_layers=8, hidden_size=4096, intermediate_size=11008, num_heads=32, num_kv_heads=32,
                       head_dim=128, vocab_size=32000, dtype="bfloat16"),
    # the same shape of model in seconds on a CPU (experiments.gpu_check --smoke)
    "smoke_bf16": dict(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=4,
                       head_dim=16, vocab_size=512, dtype="bfloat16"),
}


class ChildFailed(RuntimeError):
  """A benchmark child exited non-zero; the message ends with its output's tail."""


class ChildTimeout(RuntimeError):
  """A benchmark child ran past its time limit and was killed."""


def best_time(fn, arg, repeats: int = 10) -> float:
  """The fastest of ``repeats`` timed calls of ``fn(arg)`` after one untimed (compiling) call."""
  fn(arg).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn(arg).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return best


def matmul_rate(n: int, bf16: bool) -> float:
  """FLOP/s of a jitted n x n x n matmul: float32, or bfloat16 operands with float32 accumulation
  (as jaxscape's bfloat16 compute runs them)."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  if bf16:
    t = best_time(jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32)), a.astype(jnp.bfloat16))
  else:
    t = best_time(jax.jit(lambda x: x @ x), a)
  return 2 * n ** 3 / t


def reduction_bandwidth(nbytes: int) -> float:
  """Bytes/s read by a jitted sum over ``nbytes`` of float32."""
  import jax
  import jax.numpy as jnp
  big = jnp.ones((nbytes // 4,), jnp.float32)
  return big.nbytes / best_time(jax.jit(jnp.sum), big)


def copy_bandwidth(nbytes: int) -> float:
  """Bytes/s moved (read plus written) by a jitted elementwise pass over ``nbytes`` of float32.

  ``x + 1`` rather than a plain copy: XLA may alias or elide an identity, never an add.
  """
  import jax
  import jax.numpy as jnp
  big = jnp.ones((nbytes // 4,), jnp.float32)
  return 2 * big.nbytes / best_time(jax.jit(lambda x: x + 1), big, repeats=5)


def run_child_rc(cmd: list[str], *, timeout: float | None = None, cwd: str | None = None,
                 env: dict | None = None) -> tuple[float, int, int, str]:
  """Run ``cmd``; returns (wall seconds, peak RSS bytes of that child alone, exit code, output tail).

  ``timeout``: the child is killed after that many seconds (:class:`ChildTimeout`).
  """
  with tempfile.TemporaryFile("w+") as log:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env)
    killed = threading.Event()

    def kill():
      killed.set()
      proc.kill()

    timer = threading.Timer(timeout, kill) if timeout is not None else None
    if timer:
      timer.start()
    try:
      _, status, usage = os.wait4(proc.pid, 0)  # wait4: the RSS of this child, not of all children so far
    finally:
      if timer:
        timer.cancel()
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.seek(0)
    tail = log.read()[-3000:]
  if killed.is_set():
    raise ChildTimeout(f"{' '.join(cmd[:4])} ... killed after {timeout:.0f} s: {tail}")
  return wall, usage.ru_maxrss * 1024, proc.returncode, tail


def run_child(cmd: list[str], **kwargs) -> tuple[float, int, str]:
  """:func:`run_child_rc` that raises :class:`ChildFailed` on a non-zero exit; returns (wall s, peak RSS
  bytes, output tail)."""
  wall, rss, rc, tail = run_child_rc(cmd, **kwargs)
  if rc:
    raise ChildFailed(f"{' '.join(cmd[:4])} ... failed ({rc}): {tail}")
  return wall, rss, tail


def read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def fresh_cache_dir(workdir: str, tag: str) -> str:
  """A new, empty directory for one jaxscape run's persistent compilation cache."""
  return tempfile.mkdtemp(prefix=f"{tag}_cache_", dir=workdir)


def build_random_model(name: str, workdir: str) -> str:
  """``workdir/name``: the random-init checkpoint :data:`RANDOM_MODELS` [name], built unless already there.

  Built beside it and renamed into place, so a build that is killed (a deadline) leaves no
  half-written checkpoint for the next run to take as finished.
  """
  path = os.path.join(workdir, name)
  if not os.path.isdir(path):
    from jaxscape import testing
    tmp = tempfile.mkdtemp(prefix=f".{name}_", dir=workdir)
    testing.make_tiny_checkpoint(tmp, "llama", seed=0, std=0.02, **RANDOM_MODELS[name])
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 is for the build only
    os.rename(tmp, path)
  return path


def describe_model(path: str) -> dict:
  """A checkpoint's shape: its config, parameter counts and the parameters one forward pass reads in
  full (every layer and the output projection; of the input embedding only the looked-up rows)."""
  from jaxscape.core.config import ModelConfig
  cfg = ModelConfig.from_hf_dict(read_json(os.path.join(path, "config.json")))
  keys = ("model_type", "num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim",
          "vocab_size", "param_dtype")
  return {"path": path, **{k: getattr(cfg, k) for k in keys}, "params": cfg.num_params(),
          "params_per_pass": cfg.num_params(embeddings=False) + cfg.vocab_size * cfg.hidden_size,
          "file_bytes": sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))}


def library_versions() -> dict:
  """Versions of the libraries both sides run on, read from their metadata (nothing is imported)."""
  import platform
  from importlib import metadata
  out = {"python": platform.python_version()}
  for lib in ("jax", "jaxlib", "transformers", "torch"):
    try:
      out[lib] = metadata.version(lib)
    except metadata.PackageNotFoundError:
      out[lib] = None
  return out


def device_report(matmul_n: int, copy_bytes: int) -> dict:
  """The first JAX device and its own ceilings: an n^3 bfloat16 matmul with float32 accumulation
  (FLOP/s) and a pass over ``copy_bytes`` (bytes moved per second), with the library versions."""
  import jax
  devices = jax.devices()
  try:
    stats = devices[0].memory_stats() or {}
  except Exception:  # noqa: BLE001 - backends without memory stats (some CPU builds) raise instead of None
    stats = {}
  return {"versions": library_versions(), "backend": jax.default_backend(), "devices": [str(d) for d in devices],
          "device_kind": devices[0].device_kind, "device_memory_bytes": stats.get("bytes_limit"),
          "cpus": os.cpu_count(), "matmul_n": matmul_n, "matmul_flops_bf16": matmul_rate(matmul_n, bf16=True),
          "copy_bytes": copy_bytes, "copy_bytes_s": copy_bandwidth(copy_bytes)}


def run_grid_cmd(model_dir: str, prompts: str, *, steps: int, samples: int, max_new_tokens: int, multiplier: float,
                 out_dir: str, cache_dir: str, flags=(), prompt_format: str | None = "chat") -> list[str]:
  """A fresh (``--noresume``) 1-D random jaxscape scan with its own compilation cache dir."""
  return [sys.executable, "-m", "experiments.run_grid", f"--model={model_dir}", f"--prompts={prompts}",
          "--kind=1d_random", f"--steps={steps}", f"--samples={samples}", f"--max_new_tokens={max_new_tokens}",
          f"--multiplier={multiplier}", *([f"--prompt_format={prompt_format}"] if prompt_format else []),
          f"--out={out_dir}", "--noresume", f"--compilation_cache_dir={cache_dir}", *flags]


def reference_cmd(anchor: str, model_dir: str, prompts: str, *, steps: int, samples: int, max_new_tokens: int,
                  multiplier: float, batch_size: int, device: str, out: str, extra=()) -> list[str]:
  """The reference loop on the same grid: chat template, no system prompt (jaxscape's --prompt_format=chat)."""
  return [sys.executable, anchor, "--model_dir", model_dir, "--prompts", prompts, "--ndim", "1",
          "--steps", str(steps), "--samples", str(samples), "--max_new_tokens", str(max_new_tokens),
          "--multiplier", str(multiplier), "--use_chat_template", "--batch_size", str(batch_size),
          "--device", device, "--out", out, *extra]


def slot_utilisation(tokens: int, rows: int, row_steps: int | None) -> float | None:
  """Decode tokens per decode row-step, prefill excluded: ``(tokens - rows) / row_steps``.

  ``tokens`` counts every generated token, the first of each of the ``rows`` (point x prompt)
  generations included, which prefill produces; ``row_steps`` counts the rows of each decode
  step, empty, finished and padded ones too. None when ``row_steps`` is unknown or zero (no
  decode step ran).
  """
  if row_steps is None or row_steps <= 0:
    return None
  return (tokens - rows) / row_steps


def reference_row_steps(token_slots: int, rows: int) -> int:
  """Decode row-steps of the reference: each generate call's output [b, L] is L - 1 decode steps over
  b rows (the first token comes from prefill), so the sum over calls is token_slots - rows."""
  return token_slots - rows


def roofline(flops: float, nbytes: float, peak_flops: float, bandwidth: float) -> dict:
  """The least time a workload can take on a machine: its FLOPs at the matmul peak or its bytes at the
  bandwidth, whichever is longer (if the two overlapped perfectly); ``binds`` names that one."""
  flop_s, bytes_s = flops / peak_flops, nbytes / bandwidth
  return {"flop_bound_s": flop_s, "bytes_bound_s": bytes_s, "bound_s": max(flop_s, bytes_s),
          "binds": "FLOPs" if flop_s >= bytes_s else "bytes"}
