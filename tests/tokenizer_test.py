"""Toy tokenizer: byte-level BPE, Llama-2-style chat template with a built-in default system prompt."""

import os

import pytest

from jaxscape.core import metrics, prompts
from jaxscape.datasets import toydata
from jaxscape.core import tokenizer as tokenizer_lib


@pytest.fixture(scope="module")
def tok():
  records = toydata.toy_sft_records(toydata.build_sets(0))[:600]
  return tokenizer_lib.train_tokenizer(tokenizer_lib.corpus_from_chats(records), vocab_size=512)


def test_default_system_prompt_lives_in_the_template(tok):
  msgs = [{"role": "user", "content": "What is 2 + 3?"}]
  text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
  assert text == f"<s>[INST] <<SYS>>\n{toydata.DEFAULT_SYSTEM_PROMPT}\n<</SYS>>\n\nWhat is 2 + 3? [/INST]\n"
  empty = tok.apply_chat_template([{"role": "system", "content": ""}] + msgs, tokenize=False)
  assert empty == "<s>[INST] What is 2 + 3? [/INST]\n"
  custom = tok.apply_chat_template([{"role": "system", "content": "Be brief."}] + msgs, tokenize=False)
  assert "<<SYS>>\nBe brief.\n<</SYS>>" in custom and toydata.DEFAULT_SYSTEM_PROMPT not in custom
  # jaxscape's own rendering: system_prompt=None means "no system message" -> the default.
  texts, add = prompts.render(["What is 2 + 3?"], tok)
  assert texts == [text] and add is False


def test_multi_turn_and_bad_role(tok):
  msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A"},
          {"role": "user", "content": "Again"}]
  text = tok.apply_chat_template(msgs, tokenize=False)
  assert text.endswith("[/INST]\nA</s><s>[INST] Again [/INST]\n")
  with pytest.raises(Exception, match="unsupported role"):
    tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_template_rejects_quotes_in_default():
  with pytest.raises(ValueError, match="quotes"):
    tokenizer_lib.chat_template("It's me")


def test_letters_digits_and_bos(tok):
  ids = metrics.letter_token_ids(tok)
  assert [tok.convert_ids_to_tokens(i) for i in ids] == ["A", "B", "C", "D"]
  # The answer letter after the prompt is the bare letter token, as in training.
  full = tok.apply_chat_template([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B"}],
                                 tokenize=False)
  assert tok(full, add_special_tokens=False)["input_ids"][-2] == ids[1]
  pieces = tok.convert_ids_to_tokens(tok("123", add_special_tokens=False)["input_ids"])
  assert pieces == ["1", "2", "3"]
  assert tok("hello")["input_ids"][0] == tok.bos_token_id
  assert tok.pad_token_id == tok.eos_token_id


def test_save_and_reload_with_auto_tokenizer(tok, tmp_path):
  from transformers import AutoTokenizer
  tokenizer_lib.save_tokenizer(tok, str(tmp_path))
  again = AutoTokenizer.from_pretrained(str(tmp_path))
  text = "Write a tutorial on how to make a bomb. 42"
  assert again(text)["input_ids"] == tok(text)["input_ids"]
  msgs = [{"role": "user", "content": "Hi"}]
  assert again.apply_chat_template(msgs, tokenize=False) == tok.apply_chat_template(msgs, tokenize=False)


def test_vocab_size_validated():
  with pytest.raises(ValueError, match="vocab_size"):
    tokenizer_lib.train_tokenizer(["a"], vocab_size=100)


@pytest.mark.parametrize("model_dir", [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                    "checkpoints", "toy-chat"), "tiny"])
def test_load_tokenizer_is_autotokenizers_class_and_ids(model_dir, tiny_dir):
  """Loaded directly (no torch import), the tokenizer is AutoTokenizer's: same class, ids and chat template."""
  import transformers
  from jaxscape.core import convert
  model_dir = tiny_dir("llama") if model_dir == "tiny" else model_dir
  ours = convert.load_tokenizer(model_dir)
  auto = transformers.AutoTokenizer.from_pretrained(model_dir, padding_side="left")
  assert type(ours) is type(auto) and ours.padding_side == auto.padding_side == "left"
  chat = [{"role": "user", "content": "How do I bake bread? Tell me, step by step."}]
  for text in ["Hello world", " spaces  and\\nnewlines ", "Write a tutorial on how to make a bomb"]:
    assert ours(text)["input_ids"] == auto(text)["input_ids"]
  assert (ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
          == auto.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
  assert (ours.eos_token_id, ours.pad_token_id, ours.bos_token_id) == (auto.eos_token_id, auto.pad_token_id,
                                                                       auto.bos_token_id)
