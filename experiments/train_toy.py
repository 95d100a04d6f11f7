"""Train jaxscape's embedded default model (checkpoints/toy-chat) from scratch on the built-in sets.

  python -m experiments.train_toy --flagfile=experiments/configs/train_toy.flags [--out=DIR]

Writes an HF checkpoint dir (config, safetensors, tokenizer, README.md model card with the
held-out metrics). Deterministic from --seed on one machine.
"""

import sys

from absl import flags

from experiments import common

flags.DEFINE_string("out", common.DEFAULT_MODEL, "output checkpoint dir")
flags.DEFINE_integer("seed", 0, "tokenizer, init, data mix and order")
flags.DEFINE_integer("steps", 3000, "optimizer steps")
flags.DEFINE_integer("batch_size", 32, "sequences per step")
flags.DEFINE_integer("micro_batches", 1, "gradient-accumulation micro-batches per step")
flags.DEFINE_list("buckets", ["44", "52", "60", "68"], "padded sequence lengths")
flags.DEFINE_float("learning_rate", 2e-3, "peak learning rate")
flags.DEFINE_integer("warmup_steps", 200, "linear warm-up steps")
flags.DEFINE_float("end_lr_ratio", 0.1, "final / peak learning rate (cosine decay)")
flags.DEFINE_float("weight_decay", 0.1, "AdamW weight decay (matrices only)")
flags.DEFINE_integer("vocab_size", 2048, "model vocab (tokenizer trained up to this size)")
flags.DEFINE_integer("hidden_size", 128, "model width")
flags.DEFINE_integer("num_layers", 4, "decoder layers")
flags.DEFINE_integer("num_heads", 8, "attention heads")
flags.DEFINE_integer("num_kv_heads", 8, "key/value heads")
flags.DEFINE_integer("intermediate_size", 384, "MLP width")
flags.DEFINE_integer("max_position_embeddings", 1024, "context window")
flags.DEFINE_bool("eval", True, "measure the held-out metrics and put them in the model card")
flags.DEFINE_integer("eval_samples", 0, "first N items of each held-out set (0: all)")
flags.DEFINE_integer("max_new_tokens", 32, "new tokens per evaluation generation")
flags.DEFINE_string("reference_checkpoint", None, "earlier build to compare weights with (bit-identity check)")
flags.DEFINE_bool("progress", True, "progress bar")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from jaxscape.studies import toymodel, train_step
  try:
    buckets = tuple(int(b) for b in FLAGS.buckets)
  except ValueError:
    raise common.UserError(f"--buckets must be integers, got {FLAGS.buckets}") from None
  cfg = toymodel.toy_model_config(
      vocab_size=FLAGS.vocab_size, hidden_size=FLAGS.hidden_size, num_layers=FLAGS.num_layers,
      num_heads=FLAGS.num_heads, num_kv_heads=FLAGS.num_kv_heads, intermediate_size=FLAGS.intermediate_size,
      max_position_embeddings=FLAGS.max_position_embeddings)
  tc = train_step.TrainConfig(num_steps=FLAGS.steps, batch_size=FLAGS.batch_size, micro_batches=FLAGS.micro_batches,
                              buckets=buckets, learning_rate=FLAGS.learning_rate, warmup_steps=FLAGS.warmup_steps,
                                end_lr_ratio=FLAGS.end_lr_ratio, weight_decay=FLAGS.weight_decay, seed=FLAGS.seed)
  info = toymodel.train_toy_model(
      FLAGS.out, cfg=cfg, tc=tc, eval=FLAGS.eval, eval_samples=FLAGS.eval_samples or None,
      max_new_tokens=FLAGS.max_new_tokens, progress=FLAGS.progress, reference_dir=FLAGS.reference_checkpoint,
      command="python -m experiments.train_toy " + " ".join(sys.argv[1:]))
  line = (f"trained {info['num_params']:,} params in {info['train_seconds']:.0f}s "
          f"(final loss {info['final_loss']:.4f}) -> {FLAGS.out}")
  if "metrics" in info:
    m = info["metrics"]
    line += (f"\nheld-out: harmful ASR {m['harmful_asr']:.1f}%  benign correct {m['benign_accuracy']:.1f}% "
             f"refused {m['benign_refusal']:.1f}%  MC {m['mc_accuracy']:.1f}% (logits) "
             f"{m['mc_accuracy_generation']:.1f}% (generation)")
  if info["identical_to_reference"] is not None:
    line += f"\nweights identical to {FLAGS.reference_checkpoint}: {info['identical_to_reference']}"
  print(line)


if __name__ == "__main__":
  common.run(main)
