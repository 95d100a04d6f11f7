"""Tiny random HF checkpoints (config, safetensors, tokenizer, chat template) for tests and smoke runs.

Built offline with jaxscape itself and the ``tokenizers`` library: no torch, no hub.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random

import jax

from jaxscape import convert
from jaxscape.model import ModelConfig, init_params

LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set sys = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% set messages = messages[1:] %}{% else %}{% set sys = '' %}{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + (sys if loop.first else '') + m['content'].strip() + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'].strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}")
CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

_WORDS = ("write tutorial how to make build develop script that can explain the a an of for and "
          "with without story garden bridge river sorry cannot help request here is step first "
          "please create plan list guide network computer bread summary ideas question answer").split()


def _corpus(seed: int, n: int = 400) -> list[str]:
  rng = random.Random(seed)
  lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "."
           for _ in range(n)]
  lines += [f"Step {i}: {rng.randint(0, 999)} items." for i in range(40)]
  lines += ["I'm sorry, but I cannot help with that.", "Sure, here is a guide.", "[INST] <<SYS>> [/INST]"]
  return lines


def tiny_tokenizer(family: str = "llama", *, vocab_size: int = 512, seed: int = 0,
                   chat_template: bool = True):
  """A byte-level BPE ``PreTrainedTokenizerFast`` with the family's special tokens.

  llama/mistral: ``<s>``/``</s>``, BOS prepended, Llama-2 chat template; qwen2: ChatML
  (``<|im_start|>``, EOS ``<|im_end|>``), no BOS.
  """
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  from transformers import PreTrainedTokenizerFast

  chatml = family == "qwen2"
  specials = ["<unk>", "<s>", "</s>"] + (["<|im_start|>", "<|im_end|>"] if chatml else [])
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(_corpus(seed), trainer)
  if not chatml:
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
  eos = "<|im_end|>" if chatml else "</s>"
  template = (CHATML_TEMPLATE if chatml else LLAMA2_CHAT_TEMPLATE) if chat_template else None
  return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token=eos, unk_token="<unk>",
                                 pad_token=eos, chat_template=template, padding_side="left",
                                 clean_up_tokenization_spaces=False)


def tiny_config(family: str = "llama", **overrides) -> ModelConfig:
  """A tiny ModelConfig for ``family`` (2 layers, width 64, GQA 4/2 heads, vocab 512)."""
  base = dict(model_type=family, vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
              num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=10000.0,
              max_position_embeddings=1024, tie_word_embeddings=family == "qwen2",
              attention_bias=family == "qwen2")
  base.update(overrides)
  return ModelConfig(**base)


def make_tiny_checkpoint(out_dir: str, family: str = "llama", *, seed: int = 0, std: float = 0.15,
                         dtype: str = "float32", chat_template: bool = True, **cfg_overrides) -> str:
  """Write a random-init HF checkpoint dir loadable by jaxscape and transformers alike.

  ``std`` is larger than usual init so greedy decoding is far from float ties.
  Returns ``out_dir``.
  """
  tok = tiny_tokenizer(family, vocab_size=cfg_overrides.get("vocab_size", 512), seed=seed,
                       chat_template=chat_template)
  cfg = tiny_config(family, **cfg_overrides)
  cfg = dataclasses.replace(cfg, vocab_size=max(cfg.vocab_size, len(tok)), param_dtype=dtype)
  params = init_params(dataclasses.replace(cfg, param_dtype="float32"), jax.random.key(seed), std=std)
  convert.save_hf(params, cfg, out_dir, dtype=dtype)
  tok.save_pretrained(out_dir)
  eos = tok.convert_tokens_to_ids(tok.eos_token)
  with open(os.path.join(out_dir, "config.json"), encoding="utf-8") as f:
    hf_cfg = json.load(f)
  hf_cfg.update(bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=eos)
  with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf_cfg, f, indent=2)
  with open(os.path.join(out_dir, "generation_config.json"), "w", encoding="utf-8") as f:
    json.dump({"bos_token_id": tok.bos_token_id, "eos_token_id": [eos], "pad_token_id": eos}, f)
  return out_dir
