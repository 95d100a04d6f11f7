"""The GPU check: jaxscape against the reference loop on one accelerator, in one command under a deadline.

  python -m experiments.gpu_check --anchor=PATH/anchor_loop.py --prompts=PATH.csv --out=DIR [--smoke]

Prepared for the first lent device (one H100 or H200, up to 15 minutes of it, one try): the
image runs its own ``python3`` (jax with CUDA, transformers, torch) with ``PYTHONPATH=.``, and
``../shared`` does not travel, so first copy the reference loop and the prompts into the
git-ignored ``gpu_inputs/`` folder, from the repo root:

  mkdir -p gpu_inputs
  cp ../shared/bench/anchor_loop.py ../shared/data/advbench/harmful_behaviors.csv gpu_inputs/

then run, carrying ``gpu_inputs`` (the device tool's ``carry=["gpu_inputs"]``, a ``timeout_s`` of
about 400 leaves room for the start-up):

  PYTHONPATH=. python3 -m experiments.gpu_check --anchor=gpu_inputs/anchor_loop.py \\
      --prompts=gpu_inputs/harmful_behaviors.csv --out=$OUT/gpu_check

Stages, in order; a step starts only while the deadline (``--deadline_s``) leaves it the time it
needs (``Sizes.need_s``), else it is marked "skipped: deadline" and the next one is tried; the
steps the comparison rests on (``CORE``) keep their time reserved from the optional ones before
them, and a child still running at its share of the deadline is killed:

  1. environment: library versions, devices, the device's own ceilings (a bfloat16 8192^3 matmul
     with float32 accumulation, a 4 GiB elementwise pass), and a toy smoke scan
     (``experiments.run_grid`` on checkpoints/toy-chat);
  2. plan: ``experiments.plan --target=gpu`` on each experiments/configs/models/*.json ("not built"
     while that planner or those configs are missing);
  3. jaxscape: a random Llama with Llama-2-7B's widths and 8 layers saved in bfloat16, 21 points x
     80 prompts x 64 tokens at --compute_dtype=bfloat16, --strategy=factored then materialize, each
     on an empty compilation cache (in --workdir) and again on the cache it filled; with the
     device's measured peak bytes in use beside the plan's estimate, and whether theta and the
     directions were resident in bfloat16 (summary.json's fingerprints.residency);
  4. the reference loop ``--fast --dtype=bfloat16`` at batch 80 on the same model and prompts;
  5. the reference as shipped (float32) at batch 4 and 80 on 3 points, scaled to 21 by its
     per-point seconds (points 2 on: the first carries the warm-up).

DIR/gpu_check.json is rewritten (atomically) after every step; the Markdown tables go to stdout and
DIR/gpu_check.md at the end. Nothing else is written under DIR (a device returns only a few small
files from $OUT): the checkpoint, the runs and their compilation caches go to ``--workdir``
(default: a temp dir, removed at the end). ``--smoke`` runs the same stages in seconds on a CPU (a 2-layer,
64-wide model, 3 points x 6 prompts x 4 tokens, small ceilings, the reference on --device=cpu).

The steps and their runner are ``experiments.gpu_check_steps``, the tables ``experiments.gpu_check_table``;
this command checks its flags and calls them.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from absl import flags

from experiments import common, gpu_check_steps, gpu_check_table

flags.DEFINE_string("anchor", None, "path to the reference loop, anchor_loop.py (required)")
flags.DEFINE_string("prompts", None, "AdvBench-style CSV (required)")
flags.DEFINE_string("out", None, "directory for gpu_check.json and gpu_check.md (required)")
flags.DEFINE_string("workdir", None, "where the checkpoint, the runs and their compilation caches go, kept (a model "
                    "already there is reused); default: a temp dir, removed at the end")
flags.DEFINE_bool("smoke", False, "the same stages in seconds on a CPU: tiny model and sizes (for CI)")
flags.DEFINE_float("deadline_s", 300.0, "seconds for all stages; a step that no longer fits is skipped")
flags.DEFINE_string("ref_device", None, "torch device of the reference (default: cuda, or cpu with --smoke)")
FLAGS = flags.FLAGS


def _check_inputs() -> tuple[str, str, str]:
  """The absolute --anchor, --prompts and --out (created), or one line saying what to fix."""
  for name, what in (("anchor", "PATH/anchor_loop.py (the reference loop)"), ("prompts", "PATH.csv (the prompts)")):
    path = getattr(FLAGS, name)
    if not path:
      raise common.UserError(f"--{name}={what} is required")
    if not os.path.isfile(path):
      raise common.UserError(f"--{name}={path} does not exist")
  if not FLAGS.out:
    raise common.UserError("--out=DIR is required")
  if FLAGS.deadline_s <= 0:
    raise common.UserError(f"--deadline_s must be positive, got {FLAGS.deadline_s:g}")
  for name in ("out", "workdir"):
    path = getattr(FLAGS, name)
    try:
      if path:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
          pass
    except OSError as e:
      raise common.UserError(f"--{name}={path} is not a writable directory ({e.strerror or e})") from None
  return os.path.abspath(FLAGS.anchor), os.path.abspath(FLAGS.prompts), os.path.abspath(FLAGS.out)


def main(argv):
  del argv
  anchor, prompts, out = _check_inputs()
  sizes = gpu_check_steps.SMOKE if FLAGS.smoke else gpu_check_steps.FULL
  ref_device = FLAGS.ref_device or ("cpu" if FLAGS.smoke else "cuda")
  # Not under --out: on a lent device only a few small files come back from $OUT, and the runs
  # leave hundreds (and a checkpoint of gigabytes).
  work = os.path.abspath(FLAGS.workdir) if FLAGS.workdir else tempfile.mkdtemp(prefix="gpu_check_")
  check = gpu_check_steps.Check(out, work, sizes, FLAGS.deadline_s, FLAGS.smoke, anchor, prompts, ref_device)
  check.save()
  try:
    gpu_check_steps.run_stages(check)
  finally:
    if not FLAGS.workdir:
      shutil.rmtree(work, ignore_errors=True)
  table = gpu_check_table.summarize(check)
  check.report["table"] = table
  check.save()
  md = gpu_check_table.render(check, table)
  gpu_check_steps.write_atomic(os.path.join(out, "gpu_check.md"), md)
  print(md, end="")


if __name__ == "__main__":
  common.run(main, compiles=False)
