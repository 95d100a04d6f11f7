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

from jaxscape import decode as decode_lib
from jaxscape import engine as engine_lib
from jaxscape import directions as directions_lib
from jaxscape import metrics
from jaxscape import perturb
from jaxscape import prompts as prompts_lib
from jaxscape import results
from jaxscape import scan
from jaxscape import sharding as sharding_lib
from jaxscape import views

KINDS = ("1d_random", "2d_random", "1d_interpolation", "2d_interpolation", "2d_interpolation_random")


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
  axes = directions_lib.grid_axes(spec.kind, steps=spec.steps, multiplier=spec.multiplier,
                                  extra_steps=spec.extra_steps)
  pts = np.asarray(directions_lib.grid_coords(axes), np.float64)  # [K, ndim]
  if spec.num_directions > 1:
    if spec.kind != "1d_random":
      raise ValueError(f"--num_directions > 1 needs kind 1d_random, got {spec.kind}")
    n, K = spec.num_directions, len(pts)
    coeffs = np.zeros((n * K, n))
    for k in range(n):
      coeffs[k * K:(k + 1) * K, k] = pts[:, 0]
    return Grid(coeffs=coeffs.astype(np.float32), coords=[[float(c)] for c in pts[:, 0]] * n,
                direction=[k for k in range(n) for _ in range(K)], axes=axes)
  if spec.num_directions < 1:
    raise ValueError(f"num_directions must be >= 1, got {spec.num_directions}")
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

  glibc keeps freed heap memory for reuse, so the transients of loading, drawing directions and
  compiling stayed in the process's RSS for the whole scan: 100M model, factored, ``--memory_budget=1G``,
  RSS when the plan is printed 1.49 -> 1.32 GiB, during the scan 1.87 -> 1.65 GiB, peak 1.98 -> 1.74
  GiB (BENCHMARKS.md, session 8).
  """
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # not glibc
    pass


def run_landscape(model, prompts: list[str], spec: LandscapeSpec, *, out_dir: str,
                  decode: DecodeSpec = DecodeSpec(), model_b=None, model_c=None,
                  capability_set: list[dict] | None = None, metric: str = "safety",
                  strategy: str = "auto", slice_size: int = 0, memory_budget: int | None = None,
                  resume: bool = True, progress: bool = True, flags: dict | None = None,
                  mesh: jax.sharding.Mesh | None = None,
                  directions: tuple[list, list] | None = None, save_directions: bool | None = None,
                  t_start: float | None = None, load_s: float | None = None, engine: str = "slices",
                  decode_slots: int = 0, refill_interval: int = 4) -> dict:
  """Scan a landscape and write its results dir; returns the summary dict.

  Args:
    model: a loaded ``jaxscape.convert.Model`` (θ_a).
    prompts: harmful prompts (safety metric).
    spec: grid and directions; ``model_b``/``model_c`` for interpolation kinds.
    capability_set: multiple-choice items ``{"question", "options": [4], "answer": "A".."D"}``
      for ``metric`` "capability" or "both".
    strategy: "auto" (from the memory plan: materialize, factored or hybrid), "materialize", "factored" or
      "hybrid" (materialized prefill, factored decoding; ``scan.phase_strategies``).
    slice_size: points per jitted call (0: from the memory plan).
    memory_budget: bytes per device (None: detected).
    resume: reuse the finished points of a compatible run already in ``out_dir``.
    flags: the entry point's flags, recorded in summary.json.
    mesh: ('points', 'model') mesh (default: every device on 'points'). Points are split over
      'points', params and directions over 'model'. Every process runs this function; only
      process 0 writes files (the results dir must be on a shared file system to resume).
    directions: ``(direction trees, recipes)`` to scan along instead of generating them from
      ``spec`` (e.g. from ``directions.load_directions``); validated against the model.
    save_directions: write the directions to ``out_dir/directions`` (default: random ones
      only, as their recipes; interpolation ones are model-sized, so only when True).
    t_start, load_s: process start (``time.perf_counter``) and model load time, for timings.
    engine: "slices" (every row of a slice decodes until the slice's last row ends, the caches
      growing by phases: ``scan.decode_slice``) or "continuous" (``jaxscape.engine``: the
      (point, prompt) rows of a slice stream through fixed decode slots, each refilled within
      ``refill_interval`` steps of its row's end; decoding is factored per slot, prefill per
      ``strategy``). On CPU the continuous engine measured slower (BENCHMARKS.md, session 9).
    decode_slots: the continuous engine's slots (0: ``engine.plan_engine``).
  """
  if engine not in ("continuous", "slices"):
    raise ValueError(f"unknown engine {engine!r}; expected continuous or slices")
  t_start = t_start or time.perf_counter()
  if spec.kind not in KINDS:
    raise ValueError(f"unknown kind {spec.kind!r}; expected one of {', '.join(KINDS)}")
  if metric not in ("safety", "capability", "both"):
    raise ValueError(f"unknown metric {metric!r}; expected safety, capability or both")
  if decode.max_new_tokens <= 0:
    raise ValueError(f"max_new_tokens must be > 0, got {decode.max_new_tokens}")
  want_safety = metric in ("safety", "both")
  want_capability = metric in ("capability", "both")
  if want_capability and not capability_set:
    raise ValueError("metric capability needs a multiple-choice set")
  cfg, tok = model.cfg, model.tokenizer
  grid = make_grid(spec)

  # Directions (random ones are regenerated from their recipe; interpolation needs models b/c).
  t0 = time.perf_counter()
  if directions is not None:
    dirs, recipes = directions
    for d in dirs:
      directions_lib.check_matches(model.params, d)
    if len(dirs) != grid.coeffs.shape[1]:
      raise ValueError(f"kind {spec.kind} with {spec.num_directions} direction(s) needs {grid.coeffs.shape[1]} "
                       f"direction(s), {len(dirs)} were given")
  else:
    dirs, recipes = directions_lib.directions_for(
        spec.kind, model.params, params_b=model_b.params if model_b else None,
        params_c=model_c.params if model_c else None, seed=spec.seed, norm=spec.norm,
        exclude=tuple(spec.exclude), orthogonal=spec.orthogonal, num_directions=spec.num_directions)
  dirs = list(dirs)  # ours to empty once stacked (a caller's list stays as it was)
  n_dirs = len(dirs)
  directions_s = time.perf_counter() - t0

  # Prompts, tokenized once for every point.
  texts, add_special = prompts_lib.render(prompts, tok, prompt_format=decode.prompt_format,
                                          system_prompt=decode.system_prompt)
  max_len = cfg.max_position_embeddings - decode.max_new_tokens
  tokens, mask = prompts_lib.tokenize(texts, tok, add_special_tokens=add_special, pad_id=model.pad_id,
                                      max_length=max_len, truncate=decode.truncate_prompts)
  full_mask = mask
  # The prefix every prompt shares (template + system prompt) is prefilled once per point.
  prefix, tokens, mask = (prompts_lib.split_shared_prefix(tokens, mask, pad_id=model.pad_id)
                          if decode.share_prefix else (None, tokens, mask))
  # Rows sorted by length, prefilled in length groups; ``unsort`` restores the prompt order.
  order, groups = prompts_lib.length_groups(mask)
  # Columns left of the longest group are padding in every row: dropped, so the decode cache
  # (prompt slots + new tokens) has no slot that is never filled (64 -> 40 on the default scan).
  width = groups[0][2]
  tokens, mask, unsort = tokens[order, -width:], mask[order, -width:], np.argsort(order)
  if want_capability:
    mc_texts = [prompts_lib.format_choice_question(item) for item in capability_set]
    mc_rendered, mc_add = prompts_lib.render(mc_texts, tok, prompt_format=decode.prompt_format,
                                             system_prompt=decode.system_prompt)
    mc_tokens, mc_mask = prompts_lib.tokenize(mc_rendered, tok, add_special_tokens=mc_add, pad_id=model.pad_id,
                                              max_length=cfg.max_position_embeddings,
                                              truncate=decode.truncate_prompts)
    choice_ids = np.asarray(metrics.letter_token_ids(tok), np.int32)
    answers = np.asarray(["ABCD".index(item["answer"]) for item in capability_set])

  identity = {
      "model": _fingerprint(model.params),
      "model_b": _fingerprint(model_b.params) if model_b else None,
      "model_c": _fingerprint(model_c.params) if model_c else None,
      "directions": results.fingerprint_json([r.to_json() for r in recipes if r is not None])
      if recipes and all(r is not None for r in recipes) else _fingerprint(dirs),
      "grid": results.fingerprint_json({"coeffs": grid.coeffs.tolist(), "kind": spec.kind}),
      "prompts": results.fingerprint_json(texts),
      "capability_set": results.fingerprint_json(capability_set) if want_capability else None,
      "decoding": results.fingerprint_json({"max_new_tokens": decode.max_new_tokens,
                                            "eos": list(model.eos_ids), "dtype": cfg.compute_dtype,
                                            "stop_when_decided": decode.stop_when_decided,
                                            "metric": metric}),
  }
  mesh = mesh or sharding_lib.make_mesh()
  cfg = sharding_lib.config_for_mesh(cfg, mesh)
  writer = jax.process_index() == 0
  reuse = results.prepare_run(out_dir, identity, resume=resume, write=writer)
  all_random = all(r is not None for r in recipes)
  if (save_directions if save_directions is not None else all_random) and not reuse:
    directions_lib.save_directions(os.path.join(out_dir, "directions"), dirs, recipes, overwrite=True)
  t0 = time.perf_counter()
  stacked = _stack_owned(dirs)
  _return_freed_memory()  # loading's and the directions' transients
  directions_s += time.perf_counter() - t0
  done = results.load_points(out_dir, clean=writer) if reuse else {}
  n_points = len(grid.coeffs)
  todo = [i for i in range(n_points) if i not in done]

  seq_len = tokens.shape[1] + (0 if prefix is None else len(prefix)) + decode.max_new_tokens
  plan = scan.plan_scan(cfg, n_points=max(1, len(todo)), n_dirs=n_dirs, batch=len(texts), seq_len=seq_len,
                        budget=memory_budget,
                        strategy=strategy, slice_size=slice_size, point_shards=mesh.shape["points"],
                        model_shards=mesh.shape["model"])
  continuous = engine == "continuous" and want_safety
  plan_engine = lambda plan: engine_lib.plan_engine(plan.slice_size // mesh.shape["points"] * len(texts), len(texts),
                                                    strategy=plan.strategy, slots=decode_slots, interval=refill_interval)
  espec = plan_engine(plan) if continuous else None
  if writer:
    print(f"mesh: {dict(mesh.shape)} over {mesh.devices.size} device(s), {jax.process_count()} process(es)",
          file=sys.stderr)
    print(plan.describe(), file=sys.stderr)
    if continuous:
      print(espec.describe(), file=sys.stderr)
  if done:
    print(f"resuming: {len(done)} of {n_points} points already in {out_dir}", file=sys.stderr)

  P = plan.slice_size
  rep = sharding_lib.replicated(mesh)
  params = sharding_lib.put(model.params, sharding_lib.param_shardings(model.params, mesh))
  stacked = sharding_lib.put(stacked, sharding_lib.direction_shardings(model.params, mesh))
  tokens_d, mask_d = sharding_lib.put((tokens, mask), (rep, rep))
  prefix_d = None if prefix is None else sharding_lib.put(prefix, rep)
  if want_capability:
    mc_tokens, mc_mask, choice_ids = sharding_lib.put((mc_tokens, mc_mask, choice_ids), (rep, rep, rep))
  points_sharding = sharding_lib.points_sharding(mesh)
  points_sharding_nd = lambda ndim: sharding_lib.points_sharding(mesh, ndim)
  max_steps, pad_id = np.int32(decode.max_new_tokens), np.int32(model.pad_id)
  static = dict(cfg=cfg, strategy=plan.strategy)

  # Compile once, ahead of time, so compile_s and scan_s are measured apart. The compiled calls
  # state the device bytes XLA assigned them; a plan whose slice turns out larger than the
  # budget (the estimate is a model, XLA's buffers are the fact) is shrunk and compiled again.
  t0 = time.perf_counter()
  shrunk = False
  while True:
    example = jax.ShapeDtypeStruct((P, n_dirs), jnp.float32, sharding=points_sharding)
    gen_fn = mc_fn = chunk_fn = interval_fn = None
    espec = plan_engine(plan) if continuous else None
    engine_args = (params, stacked, example, tokens_d, mask_d, pad_id, prefix_d)
    if continuous and todo:
      run_p, start_p, interval_p = engine_lib.programs(mesh, cfg=cfg, spec=espec, max_new_tokens=decode.max_new_tokens,
                                                       eos_ids=model.eos_ids)
      if not decode.stop_when_decided:
        gen_fn = run_p.lower(*engine_args).compile()
      else:  # the host-checked scan's two programs: its start and one refill interval
        gen_fn = start_p.lower(*engine_args).compile()
        per_device = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=points_sharding_nd(x.ndim))
        state_shape, pre_shape = jax.tree.map(per_device, jax.eval_shape(start_p, *engine_args))
        stop_shape = per_device(jax.ShapeDtypeStruct((mesh.shape["points"], espec.slots), jnp.bool_))
        interval_fn = interval_p.lower(state_shape, stop_shape, *engine_args[:-1], pre_shape).compile()
    elif want_safety and todo and not decode.stop_when_decided:
      gen_fn = scan.decode_slice.lower(params, stacked, example, tokens_d, mask_d, max_steps, pad_id, prefix_d,
                                       max_new_tokens=decode.max_new_tokens, eos_ids=model.eos_ids,
                                       groups=groups, **static).compile()
    if (want_safety and todo and decode.stop_when_decided and not continuous
        and (shrunk or plan.bytes_per_device > plan.budget // 2)):
      # The chunked programs compile during the scan; near the budget (or once XLA has shrunk
      # the plan), check the largest one now: a compile the scan does not reuse, so far below
      # the budget it is skipped.
      chunk_fn = scan.largest_chunk_compiled(
          params, stacked, example, tokens_d, mask_d, pad_id, prefix_d, max_new_tokens=decode.max_new_tokens,
          eos_ids=model.eos_ids, groups=groups, state_sharding=lambda nd: sharding_lib.points_sharding(mesh, nd),
          **static)
    if want_capability and todo:
      mc_fn = scan.choice_logits_slice.lower(params, stacked, example, mc_tokens, mc_mask, choice_ids,
                                             **static).compile()
    compiled = [b for b in (scan.compiled_bytes(f) for f in (gen_fn, chunk_fn, mc_fn, interval_fn) if f is not None)
                if b is not None]
    del chunk_fn  # only its size was needed
    compiled_bytes = max(compiled) if compiled else None
    smaller = P // mesh.shape["points"] // 2 * mesh.shape["points"]  # halve the points per device
    if compiled_bytes is None or compiled_bytes <= plan.budget:
      break
    if slice_size or smaller <= 0:  # a forced slice, or one point per device already
      if writer:
        print(f"warning: the compiled slice needs {compiled_bytes / (1 << 30):.2f} GiB per device, over the "
              f"budget of {plan.budget / (1 << 30):.2f} GiB", file=sys.stderr)
      break
    plan = scan.replan_slice(plan, cfg, slice_size=smaller, point_shards=mesh.shape["points"], n_dirs=n_dirs,
                             batch=len(texts), seq_len=seq_len, model_shards=mesh.shape["model"])
    P, shrunk = plan.slice_size, True
    if writer:
      print(f"compiled slice needs {compiled_bytes / (1 << 30):.2f} GiB per device, over the budget: "
            f"{plan.describe()}", file=sys.stderr)
  if writer and compiled_bytes is not None:
    print(f"compiled: {compiled_bytes / (1 << 30):.2f} GiB per device (XLA's buffers for one slice: "
          f"params, directions, activations, KV cache)", file=sys.stderr)
  compile_s = time.perf_counter() - t0
  _return_freed_memory()  # the compiler's

  def is_decided(row: np.ndarray) -> bool:
    # A refusal keyword, once in the text, stays there whatever follows: the keyword verdict is final.
    return not metrics.is_jailbroken(decode_lib.decode_text(tok, row, model.eos_ids))

  def step(coeffs):
    c = sharding_lib.put(coeffs, points_sharding)
    mc = mc_fn(params, stacked, c, mc_tokens, mc_mask, choice_ids) if mc_fn else None
    if continuous:
      gen = engine_lib.decode_rows(
          params, stacked, c, tokens_d, mask_d, model.pad_id, prefix_d, cfg=cfg, spec=espec,
          max_new_tokens=decode.max_new_tokens, eos_ids=model.eos_ids,
          is_decided=is_decided if decode.stop_when_decided else None, to_host=sharding_lib.to_host, mesh=mesh,
          compiled=(None, gen_fn, interval_fn) if decode.stop_when_decided else (gen_fn, None, None))
    elif want_safety and decode.stop_when_decided:
      toks, lens, nonfin, truncated, row_steps_run = scan.decode_until_decided(
          params, stacked, coeffs, tokens_d, mask_d, model.pad_id, prefix_d, cfg=cfg,
          max_new_tokens=decode.max_new_tokens, eos_ids=model.eos_ids, strategy=plan.strategy,
          is_decided=is_decided, chunk=decode.chunk_tokens, point_multiple=mesh.shape["points"],
          put=lambda x: sharding_lib.put(x, sharding_lib.points_sharding(mesh, np.ndim(x))),
          to_host=sharding_lib.to_host, groups=groups)
      gen = {"tokens": toks, "lengths": lens, "nonfinite": nonfin, "truncated": truncated,
             "decode_row_steps": row_steps_run}
    elif gen_fn:
      g = gen_fn(params, stacked, c, tokens_d, mask_d, max_steps, pad_id, prefix_d)
      gen = {"tokens": g.tokens, "lengths": g.lengths, "nonfinite": g.nonfinite}
    else:
      gen = None
    return gen, mc

  def on_result(ids, out):
    gen, mc = out
    records = {}
    host = sharding_lib.to_host
    toks = host(gen["tokens"])[:, unsort] if gen is not None else None  # back to prompt order
    lens = host(gen["lengths"])[:, unsort] if gen is not None else None
    nonfin = host(gen["nonfinite"]) if gen is not None else None
    mc_logits = host(mc) if mc is not None else None
    for j, pid in enumerate(ids):
      rec = {"point": pid}
      if toks is not None:
        if j == 0 and "decode_row_steps" in gen:
          row_steps[0] += int(gen["decode_row_steps"])
        elif j == 0 and "truncated" not in gen:  # slices: every row of the slice ran until its longest ended
          row_steps[0] += lens.size * (int(lens.max()) - 1)
        gens = [decode_lib.decode_text(tok, row, model.eos_ids) for row in toks[j]]
        rec.update(generations=gens, lengths=lens[j].tolist(), asr=metrics.asr(gens),
                   nonfinite=bool(nonfin[j].any()))
        if "truncated" in gen:
          rec["truncated"] = gen["truncated"][j][unsort].tolist()
      if mc_logits is not None:
        finite = bool(np.isfinite(mc_logits[j]).all())
        rec["capability"] = metrics.multiple_choice_accuracy(np.nan_to_num(mc_logits[j], nan=-np.inf), answers)
        rec["nonfinite"] = rec.get("nonfinite", False) or not finite
      records[pid] = rec
    if writer:
      results.save_slice(out_dir, records)
    done.update(records)

  row_steps = [0]  # decoding row-steps: batch rows (slots, or a slice's points x prompts) x steps run
  slices = [todo[i:i + P] for i in range(0, len(todo), P)]
  t0 = time.perf_counter()
  scan.run_slices(step, slices, grid.coeffs, slice_size=P, on_result=on_result, progress=progress and writer)
  scan_s = time.perf_counter() - t0

  # The scan's metadata (results.save_scan): what summary.json holds beside the per-point metrics.
  meta = {**{k: getattr(spec, k) for k in results.SCAN_SPEC_KEYS},
          "grid": {"coeffs": grid.coeffs.tolist(), "coords": grid.coords, "direction": grid.direction,
                   "axes": [a.tolist() for a in grid.axes]}, "prompts": list(prompts), "metric": metric}
  lengths, prefix_len = [done[i].get("lengths") for i in todo], 0 if prefix is None else len(prefix)
  meta["timings"] = {"total_s": None, "load_s": load_s, "directions_s": directions_s, "compile_s": compile_s,
                     "scan_s": scan_s, "points_computed": len(todo), "points": n_points,
                     "tokens_generated": int(sum(sum(done[i].get("lengths", [])) for i in todo)),
                     # rows of the decoding batch x decoding steps run
                     "decode_row_steps": row_steps[0],
                     "prompt_tokens": int(full_mask.sum()) * len(todo),
                     "useful_flops": _useful_flops(cfg, full_mask.sum(1), lengths, prefix_len),
                     "useful_kv_bytes": _useful_kv_bytes(cfg, full_mask.sum(1), lengths, prefix_len)}
  meta.update(
      fingerprints=identity, plan={"strategy": plan.strategy, "slice_size": plan.slice_size, "engine": engine,
                                   **(dataclasses.asdict(espec) if continuous else {})},
      n_prompts=len(texts), max_new_tokens=decode.max_new_tokens, prompt_format=decode.prompt_format,
      system_prompt=decode.system_prompt, model_type=cfg.model_type, compute_dtype=cfg.compute_dtype,
      directions=[r.to_json() if r is not None else {"kind": "interpolation"} for r in recipes],
      versions=_versions(), flags=flags or {},
      host={"hostname": socket.gethostname(), "devices": [str(d) for d in jax.devices()],
            "out_dir": os.path.abspath(out_dir),
            # The budget is detected from this machine's free memory, so it lives with the host.
            "memory_plan": {"bytes_per_device": plan.bytes_per_device, "budget": plan.budget,
                            "reason": plan.reason, "compiled_bytes_per_device": compiled_bytes}})
  meta["mesh"] = dict(mesh.shape)
  meta["timings"]["total_s"] = time.perf_counter() - t_start  # everything but the views (jaxscape.views)
  if not writer:
    return views.summarize(meta, done)
  results.save_scan(out_dir, meta)
  return views.write_views(out_dir)


def _fingerprint(tree) -> str:
  """``results.fingerprint_tree`` of the per-layer view (``convert.unstack_layers``): a results dir
  written before the layers were stacked keeps its fingerprint, so it still resumes."""
  from jaxscape import convert
  return results.fingerprint_tree(convert.unstack_layers(jax.tree.map(np.asarray, tree)))


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
