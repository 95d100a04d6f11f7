"""Score a chat model on the held-out alignment sets (jaxscape.datasets.evaluation.evaluate_alignment).

  python -m experiments.eval_alignment --model=checkpoints/smollm2-aligned --out=results/align_eval.json

Prints the refusal rate on builtin:align/heldout_harmful, the refusal rate and the checkable
answers on builtin:align/heldout_benign; --out keeps the numbers and every generation.
"""

from absl import flags

from experiments import common

flags.DEFINE_string("model", common.DEFAULT_MODEL, "HF dir, converted dir, GGUF file or hub id "
                    "org/name[@revision]")
flags.DEFINE_integer("max_new_tokens", 64, "greedy tokens per prompt")
flags.DEFINE_string("system_prompt", None, "system message (default: the chat template's own)")
flags.DEFINE_string("out", None, "write the scores and generations here (JSON)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jaxscape
  from jaxscape.core import results
  from jaxscape.datasets import evaluation
  model = jaxscape.load_model(FLAGS.model)
  scores = evaluation.evaluate_alignment(model, max_new_tokens=FLAGS.max_new_tokens, system_prompt=FLAGS.system_prompt)
  print(f"{FLAGS.model}: held-out harmful refused {scores['harmful_refused_pct']:.1f}%, held-out benign refused "
        f"{scores['benign_refused_pct']:.1f}%, benign answers correct {scores['benign_correct']}/"
        f"{scores['benign_checkable']}")
  if FLAGS.out:
    results.atomic_write_json(FLAGS.out, {"model": FLAGS.model, **scores})


if __name__ == "__main__":
  common.run(main)
