"""A whole landscape job: directions -> grid -> sliced scan -> metrics, VISAGE, results dir, plots.

``run_landscape`` is what ``python -m experiments.run_grid`` calls; everything it does is
callable from Python::

    import jaxscape
    model = jaxscape.load_model("checkpoints/toy-chat")
    summary = jaxscape.run_landscape(model, prompts, jaxscape.LandscapeSpec(kind="1d_random"),
                                     out_dir="results/toy_1d")
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import platform
import socket
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxscape.datasets import capability as capability_lib
from jaxscape.core import convert
from jaxscape.core import decode as decode_lib
from jaxscape.core import direction_store
from jaxscape.core import directions as directions_lib
from jaxscape.core import grid as grid_lib
from jaxscape.core import metrics
from jaxscape.core import prompts as prompts_lib
from jaxscape.core import results
from jaxscape.core import scan
from jaxscape.core import score
from jaxscape.core import sharding as sharding_lib
from jaxscape.studies import views
from jaxscape.errors import InputError


@dataclasses.dataclass(frozen=True)
class LandscapeSpec:
  """What grid to scan (see DESIGN.md for the coordinate layout)."""
  kind: str = "1d_random"
  steps: int = 20
  multiplier: float = 1.0
  extra_steps: int = 0
  seed: int = 123
  num_directions: int = 1
  norm: str = "layer"
  exclude: tuple[str, ...] = ("norm",)
  orthogonal: bool = False


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
  """How prompts are formatted and decoded at every point."""
  max_new_tokens: int = 64
  prompt_format: str = "chat"
  system_prompt: str | None = None
  truncate_prompts: bool = False
  share_prefix: bool = True
  stop_when_decided: bool = False  # stop a row once its text holds a refusal keyword (exact for ASR)
  chunk_tokens: int = 32  # with stop_when_decided: tokens decoded between checks


@dataclasses.dataclass
class Grid:
  """Points of a landscape: ``coeffs[K, n]`` over the ``n`` stacked directions.

  ``coords[K]`` are the reported coordinates (1 or 2 floats per point), ``direction[K]`` the
  direction index of each point for multi-direction 1-D scans, ``axes`` the per-axis values.
  """
  coeffs: np.ndarray
  coords: list[list[float]]
  direction: list[int]
  axes: list[np.ndarray]


def make_grid(spec: LandscapeSpec) -> Grid:
  """Coordinates of every point in step order (2-D row-major, first direction as rows)."""
  axes = grid_lib.grid_axes(spec.kind, steps=spec.steps, multiplier=spec.multiplier,
                                  extra_steps=spec.extra_steps)
  pts = np.asarray(grid_lib.grid_coords(axes), np.float64)  # [K, ndim]
  if spec.num_directions > 1:
    if spec.kind != "1d_random":
      raise InputError(f"--num_directions > 1 needs kind 1d_random, got {spec.kind}")
    n, K = spec.num_directions, len(pts)
    coeffs = np.zeros((n * K, n))
    for k in range(n):
      coeffs[k * K:(k + 1) * K, k] = pts[:, 0]
    return Grid(coeffs=coeffs.astype(np.float32), coords=[[float(c)] for c in pts[:, 0]] * n,
                direction=[k for k in range(n) for _ in range(K)], axes=axes)
  if spec.num_directions < 1:
    raise InputError(f"num_directions must be >= 1, got {spec.num_directions}")
  return Grid(coeffs=pts.astype(np.float32), coords=[[float(c) for c in p] for p in pts],
              direction=[0] * len(pts), axes=axes)


def _versions() -> dict:
  import flax
  import transformers
  return {"jaxscape": "0.1.0", "jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax, "lib") else "",
          "flax": flax.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
          "python": platform.python_version()}


def _return_freed_memory() -> None:
  """Hand the heap memory freed so far back to the OS (glibc's ``malloc_trim``; elsewhere a no-op).

  glibc keeps freed heap memory for reuse, so without this the transients of loading, drawing
  directions and compiling would stay in the process's RSS for the whole scan (measured in
  BENCHMARKS.md).
  """
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # not glibc
    pass


@dataclasses.dataclass(frozen=True)
class ScanOptions:
  """How a landscape job runs, as opposed to what it scans (:class:`LandscapeSpec`) or decodes (:class:`DecodeSpec`).

  Attributes:
    metric: "safety" (decode and score refusals), "capability" (multiple-choice accuracy) or "both".
    strategy: "auto" (from the memory plan), "materialize", "factored" or "hybrid" (materialized
      prefill, factored decoding; ``plan.phase_strategies``).
    slice_size: points per jitted call (0: from the memory plan).
    memory_budget: bytes per device (None: detected).
    resume: reuse the finished points of a compatible run already in ``out_dir``.
    progress: a progress bar over grid points.
    mesh: ('points', 'model') mesh (default: every device on 'points'). Points are split over
      'points', params and directions over 'model'. Every process runs the job; only process 0
      writes files (the results dir must be on a shared file system to resume).
    save_directions: write the directions to ``out_dir/directions`` (default: random ones only,
      as their recipes; interpolation ones are model-sized, so only when True).
    flags: the entry point's flags, recorded in summary.json.
    t_start, load_s: process start (``time.perf_counter``) and model load time, for timings.
    write_views: write the results dir's views (``views.write_views``) at the end; False leaves them
      to the caller, who writes them once after adding stores of its own (e.g. a judge's scores).
  """
  metric: str = "safety"
  strategy: str = "auto"
  slice_size: int = 0
  memory_budget: int | None = None
  resume: bool = True
  progress: bool = True
  mesh: jax.sharding.Mesh | None = None
  save_directions: bool | None = None
  flags: dict | None = None
  t_start: float | None = None
  load_s: float | None = None
  write_views: bool = True


def run_landscape(model, prompts: list[str], spec: LandscapeSpec, *, out_dir: str, decode: DecodeSpec = DecodeSpec(),
                  options: ScanOptions = ScanOptions(), model_b=None, model_c=None,
                  capability_set: capability_lib.CapabilitySet | str | list[dict] | None = None,
                  capability_shots: int = 0, directions: tuple[list, list] | None = None) -> dict:
  """Scan a landscape and write its results dir; returns the summary dict.

  Args:
    model: a loaded ``jaxscape.core.convert.Model`` (θ_a); ``model_b``/``model_c`` for interpolation kinds.
    prompts: harmful prompts (safety metric).
    spec: grid and directions; decode: prompt format and decoding; options: :class:`ScanOptions`.
    capability_set: for metric "capability" or "both": a set's name (``capability.load``, e.g.
      ``"mmlu:us_foreign_policy"`` or ``"builtin:align/heldout_benign"``), a loaded
      ``capability.CapabilitySet``, or toy-layout items ``{"question", "options": [4], "answer": "A".."D"}``.
      A generative set's prompts are decoded beside the harmful ones (with metric "capability", alone).
    capability_shots: shots per subject when ``capability_set`` is an ``mmlu:`` name.
    directions: ``(direction trees, recipes)`` to scan along instead of generating them from
      ``spec`` (e.g. from ``direction_store.load_directions``); validated against the model.
  """
  t_start = options.t_start or time.perf_counter()
  cset = capability_lib.as_set(capability_set, capability_shots) if options.metric != "safety" else None
  _check_request(spec, decode, options, cset)
  grid = make_grid(spec)
  t0 = time.perf_counter()
  dirs, recipes = _directions(model, spec, grid, model_b, model_c, directions)
  directions_s = time.perf_counter() - t0
  # A generative set's prompts are decoded as rows after the harmful ones (alone for metric capability).
  benign = list(cset.prompts) if cset is not None and cset.generative else []
  harmful = list(prompts) if not (benign and options.metric == "capability") else []
  rows, texts = _prompt_rows(model, harmful + benign, decode)
  choices = _choice_rows(model, cset, decode) if cset is not None and not cset.generative else None
  identity = _identity(model, model_b, model_c, dirs, recipes, grid, spec, texts, cset, decode, options.metric)
  texts = texts[:len(harmful)]
  mesh = options.mesh or sharding_lib.make_mesh()
  writer = jax.process_index() == 0
  reuse = results.prepare_run(out_dir, identity, resume=options.resume, write=writer)
  if (options.save_directions if options.save_directions is not None else all(recipes)) and not reuse:
    direction_store.save_directions(os.path.join(out_dir, "directions"), dirs, recipes, overwrite=True)
  t0 = time.perf_counter()
  stacked = _stack_owned(dirs)
  _return_freed_memory()  # loading's and the directions' transients
  directions_s += time.perf_counter() - t0
  done = results.load_points(out_dir, clean=writer) if reuse else {}
  todo = [i for i in range(len(grid.coeffs)) if i not in done]
  log = (lambda line: print(line, file=sys.stderr)) if writer else (lambda line: None)
  log(f"mesh: {dict(mesh.shape)} over {mesh.devices.size} device(s), {jax.process_count()} process(es)")
  if done:
    log(f"resuming: {len(done)} of {len(grid.coeffs)} points already in {out_dir}")
  setup = scan.ScanSetup(
      decoder=decode_lib.Decoder(cfg=sharding_lib.config_for_mesh(model.cfg, mesh), max_new_tokens=decode.max_new_tokens,
                                 eos_ids=tuple(model.eos_ids), groups=rows.groups),
      rows=rows if options.metric != "capability" or benign else None, choices=choices, pad_id=model.pad_id,
      is_decided=_refusal_is_decided(model) if decode.stop_when_decided else None, chunk_tokens=decode.chunk_tokens)
  compiled = scan.compile_scan(model.params, stacked, setup, mesh=mesh, n_points=len(todo), strategy=options.strategy,
                               slice_size=options.slice_size, memory_budget=options.memory_budget, log=log)
  _return_freed_memory()  # the compiler's
  row_steps = [0]

  def on_result(ids, out):
    records, steps = _slice_records(ids, out, model, rows, choices, cset if benign else None)
    row_steps[0] += steps
    if writer:
      results.save_slice(out_dir, records)
    done.update(records)

  t0 = time.perf_counter()
  P = compiled.plan.slice_size
  scan.run_slices(compiled, [todo[i:i + P] for i in range(0, len(todo), P)], grid.coeffs, slice_size=P,
                  on_result=on_result, progress=options.progress and writer)
  timings = dict(load_s=options.load_s, directions_s=directions_s, compile_s=compiled.compile_s,
                 scan_s=time.perf_counter() - t0, decode_row_steps=row_steps[0])
  meta = _scan_meta(model, spec, decode, options, grid, harmful, texts, recipes, identity, compiled, mesh, out_dir,
                    _work_timings(model.cfg, rows, done, todo, len(grid.coeffs), timings))
  if cset is not None:
    meta["capability_set"] = cset.meta
  return _finish(out_dir, meta, done, t_start, write=writer, write_views=options.write_views)


def _check_request(spec: LandscapeSpec, decode: DecodeSpec, options: ScanOptions, capability_set) -> None:
  """Raise InputError for a request that cannot run."""
  if spec.kind not in grid_lib.KINDS:
    raise InputError(f"unknown kind {spec.kind!r}; expected one of {', '.join(grid_lib.KINDS)}")
  if options.metric not in ("safety", "capability", "both"):
    raise InputError(f"unknown metric {options.metric!r}; expected safety, capability or both")
  if decode.max_new_tokens <= 0:
    raise InputError(f"max_new_tokens must be > 0, got {decode.max_new_tokens}")
  if options.metric != "safety" and (capability_set is None or not capability_set.prompts):
    raise InputError("metric capability needs a capability set (--capability_set)")


def _directions(model, spec: LandscapeSpec, grid: Grid, model_b, model_c, directions) -> tuple[list, list]:
  """The scan's directions (a list the scan may empty) and their recipes (None for interpolation ones):
  the given ones, checked against the model, or drawn from ``spec``."""
  if directions is not None:
    dirs, recipes = directions
    for d in dirs:
      directions_lib.check_matches(model.params, d)
    if len(dirs) != grid.coeffs.shape[1]:
      raise InputError(f"kind {spec.kind} with {spec.num_directions} direction(s) needs {grid.coeffs.shape[1]} "
                       f"direction(s), {len(dirs)} were given")
    # Held like the model's leaves (bfloat16 residency), one leaf at a time.
    dirs = [jax.tree.map(lambda d, w: d.astype(directions_lib.direction_dtype(w)), d, model.params) for d in dirs]
  else:
    dirs, recipes = directions_lib.directions_for(
        spec.kind, model.params, params_b=model_b.params if model_b else None,
        params_c=model_c.params if model_c else None, seed=spec.seed, norm=spec.norm,
        exclude=tuple(spec.exclude), orthogonal=spec.orthogonal, num_directions=spec.num_directions)
  return list(dirs), list(recipes)  # ours to empty once stacked (a caller's list stays as it was)


def _prompt_rows(model, prompts: list[str], decode: DecodeSpec) -> tuple[scan.ScanRows, list[str]]:
  """The prompts rendered (as the model sees them) and laid out for decoding."""
  texts, add_special = prompts_lib.render(prompts, model.tokenizer, prompt_format=decode.prompt_format,
                                          system_prompt=decode.system_prompt)
  tokens, mask = prompts_lib.tokenize(texts, model.tokenizer, add_special_tokens=add_special, pad_id=model.pad_id,
                                      max_length=model.cfg.max_position_embeddings - decode.max_new_tokens,
                                      truncate=decode.truncate_prompts)
  return scan.layout_rows(tokens, mask, pad_id=model.pad_id, share_prefix=decode.share_prefix), texts


def _choice_rows(model, cset: capability_lib.CapabilitySet, decode: DecodeSpec) -> scan.ChoiceRows:
  """Multiple-choice questions rendered and tokenized, with the answer letters' token ids."""
  tokens, mask, letters = capability_lib.choice_inputs(model, cset, prompt_format=decode.prompt_format,
                                                       system_prompt=decode.system_prompt,
                                                       truncate=decode.truncate_prompts)
  return scan.ChoiceRows(tokens=tokens, mask=mask, targets=score.choice_targets(len(tokens), letters),
                         answers=np.asarray(cset.answers))


def _identity(model, model_b, model_c, dirs, recipes, grid: Grid, spec: LandscapeSpec, texts: list[str],
              cset, decode: DecodeSpec, metric: str) -> dict:
  """Fingerprints of everything that makes two runs' points comparable (``results.prepare_run``)."""
  return {
      "model": convert.fingerprint(model.params),
      "model_b": convert.fingerprint(model_b.params) if model_b else None,
      "model_c": convert.fingerprint(model_c.params) if model_c else None,
      "directions": results.fingerprint_json([r.to_json() for r in recipes])
      if recipes and all(recipes) else convert.fingerprint(dirs),
      "grid": results.fingerprint_json({"coeffs": grid.coeffs.tolist(), "kind": spec.kind}),
      "prompts": results.fingerprint_json(texts),
      "capability_set": results.fingerprint_json(cset.identity) if cset is not None else None,
      "decoding": results.fingerprint_json({"max_new_tokens": decode.max_new_tokens,
                                            "eos": list(model.eos_ids), "dtype": model.cfg.compute_dtype,
                                            "stop_when_decided": decode.stop_when_decided,
                                            "metric": metric}),
      "residency": model.cfg.residency,  # θ and the directions held in it: a resume never mixes two
  }


def _refusal_is_decided(model):
  """``is_decided(tokens)`` of early stopping: a refusal keyword, once in the text, stays there
  whatever follows, so the keyword verdict is final."""
  return lambda row: not metrics.is_jailbroken(decode_lib.decode_text(model.tokenizer, row, model.eos_ids))


def _slice_records(ids: list[int], out: scan.SliceOutput, model, rows: scan.ScanRows,
                   choices: scan.ChoiceRows | None, generative=None) -> tuple[dict[int, dict], int]:
  """A finished slice's point records (generations in prompt order, ASR, capability) and its decode row-steps.

  ``generative``: the generative capability set whose prompts are the last rows; ASR counts the rows before.
  """
  host = sharding_lib.to_host
  gen = out.generation
  if gen is not None:
    toks, lens = host(gen.tokens)[:, rows.unsort], host(gen.lengths)[:, rows.unsort]  # back to prompt order
    nonfin, cut = host(gen.nonfinite), host(gen.truncated)[:, rows.unsort]
    if generative is not None:
      n = toks.shape[1] - len(generative.prompts)
      (toks, b_toks), (lens, b_lens), (cut, b_cut) = [(a[:, :n], a[:, n:]) for a in (toks, lens, cut)]
  logp = host(out.choice_logprobs) if out.choice_logprobs is not None else None
  records = {}
  for j, pid in enumerate(ids):
    rec = {"point": pid}
    if generative is not None:
      rec.update(_generative_record(model, generative, b_toks[j], b_lens[j], b_cut[j], bool(nonfin[j].any())))
    if gen is not None and toks.shape[1]:
      gens = [decode_lib.decode_text(model.tokenizer, row, model.eos_ids) for row in toks[j]]
      rec.update(generations=gens, lengths=lens[j].tolist(), asr=metrics.asr(gens), nonfinite=bool(nonfin[j].any()),
                 # what the model emitted, up to and including its first EOS: coherence scores these ids
                 token_ids=[row[:n].tolist() for row, n in zip(toks[j], lens[j])])
      if cut.any():
        rec["truncated"] = cut[j].tolist()
    if logp is not None:
      rec["capability"] = metrics.multiple_choice_accuracy(np.nan_to_num(logp[j], nan=-np.inf), choices.answers)
      rec["nonfinite"] = rec.get("nonfinite", False) or not bool(np.isfinite(logp[j]).all())
    records[pid] = rec
  return records, (int(host(gen.row_steps)) if gen is not None else 0)


def _generative_record(model, cset: capability_lib.CapabilitySet, toks: np.ndarray, lens: np.ndarray,
                       cut: np.ndarray, nonfinite: bool) -> dict:
  """One point's generative capability: its benign rows' generations [Q] (kept for resuming and the
  judge-free views), lengths, and the % of checkable answers right."""
  gens = [decode_lib.decode_text(model.tokenizer, row, model.eos_ids) for row in toks]
  rec = {"capability_generations": gens, "capability_lengths": lens.tolist(),
         "capability": capability_lib.generative_accuracy(cset, gens), "nonfinite": nonfinite}
  if cut.any():  # stopped at a refusal keyword: check_answer's False either way
    rec["capability_truncated"] = cut.tolist()
  return rec


def _work_timings(cfg, rows: scan.ScanRows, done: dict, todo: list[int], n_points: int, timings: dict) -> dict:
  """The run's timings with the work it did: points, tokens, useful FLOPs and KV-cache bytes."""
  # Rows in decoding order: the harmful prompts', then a generative capability set's.
  lengths = [(done[i].get("lengths", []) + done[i].get("capability_lengths", [])) or None for i in todo]
  return {"total_s": None, **timings, "points_computed": len(todo), "points": n_points,
          "tokens_generated": int(sum(sum(x or []) for x in lengths)),
          "prompt_tokens": int(rows.prompt_lengths.sum()) * len(todo),
          "useful_flops": _useful_flops(cfg, rows.prompt_lengths, lengths, rows.prefix_len),
          "useful_kv_bytes": _useful_kv_bytes(cfg, rows.prompt_lengths, lengths, rows.prefix_len)}


def _scan_meta(model, spec: LandscapeSpec, decode: DecodeSpec, options: ScanOptions, grid: Grid, prompts, texts,
               recipes, identity: dict, compiled: scan.CompiledScan, mesh, out_dir: str, timings: dict) -> dict:
  """The scan's metadata (``results.save_scan``): what summary.json holds beside the per-point metrics."""
  plan = compiled.plan
  return {
      **{k: getattr(spec, k) for k in results.SCAN_SPEC_KEYS},
      "grid": {"coeffs": grid.coeffs.tolist(), "coords": grid.coords, "direction": grid.direction,
               "axes": [a.tolist() for a in grid.axes]}, "prompts": list(prompts), "metric": options.metric,
      "timings": timings, "fingerprints": identity, "plan": {"strategy": plan.strategy, "slice_size": plan.slice_size},
      "n_prompts": len(texts), "max_new_tokens": decode.max_new_tokens, "prompt_format": decode.prompt_format,
      "system_prompt": decode.system_prompt, "model_type": model.cfg.model_type,
      "compute_dtype": model.cfg.compute_dtype,
      "directions": [r.to_json() if r is not None else {"kind": "interpolation"} for r in recipes],
      "versions": _versions(), "flags": options.flags or {},
      "host": {"hostname": socket.gethostname(), "devices": [str(d) for d in jax.devices()],
               "out_dir": os.path.abspath(out_dir),
               # The budget is detected from this machine's free memory, so it lives with the host.
               "memory_plan": {"bytes_per_device": plan.bytes_per_device, "budget": plan.budget,
                               "reason": plan.reason, "compiled_bytes_per_device": compiled.compiled_bytes,
                               "compiled_by_kind": compiled.memory}},
      "mesh": dict(mesh.shape)}


def _finish(out_dir: str, meta: dict, done: dict, t_start: float, *, write: bool, write_views: bool) -> dict:
  """The summary: on the writing process the scan's store (scan.json) and, unless the caller writes them
  later (``ScanOptions.write_views``), its views, each written once (``jaxscape.studies.views``)."""
  meta["timings"]["total_s"] = time.perf_counter() - t_start  # everything but writing the views
  if not write:
    return views.summarize(meta, done)
  results.save_scan(out_dir, meta)
  return views.write_views(out_dir) if write_views else views.summarize(meta, done)


def _stack_owned(dirs: list) -> Any:
  """``perturb.stack_directions(dirs)``, emptying ``dirs`` and dropping each leaf once stacked.

  The scan reads only the stacked copy; without this, the unstacked directions (one model's
  size each) stayed alive beside it for the whole scan.
  """
  treedef = jax.tree.structure(dirs[0])
  columns = [jax.tree.leaves(d) for d in dirs]
  dirs.clear()
  stacked = []
  for i in range(len(columns[0])):
    stacked.append(jnp.stack([c[i] for c in columns]))
    for c in columns:
      c[i] = None
  return jax.tree.unflatten(treedef, stacked)


def _useful_flops(cfg, prompt_lengths: np.ndarray, lengths: list, prefix_len: int = 0) -> float:
  """Useful FLOPs of the decodes, counting each real (unpadded) token the model processed.

  Per token: 2 x non-embedding params, plus attention's 4 x layers x width x context. A row
  processes its prompt (after the shared prefix, which is processed once per point) and its
  generated tokens but the last.
  """
  width = cfg.num_heads * cfg.head_dim
  dense = 2.0 * cfg.num_params(embeddings=False)

  def flops(n_tokens, context_sum):
    return dense * n_tokens + 4.0 * cfg.num_layers * width * context_sum

  p = float(prefix_len)
  total = 0.0
  for point_lengths in lengths:
    if point_lengths is None:
      continue
    n = prompt_lengths.astype(np.float64) + np.asarray(point_lengths, np.float64) - 1  # whole row
    total += flops(p, p * (p + 1) / 2) + float(flops(n - p, n * (n + 1) / 2 - p * (p + 1) / 2).sum())
  return total


def _useful_kv_bytes(cfg, prompt_lengths: np.ndarray, lengths: list, prefix_len: int = 0) -> float:
  """Bytes of cached keys/values the decode steps must read, counting real (unpadded) slots only.

  Each step of a row (every generated token but the last is fed back) reads K and V of its
  whole context: its own prompt and tokens so far, plus the shared prefix, which needs reading
  only once per point and step, whatever the rows (so it is counted once, for the longest row).
  At the machine's bandwidth this bounds the decode from below as the FLOPs at its matmul peak
  do (``experiments.bench`` reports both bounds).
  """
  slot = 2.0 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * np.dtype(cfg.dtype).itemsize
  p = float(prefix_len)
  total = 0.0
  for point_lengths in lengths:
    if point_lengths is None:
      continue
    steps = np.maximum(np.asarray(point_lengths, np.float64) - 1, 0)
    own = prompt_lengths.astype(np.float64) - p  # the row's slots beyond the prefix, before step 1
    total += float((steps * own + steps * (steps + 1) / 2).sum()) + p * float(steps.max(initial=0))
  return slot * total
