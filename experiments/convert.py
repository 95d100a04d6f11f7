"""Convert an HF checkpoint dir into a jaxscape dir (metadata + tokenizer + orbax params).

  python -m experiments.convert --hf_dir=PATH --out=checkpoints/NAME [--overwrite]
"""

from absl import flags

from experiments import common

flags.DEFINE_string("hf_dir", None, "HF checkpoint directory (config.json, *.safetensors, tokenizer)")
flags.DEFINE_string("out", None, "destination, e.g. checkpoints/NAME")
flags.DEFINE_bool("overwrite", False, "replace an existing destination")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from jaxscape import convert
  if not FLAGS.hf_dir or not FLAGS.out:
    raise common.UserError("--hf_dir and --out are required")
  out = convert.convert(FLAGS.hf_dir, FLAGS.out, overwrite=FLAGS.overwrite)
  print(f"converted {FLAGS.hf_dir} -> {out}")


if __name__ == "__main__":
  common.run(main)
