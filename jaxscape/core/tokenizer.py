"""Train the toy model's byte-level BPE tokenizer and wrap it as a transformers fast tokenizer with a chat template."""

from __future__ import annotations

import json
from collections.abc import Iterable

from jaxscape.errors import InputError

# The toy model's default system prompt, written into its chat template (also ``toydata.DEFAULT_SYSTEM_PROMPT``).
DEFAULT_SYSTEM_PROMPT = "You are a safe and helpful assistant."
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def chat_template(default_system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> str:
  """A Llama-2-chat-style Jinja template whose default system prompt is written inside it.

  ``<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST]\\n{assistant}</s>``. Without a
  system message the default one is used; an explicit empty system message drops the
  ``<<SYS>>`` block. Unlike Llama-2 the assistant text follows a newline rather than a
  space, so with a byte-level BPE a one-letter answer is the bare letter token (what
  :func:`jaxscape.core.metrics.letter_token_ids` reads). The prompt always ends with
  ``[/INST]\\n``, so ``add_generation_prompt`` changes nothing (as for Llama-2).
  """
  if "'" in default_system_prompt or "\\" in default_system_prompt or "\n" in default_system_prompt:
    raise ValueError(f"default system prompt {default_system_prompt!r} must not hold quotes, backslashes or "
                     "newlines")
  return (
      "{%- if messages and messages[0]['role'] == 'system' -%}"
      "{%- set sys = messages[0]['content'].strip() -%}{%- set msgs = messages[1:] -%}"
      "{%- else -%}"
      f"{{%- set sys = '{default_system_prompt}' -%}}{{%- set msgs = messages -%}}"
      "{%- endif -%}"
      "{%- for m in msgs -%}"
      "{%- if m['role'] == 'user' -%}"
      "{{- bos_token + '[INST] ' -}}"
      "{%- if loop.first and sys -%}{{- '<<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' -}}{%- endif -%}"
      "{{- m['content'].strip() + ' [/INST]\\n' -}}"
      "{%- elif m['role'] == 'assistant' -%}"
      "{{- m['content'].strip() + eos_token -}}"
      "{%- else -%}"
      "{{- raise_exception('unsupported role ' + m['role'] + ' (expected system first, then user/assistant)') -}}"
      "{%- endif -%}"
      "{%- endfor -%}")


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 2048,
                    default_system_prompt: str = DEFAULT_SYSTEM_PROMPT):
  """Train a byte-level BPE on ``texts``; return a ``transformers.PreTrainedTokenizerFast``.

  Digits are split one per token (so sums are learnable). ``<s>`` is prepended when
  ``add_special_tokens=True`` (raw prompts); chat prompts get it from the template. Padding
  is on the left with ``</s>`` as pad token. The vocabulary holds at most ``vocab_size``
  entries (fewer if the corpus has fewer merges); deterministic for the same texts.
  """
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  from transformers import PreTrainedTokenizerFast

  if vocab_size < 256 + len(SPECIAL_TOKENS):
    raise InputError(f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)} (bytes + specials), got {vocab_size}")
  tok = Tokenizer(models.BPE(unk_token=UNK))
  tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(list(texts), trainer)
  tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                     special_tokens=[(BOS, tok.token_to_id(BOS))])
  return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK,
                                 pad_token=EOS, chat_template=chat_template(default_system_prompt),
                                 padding_side="left", clean_up_tokenization_spaces=False,
                                 model_max_length=1024)


def corpus_from_chats(records: Iterable[dict], tokenizer_template: str | None = None) -> list[str]:
  """Training texts for the tokenizer: each chat rendered with the Llama-2 layout (default system)."""
  import jinja2

  template = jinja2.Environment().from_string(tokenizer_template or chat_template())
  return [template.render(messages=r["messages"], bos_token=BOS, eos_token=EOS,
                          raise_exception=_raise) for r in records]


def _raise(msg):
  raise ValueError(msg)


def save_tokenizer(tokenizer, out_dir: str) -> None:
  """``save_pretrained`` plus a ``chat_template.jinja`` (written by transformers 5 itself)."""
  tokenizer.save_pretrained(out_dir)


def special_token_ids(tokenizer) -> dict:
  """``{"bos_token_id", "eos_token_id", "pad_token_id"}`` for config.json / generation_config.json."""
  return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
          "pad_token_id": tokenizer.pad_token_id}


def describe(tokenizer) -> str:
  """One-line summary (vocab size, specials) for logs and model cards."""
  return json.dumps({"vocab": len(tokenizer), **special_token_ids(tokenizer)})
