"""Check a model's coherence threshold on prompts it was not calibrated on.

  python -m experiments.coherence_check --model=checkpoints/smollm2-aligned [--coherence_calibration=SET]

Calibrates on the first half of the calibration set (temperature-1 samples with --coherence_seed,
plus its reference answers), then labels temperature-1 samples to the second half (seed + 1) and
the same samples with their tokens shuffled (``jaxscape.studies.coherence.holdout_check``). A threshold that
tells text from token salad labels most of the first coherent and nearly all of the second incoherent.
"""

import json

from absl import flags

from experiments import common

common.define_coherence_flags()
flags.DEFINE_string("model", common.DEFAULT_MODEL, "model θ₀: HF dir, converted dir, GGUF file or hub id")
flags.DEFINE_enum("prompt_format", "chat", ["chat", "raw"], "how prompts are rendered (as the scan renders them)")
flags.DEFINE_string("system_prompt", None, "chat system prompt (default: the template's own)")
flags.DEFINE_integer("max_new_tokens", 64, "sample length (as the scan decodes)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jaxscape
  from jaxscape.studies import coherence
  settings = common.coherence_settings()
  model = jaxscape.load_model(FLAGS.model)
  check = coherence.holdout_check(model, settings.source, seed=settings.seed, percentile=settings.percentile,
                                  max_new_tokens=FLAGS.max_new_tokens, prompt_format=FLAGS.prompt_format,
                                  system_prompt=FLAGS.system_prompt, batch_size=settings.batch_size)
  print(json.dumps(check, indent=1))
  print(f"threshold {check['calibration']['threshold']:.4g}: held-out samples coherent {check['coherent_heldout']:.1f}% "
        f"of {check['heldout']}, shuffled incoherent {check['incoherent_shuffled']:.1f}% of {check['shuffled']}")


if __name__ == "__main__":
  common.run(main)
