"""Finetune a model on chat data (full or LoRA) into an HF checkpoint dir that jaxscape and transformers load.

  python -m experiments.finetune --flagfile=experiments/configs/toy_finetune.flags [--out=DIR ...]
  python -m experiments.finetune --model=DIR --data=chats.jsonl --out=DIR --lora_rank=8 --steps=200

--data is JSONL, one {"messages": [{"role", "content"}, ...]} (or {"prompt", "response"}) per
line, or builtin:NAME. The training state is checkpointed in OUT/.train_state; rerunning the
same command after an interruption resumes it (bit-identical result).
"""

import sys

from absl import flags

from experiments import common

flags.DEFINE_string("model", common.DEFAULT_MODEL, "HF checkpoint dir, converted dir or hub id "
                    "org/name[@revision] to finetune")
flags.DEFINE_string("data", None, "chat JSONL file or builtin:NAME")
flags.DEFINE_string("out", None, "output checkpoint dir (must be new or empty, unless --overwrite)")
flags.DEFINE_bool("overwrite", False, "replace the model files of an earlier run in --out")
flags.DEFINE_integer("steps", 100, "optimizer steps")
flags.DEFINE_integer("batch_size", 8, "sequences per step")
flags.DEFINE_integer("micro_batches", 1, "gradient-accumulation micro-batches per step")
flags.DEFINE_list("buckets", ["128", "256", "512"], "padded sequence lengths (longer chats are truncated)")
flags.DEFINE_float("learning_rate", 1e-4, "peak learning rate")
flags.DEFINE_integer("warmup_steps", 10, "linear warm-up steps")
flags.DEFINE_float("weight_decay", 0.0, "AdamW weight decay (matrices only)")
flags.DEFINE_integer("lora_rank", 0, "0: full finetuning; r > 0: rank-r LoRA adapters (merged on export)")
flags.DEFINE_float("lora_alpha", None, "LoRA scale alpha / rank (default alpha = 2 * rank)")
flags.DEFINE_list("lora_targets", None, "projections that get adapters (default: all of q_proj, k_proj, v_proj, "
                  "o_proj, gate_proj, up_proj, down_proj)")
flags.DEFINE_integer("seed", 0, "data order and LoRA init")
flags.DEFINE_integer("checkpoint_every", 100, "save the training state every N steps (0: only at the end)")
flags.DEFINE_bool("resume", True, "continue an interrupted run found in --out (refused if incompatible)")
flags.DEFINE_bool("orbax_copy", True, "also write the params as orbax under OUT/params")
flags.DEFINE_bool("progress", True, "progress bar")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from jaxscape.studies import chat_data, finetune, lora, train_step
  if not FLAGS.data or not FLAGS.out:
    raise common.UserError("--data and --out are required")
  try:
    buckets = tuple(int(b) for b in FLAGS.buckets)
  except ValueError:
    raise common.UserError(f"--buckets must be integers, got {FLAGS.buckets}") from None
  if FLAGS.lora_rank < 0:
    raise common.UserError(f"--lora_rank must be >= 0, got {FLAGS.lora_rank}")
  tc = train_step.TrainConfig(num_steps=FLAGS.steps, batch_size=FLAGS.batch_size, micro_batches=FLAGS.micro_batches,
                              buckets=buckets, learning_rate=FLAGS.learning_rate, warmup_steps=FLAGS.warmup_steps,
                              weight_decay=FLAGS.weight_decay, seed=FLAGS.seed)
  records = chat_data.load_chat_records(FLAGS.data)
  info = finetune.run_finetune(
      FLAGS.model, records, tc, out_dir=FLAGS.out, lora_rank=FLAGS.lora_rank, lora_alpha=FLAGS.lora_alpha,
      lora_targets=tuple(FLAGS.lora_targets or lora.DEFAULT_LORA_TARGETS),
      checkpoint_every=FLAGS.checkpoint_every, resume=FLAGS.resume, overwrite=FLAGS.overwrite,
      orbax_copy=FLAGS.orbax_copy, progress=FLAGS.progress,
      extra_info={"data": FLAGS.data, "command": "python -m experiments.finetune " + " ".join(sys.argv[1:]),
                  "flags": FLAGS.flags_into_string()})
  kind = f"LoRA rank {FLAGS.lora_rank}" if FLAGS.lora_rank else "full"
  resumed = f", resumed at step {info['resumed_from']}" if info["resumed_from"] else ""
  print(f"finetuned {FLAGS.model} ({kind}, {info['trainable_params']:,} trainable params) on {info['examples']} "
        f"chats for {info['steps']} steps in {info['seconds']:.0f}s{resumed}: loss {info['loss'][0]:.4f} -> "
        f"{info['final_loss']:.4f} -> {info['out_dir']}")


if __name__ == "__main__":
  common.run(main)
