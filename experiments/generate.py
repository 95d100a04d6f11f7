"""Greedy generations for a prompt file, one JSON line per prompt in input order.

  python -m experiments.generate --model=DIR --prompts=FILE --max_new_tokens=N --out=out.jsonl \
      [--prompt_format=chat|raw|llama2-base|...] [--system_prompt=...]
"""

import json
import os

from absl import flags

from experiments import common

common.define_prompt_flags()
flags.DEFINE_string("model", common.DEFAULT_MODEL, "HF checkpoint dir, converted dir, GGUF file or hub id "
                    "org/name[@revision]")
flags.DEFINE_string("out", None, "output JSONL")
flags.DEFINE_integer("batch_size", 64, "prompts per decoding batch")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from jaxscape.core import convert, decode
  from jaxscape.datasets import sources
  if not FLAGS.prompts or not FLAGS.out:
    raise common.UserError("--prompts and --out are required")
  if FLAGS.batch_size <= 0:
    raise common.UserError(f"--batch_size must be > 0, got {FLAGS.batch_size}")
  texts = sources.load_prompt_file(FLAGS.prompts, FLAGS.samples)
  model = convert.load_model(FLAGS.model, compute_dtype=FLAGS.compute_dtype)
  gens = decode.generate_texts(model, texts, max_new_tokens=FLAGS.max_new_tokens,
                               prompt_format=FLAGS.prompt_format, system_prompt=FLAGS.system_prompt,
                               batch_size=FLAGS.batch_size, truncate_prompts=FLAGS.truncate_prompts)
  tmp = FLAGS.out + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for p, g in zip(texts, gens):
      f.write(json.dumps({"prompt": p, "generation": g}) + "\n")
  os.replace(tmp, FLAGS.out)
  print(f"wrote {len(gens)} generations -> {FLAGS.out}")


if __name__ == "__main__":
  common.run(main)
