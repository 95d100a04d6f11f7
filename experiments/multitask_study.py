"""The multitask safety study on the embedded toy model (or any chat model with the built-in sets).

  python -m experiments.multitask_study --flagfile=experiments/configs/toy_multitask.flags [--out=DIR]

Finetunes the aligned model on every run (benign tasks with and without the multitask safety
set, harmful few-shot sets with and without refusals), measures task metrics, ASR per framing,
VISAGE and the 1-D interpolation landscape for each, one 2-D interpolation x random landscape,
and writes DIR/table.md, DIR/table.json and plots. Finished runs in DIR are reused.
"""

import time

from absl import flags

from experiments import common

flags.DEFINE_string("model", common.DEFAULT_MODEL, "aligned model (HF checkpoint dir or hub id "
                    "org/name[@revision])")
flags.DEFINE_string("out", None, "results directory (finished runs inside are reused)")
flags.DEFINE_list("runs", None, "run names (default: all): task:T, task:T+safety, harmful:K, harmful_mixed:K")
flags.DEFINE_integer("steps", 300, "finetuning steps per benign-task run")
flags.DEFINE_integer("harmful_steps", 100, "finetuning steps per harmful few-shot run")
flags.DEFINE_integer("batch_size", 16, "finetuning sequences per step of the benign task runs")
flags.DEFINE_float("learning_rate", 2e-3, "peak finetuning learning rate of the benign task runs")
flags.DEFINE_integer("harmful_batch_size", 16, "finetuning sequences per step of the harmful runs (and the attack)")
flags.DEFINE_float("harmful_learning_rate", 2e-3, "peak finetuning learning rate of the harmful runs (and the attack)")
flags.DEFINE_integer("warmup_steps", 10, "linear warm-up steps")
flags.DEFINE_list("buckets", ["64", "96", "128", "192"], "padded finetuning sequence lengths")
flags.DEFINE_integer("lora_rank", 0, "0: full finetuning; r > 0: LoRA rank r")
flags.DEFINE_integer("seed", 0, "finetuning data order")
flags.DEFINE_integer("harmful_seeds", 3, "finetunes per harmful run (seeds seed, seed+1, ...); their ASR is averaged")
flags.DEFINE_float("task_target", 0.0, "early stopping of the benign task runs: stop at the first check where the "
                   "task metric on the held-out tail of the training split is >= this (%; 0: off)")
flags.DEFINE_integer("task_check_every", 100, "steps between those checks")
flags.DEFINE_integer("task_validation", 40, "training records held out for those checks")
flags.DEFINE_integer("task_seeds", 1, "finetunes per benign task run (task:T, task:T+safety); ASR and task metrics averaged")
flags.DEFINE_string("attack_run", "", "harmful run that attacks the models of --attack_from after the study ('': none)")
flags.DEFINE_list("attack_from", [], "runs whose models --attack_run finetunes (aligned: the aligned model), "
                  "harmful_seeds seeds each; the table then relates their VISAGE to their ASR after it")
flags.DEFINE_integer("attack_steps", 0, "finetuning steps of the attack (0: --harmful_steps)")
flags.DEFINE_integer("eval_samples", 150, "held-out harmful requests (x every framing) and task test items")
flags.DEFINE_integer("max_new_tokens", 48, "decoding budget of the evaluations")
flags.DEFINE_integer("landscape_prompts", 40, "held-out harmful requests per landscape point")
flags.DEFINE_integer("landscape_new_tokens", 32, "decoding budget of the landscapes")
flags.DEFINE_integer("visage_steps", 10, "steps of the 1-D random landscape around each model")
flags.DEFINE_float("visage_multiplier", 8.0, "span of that landscape")
flags.DEFINE_integer("interp_steps", 10, "steps of the 1-D interpolation landscape")
flags.DEFINE_integer("interp_extra_steps", 2, "extra steps beyond both ends of the interpolation")
flags.DEFINE_string("surface_run", "harmful:100", "run that gets the 2-D interpolation x random landscape ('': none)")
flags.DEFINE_integer("surface_steps", 6, "grid steps per axis of the 2-D landscape")
flags.DEFINE_bool("progress", True, "progress bars")
common.define_judge_flags()
FLAGS = flags.FLAGS


def main(argv):
  del argv
  t0 = time.perf_counter()
  from jaxscape.studies import study, study_spec
  if not FLAGS.out:
    raise common.UserError("--out is required")
  try:
    buckets = tuple(int(b) for b in FLAGS.buckets)
  except ValueError:
    raise common.UserError(f"--buckets must be integers, got {FLAGS.buckets}") from None
  spec = study_spec.StudySpec(
      runs=tuple(FLAGS.runs) if FLAGS.runs else study_spec.DEFAULT_RUNS, steps=FLAGS.steps,
      harmful_steps=FLAGS.harmful_steps, batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
      harmful_batch_size=FLAGS.harmful_batch_size, harmful_learning_rate=FLAGS.harmful_learning_rate, warmup_steps=FLAGS.warmup_steps,
      buckets=buckets, lora_rank=FLAGS.lora_rank, seed=FLAGS.seed, harmful_seeds=FLAGS.harmful_seeds,
      task_seeds=FLAGS.task_seeds, task_target=FLAGS.task_target, task_check_every=FLAGS.task_check_every,
      task_validation=FLAGS.task_validation, attack_run=FLAGS.attack_run, attack_from=tuple(FLAGS.attack_from),
      attack_steps=FLAGS.attack_steps,
      eval_samples=FLAGS.eval_samples,
      max_new_tokens=FLAGS.max_new_tokens, landscape_prompts=FLAGS.landscape_prompts,
      landscape_new_tokens=FLAGS.landscape_new_tokens, visage_steps=FLAGS.visage_steps,
      visage_multiplier=FLAGS.visage_multiplier, interp_steps=FLAGS.interp_steps,
      interp_extra_steps=FLAGS.interp_extra_steps, surface_run=FLAGS.surface_run, surface_steps=FLAGS.surface_steps)
  judge = common.judge_from_flags()  # --judge=PATH: judged-ASR columns beside the keyword ones
  study.run_study(FLAGS.model, spec, FLAGS.out, progress=FLAGS.progress, judge=judge)
  print(f"wrote {FLAGS.out}/table.md, table.json, framed_asr.png, interpolation.png "
        f"({time.perf_counter() - t0:.0f} s whole process)")


if __name__ == "__main__":
  common.run(main)
