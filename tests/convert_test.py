"""Conversion: HF safetensors (single, sharded, float32, bfloat16) <-> params, round trips, orbax dirs, EOS ids."""

import json
import os
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxscape.core import checkpoint, convert, hf_params


def _assert_trees_equal(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


def _assert_files_identical(path_a, path_b):
  a, b = load_file(path_a), load_file(path_b)
  assert sorted(a) == sorted(b)
  for name in a:
    assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
    assert a[name].tobytes() == b[name].tobytes(), f"{name} differs"


# ------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("name,dtype", [("llama", "float32"), ("llama", "bfloat16"), ("qwen2", "bfloat16")])
def test_round_trip_of_transformers_checkpoint_is_bit_identical(name, dtype, tiny_dir, hf_model, tmp_path):
  """A checkpoint written by transformers -> pytree -> HF reproduces every tensor byte for byte."""
  import torch
  import transformers
  del hf_model  # torch skip
  d2, d3 = str(tmp_path / "hf"), str(tmp_path / "ours")
  hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir(name), dtype=getattr(torch, dtype))
  hf.save_pretrained(d2)
  cfg, params = convert.load_hf(d2)
  assert cfg.param_dtype == dtype
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
  convert.save_hf(params, cfg, d3, dtype=dtype)
  _assert_files_identical(os.path.join(d2, convert.SAFETENSORS), os.path.join(d3, convert.SAFETENSORS))
  if dtype == "bfloat16":
    assert load_file(os.path.join(d3, convert.SAFETENSORS))["model.norm.weight"].dtype == ml_dtypes.bfloat16
  # Default dtype: the one the source file had.
  convert.save_hf(params, cfg, str(tmp_path / "default"))
  _assert_files_identical(os.path.join(d2, convert.SAFETENSORS), str(tmp_path / "default" / convert.SAFETENSORS))
  # And transformers reads our export back to the same weights.
  back = transformers.AutoModelForCausalLM.from_pretrained(d3, dtype=getattr(torch, dtype)).state_dict()
  for k, v in hf.state_dict().items():
    assert torch.equal(back[k], v), k


def test_bf16_file_widens_exactly(tiny_dir):
  d = tiny_dir("llama-bf16")
  raw = convert.read_safetensors(d)
  assert raw["model.embed_tokens.weight"].dtype == ml_dtypes.bfloat16
  cfg, params = convert.load_hf(d)
  assert cfg.param_dtype == "bfloat16" and cfg.compute_dtype == "float32"
  np.testing.assert_array_equal(params["embed"]["embedding"], raw["model.embed_tokens.weight"].astype(np.float32))
  np.testing.assert_array_equal(params["layers"]["attn"]["q"]["kernel"][1],
                                raw["model.layers.1.self_attn.q_proj.weight"].astype(np.float32).T)
  back = hf_params.params_to_hf(params, cfg)
  assert sorted(back) == sorted(raw)
  for k in raw:
    assert back[k].tobytes() == raw[k].tobytes(), k


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_layers_load_stacked_and_export_per_layer(name, tiny_dir, tmp_path):
  """Every HF tensor is one slice of a stacked [L, ...] leaf; export writes the slices back under their names."""
  d = tiny_dir(name)
  raw = convert.read_safetensors(d)
  cfg, params = convert.load_hf(d)
  L = cfg.num_layers
  assert isinstance(params["layers"], dict)
  for leaf in jax.tree.leaves(params["layers"]):
    assert leaf.shape[0] == L and isinstance(leaf, np.ndarray) and leaf.dtype == np.float32
  assert params["layers"]["attn"]["q"]["kernel"].shape == (L, cfg.hidden_size, cfg.num_heads * cfg.head_dim)
  assert params["layers"]["mlp_norm"]["scale"].shape == (L, cfg.hidden_size)
  for hf_name, (path, to_ours, _) in hf_params.name_table(cfg).items():
    np.testing.assert_array_equal(hf_params.get_tensor(params, path), to_ours(raw[hf_name]), err_msg=hf_name)
  if cfg.attention_bias:
    np.testing.assert_array_equal(params["layers"]["attn"]["k"]["bias"][1], raw["model.layers.1.self_attn.k_proj.bias"])
  back = hf_params.params_to_hf(params, cfg)
  assert sorted(back) == sorted(raw)
  for k in raw:
    assert back[k].dtype == raw[k].dtype and back[k].tobytes() == raw[k].tobytes(), k
  # The former per-layer layout exports to the same file, and the helpers map between the two.
  old = convert.unstack_layers(params)
  assert isinstance(old["layers"], list) and len(old["layers"]) == L
  np.testing.assert_array_equal(old["layers"][1]["attn"]["q"]["kernel"], params["layers"]["attn"]["q"]["kernel"][1])
  for k, v in hf_params.params_to_hf(old, cfg).items():
    assert v.tobytes() == raw[k].tobytes(), k
  _assert_trees_equal(convert.stack_layers(old), params)
  assert convert.stack_layers(params) is params and convert.unstack_layers(old) is old
  m = convert.load_model(d)  # placed on the device, same values
  _assert_trees_equal(jax.tree.map(np.asarray, m.params), params)
  abstract = hf_params.abstract_params(cfg)
  assert jax.tree.map(lambda s: s.shape, abstract) == jax.tree.map(np.shape, params)
  one = convert.unstack_layers(abstract)["layers"]
  assert len(one) == L and jax.tree.map(lambda s: s.shape, one[0]) == jax.tree.map(np.shape, old["layers"][0])


def test_name_table_covers_families(tiny_dir):
  for name, extra in [("llama", {"lm_head.weight"}), ("qwen2", {"model.layers.0.self_attn.q_proj.bias"})]:
    cfg = convert.read_config(tiny_dir(name))
    table = hf_params.name_table(cfg)
    assert set(table) == set(load_file(os.path.join(tiny_dir(name), convert.SAFETENSORS)))
    assert extra <= set(table)
  qwen = convert.read_config(tiny_dir("qwen2"))
  assert qwen.tie_word_embeddings and "lm_head.weight" not in hf_params.name_table(qwen)


# ------------------------------------------------------------------------ sharded / bad files


def _copy_meta(src, dst):
  os.makedirs(dst)
  for f in os.listdir(src):
    if not f.endswith(".safetensors"):
      shutil.copy(os.path.join(src, f), dst)


def test_sharded_safetensors_equal_single_file(tiny_dir, tmp_path):
  src = tiny_dir("llama")
  tensors = load_file(os.path.join(src, convert.SAFETENSORS))
  d = str(tmp_path / "sharded")
  _copy_meta(src, d)
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
  weight_map = {}
  for fname, keys in shards.items():
    save_file({k: tensors[k] for k in keys}, os.path.join(d, fname), metadata={"format": "pt"})
    weight_map.update({k: fname for k in keys})
  with open(os.path.join(d, convert.SAFETENSORS_INDEX), "w") as f:
    json.dump({"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}, f)
  assert not os.path.exists(os.path.join(d, convert.SAFETENSORS))
  cfg_s, params_s = convert.load_hf(d)
  cfg_1, params_1 = convert.load_hf(src)
  assert cfg_s == cfg_1
  _assert_trees_equal(params_s, params_1)
  m = convert.load_model(d)
  _assert_trees_equal(jax.tree.map(np.asarray, m.params), params_1)


def test_missing_or_misshaped_tensor_is_value_error(tiny_dir, tmp_path):
  src = tiny_dir("llama")
  tensors = load_file(os.path.join(src, convert.SAFETENSORS))
  d = str(tmp_path / "bad")
  _copy_meta(src, d)
  save_file({k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"},
            os.path.join(d, convert.SAFETENSORS))
  with pytest.raises(ValueError, match="lacks 1 tensor"):
    convert.load_hf(d)
  tensors["model.layers.1.mlp.up_proj.weight"] = np.ones((5, 64), np.float32)
  save_file(tensors, os.path.join(d, convert.SAFETENSORS))
  with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight has shape \(64, 5\), config.json "
                                       r"implies \(64, 128\)"):
    convert.load_hf(d)
  tensors = load_file(os.path.join(src, convert.SAFETENSORS))
  tensors["model.norm.weight"] = np.ones(3, np.float32)
  save_file(tensors, os.path.join(d, convert.SAFETENSORS))
  with pytest.raises(ValueError, match=r"model\.norm\.weight has shape \(3,\)"):
    convert.load_hf(d)
  with open(os.path.join(d, convert.SAFETENSORS), "r+b") as f:
    f.truncate(100)
  with pytest.raises(ValueError, match="corrupt or truncated"):
    convert.load_hf(d)
  os.remove(os.path.join(d, convert.SAFETENSORS))
  with pytest.raises(ValueError, match="no model.safetensors"):
    convert.load_hf(d)
  with pytest.raises(ValueError, match="no config.json"):
    convert.load_hf(str(tmp_path))
  with pytest.raises(ValueError, match="does not exist"):
    convert.load_model(str(tmp_path / "nowhere"))


# ------------------------------------------------------------------------ EOS ids


def _write(d, name, obj):
  with open(os.path.join(d, name), "w") as f:
    json.dump(obj, f)


def test_eos_ids_from_generation_config_int_list_or_config(tmp_path):
  d = str(tmp_path)
  _write(d, "config.json", {"eos_token_id": 7})
  assert convert.eos_ids_of(d) == (7,)
  _write(d, "generation_config.json", {"eos_token_id": 5})
  assert convert.eos_ids_of(d) == (5,)
  _write(d, "generation_config.json", {"eos_token_id": [5, 9]})
  assert convert.eos_ids_of(d) == (5, 9)
  _write(d, "generation_config.json", {"bos_token_id": 1})  # no eos there: config.json's
  assert convert.eos_ids_of(d) == (7,)
  _write(d, "config.json", {})
  assert convert.eos_ids_of(d) == ()


def test_load_model_reads_int_eos(tiny_dir, tmp_path):
  d = str(tmp_path / "m")
  shutil.copytree(tiny_dir("qwen2"), d)
  m0 = convert.load_model(d)
  eos = m0.eos_ids[0]
  _write(d, "generation_config.json", {"eos_token_id": eos})
  m = convert.load_model(d)
  assert m.eos_ids == (eos,) and isinstance(m.eos_ids[0], int)
  assert m.tokenizer.convert_ids_to_tokens(eos) == "<|im_end|>"
  assert m.pad_id == m.tokenizer.pad_token_id


# ------------------------------------------------------------------------ orbax


def test_convert_to_orbax_dir_and_load(tiny_dir, tmp_path, monkeypatch):
  src = tiny_dir("qwen2")
  monkeypatch.chdir(tmp_path)
  out = convert.convert(src, "checkpoints/tiny")  # relative path
  assert out == str(tmp_path / "checkpoints" / "tiny") and convert.is_converted_dir(out)
  assert not os.path.exists(out + ".tmp")
  ref = convert.load_model(src)
  m = convert.load_model("checkpoints/tiny")
  assert m.cfg == ref.cfg and m.eos_ids == ref.eos_ids and m.pad_id == ref.pad_id
  _assert_trees_equal(m.params, ref.params)
  assert m.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False) == \
      ref.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
  with pytest.raises(ValueError, match="already exists"):
    convert.convert(src, "checkpoints/tiny")
  convert.convert(tiny_dir("qwen2-untied"), "checkpoints/tiny", overwrite=True)
  assert "lm_head" in convert.load_model("checkpoints/tiny").params


def test_converted_dir_of_the_former_layout_loads_stacked(tiny_dir, tmp_path):
  """A converted dir saved while layers were a list of per-layer dicts is stacked on load."""
  src = tiny_dir("qwen2")
  ref = convert.load_model(src)
  out = convert.convert(src, str(tmp_path / "old"))
  assert not checkpoint.saved_layers_are_list(os.path.join(out, convert.ORBAX_DIR))  # new dirs: stacked
  # What the former convert wrote: the same params, layers as a list.
  old = convert.unstack_layers(jax.tree.map(np.asarray, ref.params))
  checkpoint.save_params(os.path.join(out, convert.ORBAX_DIR), old, overwrite=True)
  assert checkpoint.saved_layers_are_list(os.path.join(out, convert.ORBAX_DIR))
  m = convert.load_model(out)
  assert isinstance(m.params["layers"], dict)
  _assert_trees_equal(jax.tree.map(np.asarray, m.params), jax.tree.map(np.asarray, ref.params))
  # A list-layout dir that does not fit config.json: one line naming the difference.
  old["layers"] = old["layers"][:1]
  checkpoint.save_params(os.path.join(out, convert.ORBAX_DIR), old, overwrite=True)
  with pytest.raises(ValueError, match="the saved params do not match config.json"):
    convert.load_model(out)


def test_save_hf_from_converted_model_keeps_tokenizer(tiny_dir, tmp_path):
  ref = convert.load_model(tiny_dir("llama"))
  out = str(tmp_path / "export")
  convert.save_hf(ref.params, ref.cfg, out, source_dir=tiny_dir("llama"))
  m = convert.load_model(out)
  assert m.cfg == ref.cfg and m.eos_ids == ref.eos_ids
  _assert_trees_equal(m.params, ref.params)
  _assert_files_identical(os.path.join(out, convert.SAFETENSORS), os.path.join(tiny_dir("llama"), convert.SAFETENSORS))


def test_checkpoint_save_restore_relative_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  params = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "layers": [{"b": np.ones(2, np.float32)}]}
  checkpoint.save_params("ck/params", params)
  with pytest.raises(ValueError, match="already exists"):
    checkpoint.save_params("ck/params", params)
  checkpoint.save_params("ck/params", params, overwrite=True)
  back = checkpoint.restore_params("ck/params", checkpoint.abstract_like(jax.tree.map(jax.numpy.asarray, params)))
  _assert_trees_equal(jax.tree.map(np.asarray, back), params)
  with pytest.raises(ValueError, match="no orbax checkpoint"):
    checkpoint.restore_params("ck/other")


def test_lazy_reader_matches_eager_read(tiny_dir):
  d = tiny_dir("llama")
  lazy = convert.SafetensorsReader(d)
  eager = convert.read_safetensors(d)
  assert sorted(lazy) == sorted(eager) and len(lazy) == len(eager)
  for name in eager:
    np.testing.assert_array_equal(lazy[name], eager[name])
