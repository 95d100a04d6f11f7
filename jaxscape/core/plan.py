"""Scan planning: the perturbation strategy and points per slice that fit a device's memory budget.

Shape-only: nothing is allocated. The estimate is a model; ``jaxscape.core.scan.compile_scan`` checks it
against the bytes XLA assigns the compiled programs and shrinks the slice when they do not fit.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from jaxscape.core.decode import phase_ends
from jaxscape.errors import InputError
from jaxscape.core.config import ModelConfig
from jaxscape.core.model import kv_dtype

STRATEGIES = ("materialize", "factored", "hybrid")


def phase_strategies(strategy: str) -> tuple[str, str]:
  """(prefill, decoding) strategy of ``strategy``: "hybrid" is materialize's prefill and factored's decoding.

  Prefill multiplies many rows per point, where materialized weights cost 1x the FLOPs against
  factored's (1 + n)x; a decoding step multiplies few rows per point, where reading one weight
  copy per point costs more than factored's 1 + n shared copies (measured in BENCHMARKS.md).
  Tokens equal either strategy's up to float summation order.
  """
  if strategy == "hybrid":
    return "materialize", "factored"
  if strategy not in STRATEGIES:
    raise InputError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
  return strategy, strategy


@dataclasses.dataclass(frozen=True)
class Plan:
  """How a scan runs: strategy, points per slice and the estimated peak bytes per device."""
  strategy: str
  slice_size: int
  bytes_per_device: int
  budget: int
  reason: str

  def describe(self) -> str:
    gib = 1 << 30
    return (f"plan: strategy={self.strategy} slice_size={self.slice_size} "
            f"est_peak={self.bytes_per_device / gib:.2f} GiB of budget {self.budget / gib:.2f} GiB "
            f"({self.reason})")


def detect_memory_budget() -> int:
  """Bytes usable on one device: the accelerator's limit, or half the host's available RAM on CPU."""
  dev = jax.local_devices()[0]
  try:
    stats = dev.memory_stats() or {}
  except Exception:  # CPU backends may not implement memory_stats
    stats = {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"] * 0.9)
  try:
    import psutil
    avail = psutil.virtual_memory().available
  except ImportError:
    avail = 8 << 30
  return int(avail * 0.5 / max(1, jax.local_device_count()))


def estimate_bytes(cfg: ModelConfig, *, strategy: str, points: int, n_dirs: int, batch: int,
                   seq_len: int, model_shards: int = 1, target: str | None = None,
                   max_new_tokens: int | None = None) -> int:
  """Rough peak bytes per device for a slice of ``points`` points (weights + KV cache + activations).

  Given ``max_new_tokens``, half the previous decoding phase's cache counts too
  (``decode.phase_ends``): keys and values grow into the last phase's cache one after the other
  (``Decoder.run_phases``), so the old values are live beside the whole new cache (as XLA's memory
  analysis of compiled scans shows).
  """
  f32 = 4
  weights = cfg.num_params() * np.dtype(cfg.resident_dtype(2)).itemsize // model_shards
  pre, dec = phase_strategies(strategy)
  resident = weights * (1 + n_dirs)  # θ and the directions (resident dtype)
  kv = _kv_cache_bytes(cfg, batch=batch, seq_len=seq_len, target=target) // model_shards
  ends = phase_ends(max_new_tokens) if max_new_tokens else ()
  if len(ends) > 1:  # half the previous phase's cache, live while it is copied into the last one (see above)
    kv += _kv_cache_bytes(cfg, batch=batch, seq_len=seq_len - max_new_tokens + ends[-2],
                          target=target) // 2 // model_shards
  # Activations are split over the model axis like the weights that make them (heads, MLP units, vocab).
  logits = batch * cfg.vocab_size * f32 * 2 // model_shards
  acts = batch * max(cfg.intermediate_size, cfg.hidden_size) * f32 * 8 // model_shards
  per_point = kv + logits + acts
  if pre == "materialize":
    per_point += _point_weight_bytes(cfg) // model_shards
  if dec == "factored":
    per_point += n_dirs * (logits + acts)  # one extra activation set per direction
  # Prefill holds [B, T, ...] activations and [B, H, T, T] scores once.
  prefill = batch * seq_len * (cfg.intermediate_size * 3 + cfg.num_heads * seq_len) * f32 // model_shards
  return int(resident + points * (per_point + prefill // 4))


TARGETS = ("cpu", "gpu")


def kv_itemsize(cfg: ModelConfig, target: str | None = None) -> int:
  """Bytes per cached key/value on ``target`` (None: this process's backend, ``model.kv_dtype``):
  the compute dtype's on an accelerator, float32 on CPU."""
  if target is None:
    return np.dtype(kv_dtype(cfg)).itemsize
  if target not in TARGETS:
    raise InputError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
  return np.dtype(cfg.dtype).itemsize if target == "gpu" else 4


def _kv_cache_bytes(cfg: ModelConfig, *, batch: int, seq_len: int, target: str | None = None) -> int:
  """Bytes of one point's KV cache: ``batch`` rows of ``seq_len`` slots."""
  return 2 * cfg.num_layers * batch * seq_len * cfg.num_kv_heads * cfg.head_dim * kv_itemsize(cfg, target)


def _point_weight_bytes(cfg: ModelConfig) -> int:
  """Bytes of one materialized point θ(c), stored in the compute dtype."""
  return cfg.num_params() * min(4, np.dtype(cfg.dtype).itemsize)


def decoding_reads_weights_most(cfg: ModelConfig, *, points_per_device: int, n_dirs: int, batch: int,
                                seq_len: int, target: str | None = None) -> bool:
  """Whether factored decoding beats materialized decoding: the weights a materialized point reads
  each step outweigh its KV cache, and a device holds more than ``1 + n_dirs`` points (factored
  reads 1 + n shared copies a step, materialize one per point, at (1 + n)x fewer FLOPs).

  On CPU the crossover sits where the KV cache a step reads reaches the weights a point reads
  (the measurements are in BENCHMARKS.md).
  """
  return (points_per_device > 1 + n_dirs
          and _point_weight_bytes(cfg) > _kv_cache_bytes(cfg, batch=batch, seq_len=seq_len, target=target))


def plan_scan(cfg: ModelConfig, *, n_points: int, n_dirs: int, batch: int, seq_len: int,
              budget: int | None = None, strategy: str = "auto", slice_size: int = 0,
              point_shards: int = 1, model_shards: int = 1, target: str | None = None,
              max_new_tokens: int | None = None) -> Plan:
  """Choose strategy and slice size that fit ``budget`` bytes per device.

  Slices are multiples of ``point_shards`` (devices along the points axis). ``auto`` takes the
  strategy whose slice covers the most points, materialize (fewer FLOPs) before factored on a tie;
  then, when hybrid's slice is as large as materialize's and decoding is bound by reading each
  point's weights (:func:`decoding_reads_weights_most`), materialize becomes hybrid (see
  :func:`phase_strategies`). Raises InputError when no plan fits.
  """
  budget = budget or detect_memory_budget()
  extra = dict(target=target, max_new_tokens=max_new_tokens)
  candidates = STRATEGIES if strategy == "auto" else (strategy,)
  if strategy not in STRATEGIES + ("auto",):
    raise InputError(f"unknown strategy {strategy!r}; expected auto or one of {', '.join(STRATEGIES)}")
  fits = {}
  per_shard_points = -(-n_points // point_shards)
  for s in candidates:
    est = functools.partial(estimate_bytes, cfg, strategy=s, n_dirs=n_dirs, batch=batch, seq_len=seq_len, **extra,
                            model_shards=model_shards)
    if slice_size:
      want = -(-slice_size // point_shards)
      if est(points=want) <= budget:
        cand = (want, s)
      else:
        continue
    else:
      fit = 0
      lo, hi = 1, per_shard_points
      while lo <= hi:  # largest per-device slice that fits
        mid = (lo + hi) // 2
        if est(points=mid) <= budget:
          fit, lo = mid, mid + 1
        else:
          hi = mid - 1
      if not fit:
        continue
      # Even slices: as few as possible, equally sized, so the last one is not mostly padding.
      n_slices = -(-per_shard_points // fit)
      cand = (-(-per_shard_points // n_slices), s)
    fits[s] = cand[0]
  best = None
  for s in ("materialize", "factored") if strategy == "auto" else (strategy,):
    if s in fits and (best is None or fits[s] > best[0]):
      best = (fits[s], s)
  if (strategy == "auto" and best is not None and best[1] == "materialize" and fits.get("hybrid") == best[0]
      and decoding_reads_weights_most(cfg, points_per_device=best[0], n_dirs=n_dirs, batch=batch, seq_len=seq_len,
                                      target=target)):
    best = (best[0], "hybrid")
    reason = f"auto; decoding reads weights more than KV cache: {1 + n_dirs} shared copies, not {best[0]}"
  else:
    reason = "forced" if strategy != "auto" else "auto"
  if best is None:
    need = min(estimate_bytes(cfg, strategy=s, points=1, n_dirs=n_dirs, batch=batch, seq_len=seq_len, **extra,
                              model_shards=model_shards) for s in candidates)
    raise InputError(f"no scan plan fits the memory budget: one point needs ~{need / (1 << 30):.2f} GiB "
                     f"per device, budget is {budget / (1 << 30):.2f} GiB (raise --memory_budget, use fewer "
                     f"prompts or --mesh with a model axis)")
  per_dev, s = best
  size = per_dev * point_shards
  return Plan(strategy=s, slice_size=size, budget=budget, reason=reason,
              bytes_per_device=estimate_bytes(cfg, strategy=s, points=per_dev, n_dirs=n_dirs, batch=batch, **extra,
                                              seq_len=seq_len, model_shards=model_shards))


def replan_slice(plan: Plan, cfg: ModelConfig, *, slice_size: int, point_shards: int, n_dirs: int, batch: int,
                 seq_len: int, model_shards: int = 1, target: str | None = None,
                 max_new_tokens: int | None = None) -> Plan:
  """``plan`` with a smaller slice (a multiple of ``point_shards``) and its estimate, same strategy."""
  per_dev = max(1, slice_size // point_shards)
  return dataclasses.replace(
      plan, slice_size=per_dev * point_shards, reason=f"{plan.reason}, slice shrunk to fit after compiling",
      bytes_per_device=estimate_bytes(cfg, strategy=plan.strategy, points=per_dev, n_dirs=n_dirs, batch=batch,
                                      seq_len=seq_len, model_shards=model_shards, target=target,
                                      max_new_tokens=max_new_tokens))


def memory_breakdown(compiled) -> dict | None:
  """Device bytes XLA assigned a compiled call, per device, by kind: ``arguments``, ``outputs``,
  ``temporaries`` and ``aliased`` (outputs that reuse donated arguments). None when not reported."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # not every backend implements it
    return None
  if m is None:
    return None
  return {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
          "temporaries": int(m.temp_size_in_bytes), "aliased": int(m.alias_size_in_bytes)}


def compiled_bytes(compiled) -> int | None:
  """Device bytes XLA assigned a compiled call, per device: arguments + outputs + temporaries,
  less what donation aliases (:func:`memory_breakdown`). None when the backend does not report it."""
  m = memory_breakdown(compiled)
  return None if m is None else m["arguments"] + m["outputs"] + m["temporaries"] - m["aliased"]


