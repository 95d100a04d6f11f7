"""Prove a scan's memory plan on the real shapes, without weights and without the device.

  python -m experiments.plan --model=experiments/configs/models/Llama-2-7b-chat-hf.json \
      --compute_dtype=bfloat16 --steps=20 --samples=80 --max_new_tokens=64 --prompt_tokens=50 --target=gpu

--model is a checkpoint dir, a hub id or a bare config.json. The budget is the device memory
(--device_memory, or read from the device) x the memory fraction in force (JAX's default 0.75,
XLA_PYTHON_CLIENT_MEM_FRACTION or --memory_fraction) x 0.9. The planner that run_grid uses picks
the strategy and points per slice; the slice's program is then compiled ahead of time from
abstract inputs (jaxscape.core.scan.compile_abstract) and XLA's bytes per device are printed beside the
plan's estimate. Exit 0 if it fits; otherwise one error: line that says what would fit.

On CPU the devices are simulated (--devices=N, or --mesh); for a GPU target the CPU-compiled bytes
are a proxy: XLA:CPU holds the bfloat16 KV cache in float32 (jaxscape.core.model.kv_dtype), which
inflates its temporaries; the GPU-held figure counts that cache at the compute dtype instead.
"""

import json
import math
import os

from absl import flags

from experiments import common

common.define_prompt_flags(default_prompts=None)
common.define_grid_flags()  # run_grid's: a run's flagfile plans as it runs
flags.DEFINE_string("model", None, "checkpoint dir, hub id org/name[@revision], or a bare config.json (required)")
flags.DEFINE_integer("prompt_tokens", 0, "tokens of the longest rendered prompt (0: render --prompts with the "
                     "model's tokenizer)")
flags.DEFINE_integer("devices", 0, "CPU: simulate this many devices (all on the points axis unless --mesh)")
flags.DEFINE_string("mesh", None, "device mesh, e.g. points:1,model:8")
flags.DEFINE_enum("target", None, ["gpu", "cpu"], "the device the plan is for (default: this machine's)")
flags.DEFINE_string("device_memory", None, "memory of one device, e.g. 80GiB (default: read from the device)")
flags.DEFINE_float("memory_fraction", None, "share of device memory JAX may take (default: "
                   "$XLA_PYTHON_CLIENT_MEM_FRACTION, else JAX's 0.75 on a GPU)")
flags.DEFINE_bool("compile", True, "compile the slice program ahead of time and print XLA's bytes")
FLAGS = flags.FLAGS

GIB = 1 << 30


def _config(model: str, compute_dtype: str):
  """(ModelConfig, model dir or None): from a bare config.json, or a checkpoint dir / hub id."""
  from jaxscape.core import convert, hub
  from jaxscape.core.config import ModelConfig
  if model.endswith(".json"):
    with open(model, encoding="utf-8") as f:
      try:
        return ModelConfig.from_hf_dict(json.load(f), compute_dtype=compute_dtype), None
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise common.UserError(f"{model}: not a model config.json ({e})") from None
  path = hub.resolve(model)
  return convert.read_config(path, compute_dtype=compute_dtype), path


def _prompt_tokens(model_dir: str | None) -> int:
  if FLAGS.prompt_tokens:
    return FLAGS.prompt_tokens
  if model_dir is None or not FLAGS.prompts:
    raise common.UserError("--prompt_tokens=N is needed without a tokenizer and --prompts to render")
  from jaxscape.core import convert, prompts
  from jaxscape.datasets import sources
  tok = convert.load_tokenizer(model_dir)
  texts, add = prompts.render(sources.load_prompts(FLAGS.prompts, FLAGS.samples), tok,
                              prompt_format=FLAGS.prompt_format, system_prompt=FLAGS.system_prompt)
  return max(len(ids) for ids in tok(texts, add_special_tokens=add)["input_ids"])


def _budget(target: str) -> tuple[int, str]:
  """Bytes usable per device and how they were reckoned."""
  from jaxscape.core import plan
  fraction = FLAGS.memory_fraction or float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", 0) or 0) or (
      0.75 if target == "gpu" else 1.0)
  if not 0 < fraction <= 1:
    raise common.UserError(f"the memory fraction must be in (0, 1], got {fraction}")
  if FLAGS.device_memory:
    memory = common.parse_bytes(FLAGS.device_memory, "--device_memory")
    return int(memory * fraction * 0.9), (f"{memory / GIB:.2f} GiB x {fraction:g} (memory fraction) x 0.9 "
                                          f"= {memory * fraction * 0.9 / GIB:.2f} GiB per device")
  budget = plan.detect_memory_budget()
  return budget, f"{budget / GIB:.2f} GiB per device (detected on this machine)"


def main(argv):
  del argv
  if not FLAGS.model:
    raise common.UserError("--model is required (a checkpoint dir, hub id or config.json)")
  from jaxscape.core import sharding
  if FLAGS.devices < 0:
    raise common.UserError(f"--devices must be >= 0, got {FLAGS.devices}")
  if FLAGS.devices:
    sharding.split_cpu_host(FLAGS.devices)  # before JAX starts
  import jax
  from jaxscape.core import grid, plan, scan
  target = FLAGS.target or ("cpu" if jax.default_backend() == "cpu" else "gpu")
  cfg, model_dir = _config(FLAGS.model, FLAGS.compute_dtype)
  prompt_tokens = _prompt_tokens(model_dir)
  batch = FLAGS.samples or 80
  axes = grid.grid_axes(FLAGS.kind, steps=FLAGS.steps, extra_steps=FLAGS.extra_steps)
  points = math.prod(len(a) for a in axes) * FLAGS.num_directions
  n_dirs = (2 if FLAGS.kind.startswith("2d") else 1) * FLAGS.num_directions
  mesh = sharding.make_mesh(FLAGS.mesh)
  budget, how = _budget(target)
  size = dict(n_dirs=n_dirs, batch=batch, seq_len=prompt_tokens + FLAGS.max_new_tokens,
              model_shards=mesh.shape["model"], target=target, max_new_tokens=FLAGS.max_new_tokens)
  p = plan.plan_scan(cfg, n_points=points, budget=budget, strategy=FLAGS.strategy, slice_size=FLAGS.slice_size,
                     point_shards=mesh.shape["points"], **size)
  print(f"model: {cfg.model_type}, {cfg.num_params() / 1e9:.2f}B params, resident {cfg.residency}; "
        f"{points} points x {batch} prompts x {prompt_tokens} + {FLAGS.max_new_tokens} tokens; target {target}; "
        f"mesh {dict(mesh.shape)}")
  print(f"budget: {how}")
  print(p.describe())
  held = p.bytes_per_device
  while FLAGS.compile:  # as run_grid does (scan.compile_scan): XLA's bytes are the fact, a slice over them shrinks
    mem = scan.compile_abstract(cfg, p, mesh, n_dirs=n_dirs, batch=batch, prompt_tokens=prompt_tokens,
                                max_new_tokens=FLAGS.max_new_tokens)
    held = _report_compiled(mem, cfg, p, size, target=target, point_shards=mesh.shape["points"])
    if held is None:  # no count of the target's own: the estimate decides
      held = p.bytes_per_device
      break
    smaller = p.slice_size // mesh.shape["points"] // 2 * mesh.shape["points"]
    if held <= budget or FLAGS.slice_size or smaller <= 0:
      break
    p = plan.replan_slice(p, cfg, slice_size=smaller, point_shards=mesh.shape["points"], **size)
    print(p.describe())
  if max(held, p.bytes_per_device) > budget:
    raise common.UserError(_what_would_fit(cfg, p, mesh, held, budget))
  print(f"fits: {max(held, p.bytes_per_device) / GIB:.2f} of {budget / GIB:.2f} GiB per device, "
        f"{-(-points // p.slice_size)} slices of {p.slice_size} points")


def _report_compiled(mem: dict | None, cfg, p, size: dict, *, target: str, point_shards: int) -> int | None:
  """Print XLA's bytes beside the estimate; returns the bytes the target would hold by XLA's count (None: not
  reported, or compiled on CPU for a GPU, whose count is a proxy only)."""
  import jax
  from jaxscape.core import plan
  if mem is None:
    print("XLA: this backend does not report the compiled program's bytes")
    return None
  total = mem["arguments"] + mem["outputs"] + mem["temporaries"] - mem["aliased"]
  proxy = target == "gpu" and jax.default_backend() == "cpu"
  line = (f"XLA: arguments {mem['arguments'] / GIB:.2f} GiB, outputs {mem['outputs'] / GIB:.2f}, temporaries "
          f"{mem['temporaries'] / GIB:.2f}; in all {total / GIB:.2f} GiB per device")
  if not proxy:
    print(f"{line}; plan's estimate {p.bytes_per_device / GIB:.2f} GiB ({p.bytes_per_device / total:.2f}x)")
    return total
  # XLA:CPU holds a bfloat16 KV cache in float32 (model.kv_dtype): its bytes are the CPU's, checked
  # against the estimate of the same slice for a CPU target.
  as_cpu = plan.estimate_bytes(cfg, strategy=p.strategy, points=p.slice_size // point_shards, **{**size, "target": "cpu"})
  print(f"{line} (compiled on CPU: a proxy; the CPU estimate of the same slice is {as_cpu / GIB:.2f} GiB, "
        f"{as_cpu / total:.2f}x)")
  return None


def _what_would_fit(cfg, p, mesh, held: int, budget: int) -> str:
  advice = []
  if p.slice_size > mesh.shape["points"]:
    advice.append("fewer points per slice (--slice_size)")
  if cfg.compute_dtype == "float32":
    advice.append("--compute_dtype=bfloat16")
  advice += ["more devices (--mesh with a model axis)", "a higher memory fraction (--memory_fraction)"]
  return (f"the scan needs {max(held, p.bytes_per_device) / GIB:.2f} GiB per device, over the budget of "
          f"{budget / GIB:.2f} GiB; try {', or '.join(advice)}")


if __name__ == "__main__":
  common.run(main)
