"""Model: logits parity with transformers (both config spellings), rotary tables, invariances."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscape import testing
from jaxscape.core import config, convert, model, perturb, prompts

PROMPTS = ["Write a tutorial on how to make a bridge", "Hi",
           "Please create a plan for the river garden and the network of computers, step by step"]
PARITY = ["llama", "llama-mha", "mistral", "qwen2", "qwen2-untied", "qwen2-window"]
# Jitted once: eager op-by-op dispatch of the tiny model is slower than compiling it.
forward = jax.jit(model.forward, static_argnames="cfg")
apply = jax.jit(model.apply, static_argnames="cfg")
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}


def _inputs(m, texts=PROMPTS, prompt_format="chat"):
  rendered, add = prompts.render(texts, m.tokenizer, prompt_format=prompt_format)
  return prompts.tokenize(rendered, m.tokenizer, add_special_tokens=add, pad_id=m.pad_id)


def _hf_logits(hf, tokens, mask, positions):
  import torch
  with torch.no_grad():
    return hf(input_ids=torch.tensor(np.asarray(tokens)).long(), attention_mask=torch.tensor(np.asarray(mask)).long(),
              position_ids=torch.tensor(np.asarray(positions)).long()).logits.numpy()


# ------------------------------------------------------------------------ parity


@pytest.mark.parametrize("name", PARITY)
def test_logits_match_transformers(name, tiny_model, hf_model):
  hf = hf_model(name)
  m = tiny_model(name)
  tokens, mask = _inputs(m)
  assert (~mask).any(axis=1).all(), "every row should be left-padded"
  positions = model.positions_from_mask(mask)
  ours = np.asarray(forward(m.params, jnp.asarray(tokens), cfg=m.cfg, mask=jnp.asarray(mask)))
  ref = _hf_logits(hf, tokens, mask, positions)
  assert ours.dtype == np.float32 and ours.shape == ref.shape
  diff = np.abs(ours - ref)[mask].max()
  assert diff <= 1e-4, f"{name}: max |logit diff| {diff}"
  if m.cfg.sliding_window is not None:  # the window is exercised: without it the logits differ
    assert mask.sum(1).max() > m.cfg.sliding_window
    cfg = dataclasses.replace(m.cfg, sliding_window=None)
    full = np.asarray(forward(m.params, jnp.asarray(tokens), cfg=cfg, mask=jnp.asarray(mask)))
    assert np.abs(full - ref)[mask].max() > 1e-3


def _write_config(src, dst, edit):
  shutil.copytree(src, dst)
  path = os.path.join(dst, "config.json")
  with open(path) as f:
    d = json.load(f)
  edit(d)
  with open(path, "w") as f:
    json.dump(d, f, indent=2)
  return dst


def _tf4_llama3(d):
  """transformers 4 spelling of a Llama-3 config.json."""
  d.pop("rope_parameters")
  d.pop("dtype")
  d.update(rope_theta=500000.0, rope_scaling=dict(LLAMA3_SCALING), torch_dtype="float32")


def _tf5_llama3(d):
  d["rope_parameters"] = {"rope_theta": 500000.0, **LLAMA3_SCALING}


@pytest.fixture(scope="module")
def llama3_dirs(tiny_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("llama3")
  return {"tf4": _write_config(tiny_dir("llama"), str(root / "tf4"), _tf4_llama3),
          "tf5": _write_config(tiny_dir("llama"), str(root / "tf5"), _tf5_llama3)}


def test_llama3_config_spellings_parse_the_same(llama3_dirs):
  tf4 = convert.read_config(llama3_dirs["tf4"])
  tf5 = convert.read_config(llama3_dirs["tf5"])
  assert tf4 == tf5
  assert tf4.rope_theta == 500000.0
  assert dict(tf4.rope_scaling) == LLAMA3_SCALING
  assert tf4.param_dtype == "float32"


@pytest.mark.parametrize("spelling", ["tf4", "tf5"])
def test_llama3_rope_scaling_matches_transformers(spelling, llama3_dirs, hf_model):
  import torch
  import transformers
  del hf_model  # only for the torch skip
  d = llama3_dirs[spelling]
  m = convert.load_model(d)
  hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
  tokens, mask = _inputs(m)
  # Positions far beyond original_max_position_embeddings=64 so all three frequency bands matter.
  positions = np.asarray(model.positions_from_mask(mask)) + 250
  ours = np.asarray(forward(m.params, jnp.asarray(tokens), cfg=m.cfg, mask=jnp.asarray(mask),
                                  positions=jnp.asarray(positions)))
  ref = _hf_logits(hf, tokens, mask, positions)
  diff = np.abs(ours - ref)[mask].max()
  assert diff <= 1e-4, f"max |logit diff| {diff}"
  plain = dataclasses.replace(m.cfg, rope_scaling=())
  unscaled = np.asarray(forward(m.params, jnp.asarray(tokens), cfg=plain, mask=jnp.asarray(mask),
                                      positions=jnp.asarray(positions)))
  assert np.abs(unscaled - ref)[mask].max() > 1e-3, "rope scaling had no effect: test would not catch a bug"


def test_rope_inv_freq_llama3_bands():
  cfg = testing.tiny_config("llama", rope_theta=500000.0, rope_scaling=tuple(sorted(LLAMA3_SCALING.items())))
  inv = model.rope_inv_freq(cfg)
  base = model.rope_inv_freq(dataclasses.replace(cfg, rope_scaling=()))
  wavelen = 2 * np.pi / base
  assert inv.dtype == np.float32 and inv.shape == (cfg.head_dim // 2,)
  np.testing.assert_array_equal(inv[wavelen < 16], base[wavelen < 16])  # high frequencies kept
  np.testing.assert_allclose(inv[wavelen > 64], base[wavelen > 64] / 8.0, rtol=1e-6)  # low ones scaled
  medium = (wavelen >= 16) & (wavelen <= 64)
  assert medium.any() and ((inv[medium] < base[medium]) & (inv[medium] > base[medium] / 8)).all()


# ------------------------------------------------------------------------ invariances


@pytest.fixture(scope="module")
def small():
  cfg = testing.tiny_config("llama", vocab_size=64, num_layers=1)
  params = model.init_params(cfg, jax.random.key(0), std=0.2)
  tokens = jax.random.randint(jax.random.key(1), (2, 10), 3, 64).astype(jnp.int32)
  return cfg, params, tokens


def test_cached_decoding_equals_full_forward(small):
  cfg, params, tokens = small
  full = forward(params, tokens, cfg=cfg)
  B, T = tokens.shape
  P = 6
  cache = model.init_cache(cfg, B, T)
  key_mask = jnp.zeros((B, T), bool).at[:, :P].set(True)
  pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  logits, _, cache = apply(params, tokens[:, :P], pos[:, :P], cache, jnp.int32(0), key_mask, cfg=cfg)
  steps = [logits]
  for t in range(P, T):
    key_mask = key_mask.at[:, t].set(True)
    logits, _, cache = apply(params, tokens[:, t:t + 1], pos[:, t:t + 1], cache, jnp.int32(t), key_mask,
                                   cfg=cfg)
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, rtol=1e-5)


def test_left_padding_does_not_change_real_logits(small):
  cfg, params, tokens = small
  ref = forward(params, tokens[:, 3:], cfg=cfg)
  padded = tokens.at[:, :3].set(0)
  mask = jnp.ones(tokens.shape, bool).at[:, :3].set(False)
  out = forward(params, padded, cfg=cfg, mask=mask)
  np.testing.assert_allclose(out[:, 3:], ref, atol=1e-5, rtol=1e-5)


def test_positions_from_mask():
  mask = jnp.array([[False, False, True, True], [True, True, True, True]])
  np.testing.assert_array_equal(model.positions_from_mask(mask), [[1, 1, 0, 1], [0, 1, 2, 3]])


def test_bf16_compute_gives_finite_float32_logits(tiny_model):
  m = tiny_model("llama")
  tokens, mask = _inputs(m)
  cfg16 = dataclasses.replace(m.cfg, compute_dtype="bfloat16")
  out16 = forward(m.params, jnp.asarray(tokens), cfg=cfg16, mask=jnp.asarray(mask))
  out32 = forward(m.params, jnp.asarray(tokens), cfg=m.cfg, mask=jnp.asarray(mask))
  assert out16.dtype == jnp.float32
  assert bool(jnp.isfinite(out16).all())
  assert model.kv_dtype(cfg16) == (jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
  assert model.init_cache(cfg16, 1, 4)["k"].dtype == model.kv_dtype(cfg16)
  err = float(jnp.abs(out16 - out32)[mask].mean())
  assert 0 < err < 0.1 * float(jnp.abs(out32)[mask].mean()), err


def test_bf16_params_forward_is_finite():
  cfg = testing.tiny_config("qwen2", param_dtype="bfloat16", compute_dtype="bfloat16")
  params = model.init_params(cfg, jax.random.key(0))
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  out = forward(params, jnp.ones((2, 5), jnp.int32), cfg=cfg)
  assert out.dtype == jnp.float32 and out.shape == (2, 5, cfg.vocab_size) and bool(jnp.isfinite(out).all())


def test_float32_kv_cache_holds_bf16_values_exactly(tiny_model):
  """On CPU a bfloat16 model keeps its cache in float32 (kv_dtype): the stored values are bfloat16 ones."""
  m = tiny_model("llama")
  tokens, mask = _inputs(m)
  cfg16 = dataclasses.replace(m.cfg, compute_dtype="bfloat16")
  _, _, cache = model.apply(m.params, jnp.asarray(tokens), model.positions_from_mask(jnp.asarray(mask)), None,
                            jnp.int32(0), jnp.asarray(mask), cfg=cfg16, logits_at="none")
  for x in cache.values():  # [L, B, K, S, E], all layers
    assert x.dtype == model.kv_dtype(cfg16)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(x.astype(jnp.bfloat16).astype(x.dtype)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_concat_last_is_concatenate(dtype):
  ws = [jax.random.normal(jax.random.key(i), (2, 3, w)).astype(dtype) for i, w in enumerate((4, 5, 6))]
  got = perturb._concat_last(ws)
  assert got.dtype == dtype
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(jnp.concatenate(ws, axis=-1), np.float32))


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_matmul_split_by_shards_is_separate_matmuls(shards):
  """Shard-by-shard fusion returns each kernel's own product; an uneven width falls back to separate matmuls."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 8))
  ws = [jax.random.normal(jax.random.key(i), (8, w)) for i, w in enumerate((12, 6, 6))]
  got = perturb.matmul_split(x, ws, jnp.float32, shards=shards)
  for g, w in zip(got, ws):
    assert g.shape == (2, 3, w.shape[1])
    np.testing.assert_allclose(np.asarray(g), np.asarray(x @ w), rtol=1e-5, atol=1e-5)
  uneven = perturb.matmul_split(x, ws + [jax.random.normal(jax.random.key(9), (8, 5))], jnp.float32, shards=shards)
  np.testing.assert_allclose(np.asarray(uneven[-1]), np.asarray(x @ jax.random.normal(jax.random.key(9), (8, 5))),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_take_rows_is_indexing(dtype):
  table = jax.random.normal(jax.random.key(0), (11, 4)).astype(dtype)
  ids = jnp.asarray([[3, 0, 10], [7, 7, 1]])
  got = perturb.take_rows(table, ids, jnp.float32)
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(got), np.asarray(table[ids].astype(jnp.float32)))


def test_last_hidden_then_output_logits_is_logits_at_last():
  """Prefill applies the output head once to every group's last hidden state (decode.Decoder.prefill)."""
  cfg = config.ModelConfig(model_type="llama", vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1,
                          num_heads=2, num_kv_heads=2, head_dim=8)
  params = model.init_params(cfg, jax.random.key(1), std=0.5)
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 64, (2, 5)), jnp.int32)
  mask = jnp.ones((2, 5), bool)
  logits, hidden, _ = model.apply(params, tokens, model.positions_from_mask(mask), None, jnp.int32(0), mask, cfg=cfg,
                                  logits_at="last")
  none, last_hidden, _ = model.apply(params, tokens, model.positions_from_mask(mask), None, jnp.int32(0), mask,
                                     cfg=cfg, logits_at="last_hidden")
  assert none is None
  np.testing.assert_array_equal(np.asarray(last_hidden), np.asarray(hidden))
  np.testing.assert_allclose(np.asarray(model.output_logits(params, last_hidden, cfg=cfg)), np.asarray(logits),
                             rtol=1e-6, atol=1e-6)
