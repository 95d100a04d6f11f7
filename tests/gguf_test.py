"""GGUF input (jaxscape.core.gguf_io) on tiny files written like llama.cpp's: weights and tokenizer equal
transformers' own GGUF loading; bad files get one error line and exit 2."""

import json
import os
import shutil
import struct

import numpy as np
import pytest

from cli_test import _assert_one_line_error as _one_line_error, _run  # the entry-point runner
from jaxscape import testing
from jaxscape.core import convert, gguf_io, hf_params

TEXTS = ["Write a tutorial on how to make a bridge", "a b garden", "  Hi!\n\nStep 1: 42 items.", "Ünï 東京"]


def _transformers_gguf(path):
  """transformers' dequantized model (state dict, numpy) and tokenizer for a GGUF file."""
  import torch
  import transformers
  d, name = os.path.split(path)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      d, gguf_file=name, dtype=torch.float32, quantization_config=transformers.GgufConfig(dequantize=True))
  tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
  return {k: v.numpy() for k, v in hf.state_dict().items()}, tok


# K-quants as raw blocks (rows of 256: the MLP width), the others quantized by the gguf package.
CASES = {
    "llama": {"ffn_gate": "Q8_0", "ffn_down": "Q4_K", "ffn_up": "Q4_1", "attn_k": "Q5_0"},
    "mistral": {"ffn_down": "Q6_K", "attn_q": "Q4_0", "attn_v": "F16"},
    "qwen2": {"ffn_down": "Q5_K", "attn_q": "Q8_0", "ffn_up": "BF16"},
}


@pytest.mark.parametrize("family", list(CASES))
def test_weights_and_tokenizer_equal_transformers_gguf_loading(family, tmp_path):
  path = testing.make_tiny_gguf(str(tmp_path / f"{family}.gguf"), family, quant=CASES[family], intermediate_size=256,
                                seed=11)
  m = convert.load_model(path)
  assert m.cfg.model_type == family  # Mistral is stored as llama; its name tells
  ref_sd, ref_tok = _transformers_gguf(path)
  ours = hf_params.params_to_hf(m.params, m.cfg)
  assert set(ours) <= set(ref_sd)
  for name, value in ours.items():  # q/k un-permuted for llama/mistral, not for qwen2; dequantized alike
    np.testing.assert_array_equal(value, ref_sd[name], err_msg=name)
  for text in TEXTS:
    assert m.tokenizer(text)["input_ids"] == ref_tok(text)["input_ids"], text
  msgs = [{"role": "user", "content": TEXTS[0]}]
  assert (m.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
          == ref_tok.apply_chat_template(msgs, add_generation_prompt=True))
  assert m.eos_ids == (m.tokenizer.convert_tokens_to_ids(m.tokenizer.eos_token),)
  assert m.tokenizer.padding_side == "left"


def test_find_file_forms(tmp_path):
  os.makedirs(tmp_path / "one")
  path = testing.make_tiny_gguf(str(tmp_path / "one" / "m.gguf"))
  assert gguf_io.find_file(path) == path
  assert gguf_io.find_file(str(tmp_path / "one")) == path  # a dir holding exactly one
  os.makedirs(tmp_path / "hf")
  (tmp_path / "hf" / "config.json").write_text("{}")
  assert gguf_io.find_file(str(tmp_path / "hf")) is None  # an HF dir
  shutil.copy(path, tmp_path / "one" / "n.gguf")
  with pytest.raises(ValueError, match="2 GGUF files"):
    gguf_io.find_file(str(tmp_path / "one"))
  with pytest.raises(ValueError, match="no installed package"):
    gguf_io.find_file("package:no_such_package_here")


# ------------------------------------------------------------------ bad input


def _truncated(tmp_path):
  path = testing.make_tiny_gguf(str(tmp_path / "full.gguf"))
  data = open(path, "rb").read()
  out = tmp_path / "truncated.gguf"
  out.write_bytes(data[: len(data) * 2 // 3])
  return str(out), ("corrupt or truncated",)


def _undequantizable(tmp_path):  # Q8_1 is a type the gguf package reads but cannot dequantize
  return testing.make_tiny_gguf(str(tmp_path / "q81.gguf"), quant={"ffn_up": "Q8_1"}), ("Q8_1", "cannot dequantize")


def _unknown_type(tmp_path):
  path = testing.make_tiny_gguf(str(tmp_path / "unknown.gguf"), quant={"ffn_up": "Q8_0"})
  data = bytearray(open(path, "rb").read())
  name = b"blk.0.ffn_up.weight"
  at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
  dims = struct.unpack_from("<I", data, at)[0]
  struct.pack_into("<I", data, at + 4 + 8 * dims, 199)  # the tensor's ggml type id
  open(path, "wb").write(bytes(data))
  return path, ("199", "GGML type")


def _gemma3(tmp_path):
  return testing.make_tiny_gguf(str(tmp_path / "gemma3.gguf"), architecture="gemma3"), ("gemma3", "unsupported")


@pytest.mark.parametrize("make", [_truncated, _undequantizable, _unknown_type, _gemma3])
def test_bad_gguf_is_one_line_error_and_leaves_outputs_alone(make, tmp_path):
  path, fragments = make(tmp_path)
  proc = _run("experiments.convert", f"--gguf={path}", f"--out={tmp_path / 'out'}")
  _one_line_error(proc, *fragments)
  assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "out.tmp")


def test_bad_gguf_model_leaves_a_results_dir_untouched(tmp_path):
  path, fragments = _gemma3(tmp_path)
  results = tmp_path / "results"
  results.mkdir()
  (results / "summary.json").write_text(json.dumps({"asr": [1.0]}))
  before = {p: (results / p).read_bytes() for p in os.listdir(results)}
  proc = _run("experiments.run_grid", f"--model={path}", f"--out={results}", "--steps=2", "--samples=2")
  _one_line_error(proc, *fragments)
  assert {p: (results / p).read_bytes() for p in os.listdir(results)} == before


def test_convert_gguf_to_hf_dir_loads_in_jaxscape_and_transformers(tmp_path):
  import torch
  import transformers
  path = testing.make_tiny_gguf(str(tmp_path / "m.gguf"), "qwen2", quant={"ffn_gate": "Q8_0"}, seed=3)
  out = tmp_path / "hf"
  proc = _run("experiments.convert", f"--gguf={path}", f"--out={out}", "--dtype=bfloat16")
  assert proc.returncode == 0, proc.stderr
  src, back = convert.load_model(path), convert.load_model(str(out))
  assert back.cfg.param_dtype == "bfloat16" and back.eos_ids == src.eos_ids and back.pad_id == src.pad_id
  for a, b in zip(jax_leaves(src.params), jax_leaves(back.params)):  # bf16 in the file: rounding only
    np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2)
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
  assert type(hf).__name__ == "Qwen2ForCausalLM"
  msgs = [{"role": "user", "content": "Hi"}]
  assert (back.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
          == src.tokenizer.apply_chat_template(msgs, add_generation_prompt=True))
  proc = _run("experiments.convert", f"--gguf={path}", f"--out={out}")
  _one_line_error(proc, "already exists")


def jax_leaves(tree):
  import jax
  return [np.asarray(x, np.float32) for x in jax.tree.leaves(tree)]
