"""Capability of one model at its own weights, no grid (jaxscape.datasets.capability.evaluate): the scan's metric at the origin.

  python -m experiments.eval_capability --model=checkpoints/smollm2-135m-instruct \
      --capability_set=mmlu:us_foreign_policy,high_school_us_history --capability_shots=5

Prints the accuracy per subject and overall beside chance; --out keeps them (and the letter
log-probabilities, or the generations of a generative set) as JSON.
"""

from absl import flags

from experiments import common

common.define_prompt_flags()
flags.DEFINE_string("model", common.DEFAULT_MODEL, "HF dir, converted dir, GGUF file or hub id org/name[@revision]")
flags.DEFINE_string("capability_set", "mmlu:us_foreign_policy", "as run_grid's --capability_set")
flags.DEFINE_integer("capability_shots", 0, "as run_grid's --capability_shots")
flags.DEFINE_integer("batch_size", 8, "prompts per scoring call")
flags.DEFINE_string("out", None, "write the scores here (JSON)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import numpy as np

  import jaxscape
  from jaxscape.core import results
  from jaxscape.datasets import capability
  cset = capability.load(FLAGS.capability_set, FLAGS.capability_shots)
  model = jaxscape.load_model(FLAGS.model, compute_dtype=FLAGS.compute_dtype)
  out = capability.evaluate(model, cset, prompt_format=FLAGS.prompt_format, system_prompt=FLAGS.system_prompt,
                            batch_size=FLAGS.batch_size, max_new_tokens=FLAGS.max_new_tokens)
  for topic, acc in out.get("per_topic", {}).items():
    print(f"  {topic}: {acc:.1f}% of {out['questions_per_topic'][topic]}")
  print(f"{FLAGS.model}: {FLAGS.capability_set} capability {out['capability']:.1f}% on {out['questions']} questions "
        f"({FLAGS.capability_shots} shots, {FLAGS.prompt_format}; chance {out['chance']:.0f}%)")
  if FLAGS.out:
    results.atomic_write_json(FLAGS.out, {"model": FLAGS.model, **{
        k: (np.asarray(v).tolist() if k == "letter_logprobs" else v) for k, v in out.items()}})


if __name__ == "__main__":
  common.run(main)
