"""Greedy decoding: token parity with transformers' generate, EOS handling, early exit, no retracing."""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxscape.core import decode, model, prompts

PROMPTS = ["Write a tutorial on how to make a bridge", "Hi",
           "Please create a plan for the river garden and the network of computers"]
NEW = 32
NEVER = 10**6  # an EOS id no model emits: decode all NEW tokens


def _inputs(m, texts=PROMPTS, prompt_format="chat", system_prompt=None, length=32):
  """Rendered texts, add_special_tokens, and left-padded [B, length] tokens and mask.

  One fixed length for chat and raw prompts, so each model compiles its decode program once.
  """
  rendered, add = prompts.render(texts, m.tokenizer, prompt_format=prompt_format, system_prompt=system_prompt)
  tokens, mask = prompts.tokenize(rendered, m.tokenizer, add_special_tokens=add, pad_id=m.pad_id, length=length)
  return rendered, add, tokens, mask


def _ours(m, tokens, mask, *, new=NEW, eos_ids=None, max_steps=None):
  gen = decode.greedy_generate(m.params, tokens, mask, np.int32(new if max_steps is None else max_steps),
                               np.int32(m.pad_id), cfg=m.cfg, max_new_tokens=new,
                               eos_ids=m.eos_ids if eos_ids is None else eos_ids)
  return np.asarray(gen.tokens), np.asarray(gen.lengths), np.asarray(gen.nonfinite)


def _hf_generate(hf, tokenizer, rendered, add, new=NEW, **kw):
  """transformers' greedy new tokens [B, <=new], tokenized by transformers itself (left padding)."""
  import torch
  enc = tokenizer(rendered, add_special_tokens=add, padding=True, return_tensors="pt")
  with torch.no_grad():
    out = hf.generate(**enc, do_sample=False, max_new_tokens=new, **kw)
  return out[:, enc["input_ids"].shape[1]:].numpy(), enc["attention_mask"].numpy()


@pytest.mark.parametrize("prompt_format", ["chat", "raw"])
@pytest.mark.parametrize("name", ["llama", "llama-mha", "mistral", "qwen2", "qwen2-untied"])
def test_greedy_matches_transformers(name, prompt_format, tiny_model, hf_model):
  hf = hf_model(name)
  m = tiny_model(name)
  rendered, add, tokens, mask = _inputs(m, prompt_format=prompt_format)
  ref, ref_mask = _hf_generate(hf, m.tokenizer, rendered, add)
  assert (ref_mask == 0).any(axis=1).sum() >= 2, "left padding should be exercised"
  np.testing.assert_array_equal(mask.sum(1), ref_mask.sum(1))  # same prompt tokens as transformers
  ours, lengths, nonfinite = _ours(m, tokens, mask)
  assert ours.shape == (len(PROMPTS), NEW) and not nonfinite.any()
  assert ref.shape[1] <= NEW and (ours[:, ref.shape[1]:] == m.pad_id).all()
  np.testing.assert_array_equal(ours[:, :ref.shape[1]], ref)


# ------------------------------------------------------------------------ EOS


def _pick_eos(tokens, row, min_step):
  """(token, step): the first step >= ``min_step`` where ``row`` emits a token it has not emitted
  before, so choosing that token as EOS stops the row right there."""
  step = next(s for s in range(min_step, tokens.shape[1]) if tokens[row, s] not in tokens[row, :s])
  return int(tokens[row, step]), step


def test_per_row_stop_at_eos(tiny_model):
  m = tiny_model("llama")
  _, _, tokens, mask = _inputs(m)
  free, _, _ = _ours(m, tokens, mask, eos_ids=(NEVER,))
  eos, step = _pick_eos(free, 0, 3)
  out, lengths, _ = _ours(m, tokens, mask, eos_ids=(eos,))
  for r in range(len(PROMPTS)):
    hits = np.flatnonzero(free[r] == eos)
    n = hits[0] + 1 if hits.size else NEW
    assert lengths[r] == n
    np.testing.assert_array_equal(out[r, :n], free[r, :n])  # up to and including EOS
    assert (out[r, n:] == m.pad_id).all()
  assert lengths[0] == step + 1 < NEW


def test_eos_list_in_generation_config_matches_transformers(tiny_dir, tiny_model, hf_model, tmp_path):
  """Stopping tokens from generation_config.json (a list): same tokens and same stop as transformers."""
  import torch
  import transformers
  del hf_model  # torch skip
  base = tiny_model("llama")
  rendered, add, tokens, mask = _inputs(base)
  free, _, _ = _ours(base, tokens, mask, eos_ids=(NEVER,))
  (eos0, step0), (eos2, step2) = _pick_eos(free, 0, 4), _pick_eos(free, 2, 6)
  eos = [eos0, eos2]
  d = str(tmp_path / "eos")
  shutil.copytree(tiny_dir("llama"), d)
  with open(os.path.join(d, "generation_config.json"), "w") as f:
    json.dump({"bos_token_id": 1, "eos_token_id": eos + [base.eos_ids[0]], "pad_token_id": base.pad_id}, f)
  from jaxscape.core import convert
  m = convert.load_model(d)
  assert m.eos_ids == tuple(eos + [base.eos_ids[0]])
  hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
  ref, _ = _hf_generate(hf, m.tokenizer, rendered, add)
  ours, lengths, _ = _ours(m, tokens, mask)
  stops = [next((k + 1 for k, t in enumerate(row) if t in eos), NEW) for row in free]
  np.testing.assert_array_equal(lengths, stops)
  assert stops[0] <= step0 + 1 and stops[2] <= step2 + 1
  np.testing.assert_array_equal(ours[:, :ref.shape[1]], ref)
  assert (ours[:, ref.shape[1]:] == m.pad_id).all()


def test_early_exit_when_all_rows_stopped(tiny_model, monkeypatch):
  """The while loop stops once every row has hit EOS: count model calls from inside the program."""
  m = tiny_model("llama")
  _, _, tokens, mask = _inputs(m)
  free, _, _ = _ours(m, tokens, mask, eos_ids=(NEVER,))
  eos = tuple(_pick_eos(free, r, step)[0] for r, step in enumerate((3, 5, 2)))  # every row stops early
  stops = [next(k + 1 for k, t in enumerate(row) if t in eos) for row in free]
  assert max(stops) < NEW
  calls = []
  real_apply = model.apply

  def counting_apply(*args, **kw):
    jax.debug.callback(lambda: calls.append(1))
    return real_apply(*args, **kw)

  monkeypatch.setattr(decode.model_lib, "apply", counting_apply)
  run = jax.jit(decode.Decoder(cfg=m.cfg, max_new_tokens=NEW, eos_ids=eos).generate)
  gen = jax.block_until_ready(run(m.params, tokens, mask, np.int32(NEW), np.int32(m.pad_id)))
  np.testing.assert_array_equal(gen.lengths, stops)
  # The prefill emits the first token, each loop step one more: max(stops) model calls, not NEW.
  assert len(calls) == max(stops)
  calls.clear()
  gen = jax.block_until_ready(run(m.params, tokens, mask, np.int32(2), np.int32(m.pad_id)))  # traced limit
  assert len(calls) == 2 and (np.asarray(gen.lengths) <= 2).all()


def test_max_steps_limits_tokens(tiny_model):
  m = tiny_model("llama")
  _, _, tokens, mask = _inputs(m)
  full, _, _ = _ours(m, tokens, mask)
  short, lengths, _ = _ours(m, tokens, mask, max_steps=5)
  assert (lengths <= 5).all()
  np.testing.assert_array_equal(short[:, :5], full[:, :5])
  assert (short[:, 5:] == m.pad_id).all()


def test_decode_text_cuts_at_first_eos(tiny_model):
  m = tiny_model("llama")
  tok = m.tokenizer
  ids = tok("Sure, here is a guide.", add_special_tokens=False)["input_ids"]
  eos = m.eos_ids[0]
  row = np.array(ids + [eos] + ids + [m.pad_id] * 3)
  assert decode.decode_text(tok, row, m.eos_ids) == "Sure, here is a guide."
  bos = tok.bos_token_id
  assert decode.decode_text(tok, np.array([bos] + ids), ()) == "Sure, here is a guide."  # specials skipped


# ------------------------------------------------------------------------ retracing


def test_same_bucket_does_not_recompile(tiny_model, monkeypatch):
  m = tiny_model("llama")
  # A config no other test uses, so the first call below must trace.
  cfg = dataclasses.replace(m.cfg, rms_norm_eps=1.1e-6)
  traces = []
  real = decode.Decoder.generate

  def counting(self, *args, **kw):
    traces.append(args[1].shape)
    return real(self, *args, **kw)

  monkeypatch.setattr(decode.Decoder, "generate", counting)

  def run(texts):
    _, _, tokens, mask = _inputs(m, texts=texts, length=None)
    gen = decode.greedy_generate(m.params, tokens, mask, np.int32(8), np.int32(m.pad_id), cfg=cfg,
                                 max_new_tokens=8, eos_ids=m.eos_ids)
    jax.block_until_ready(gen)
    return tokens.shape

  s1 = run(["Write a tutorial on how to make a bridge", "Hi"])
  size = decode.generate._cache_size()
  s2 = run(["Explain how a computer network works", "Create a list of ideas"])  # new prompts, same bucket
  assert s1 == s2, "prompts should land in the same length bucket"
  assert len(traces) == 1 and decode.generate._cache_size() == size
  s3 = run(["Please " + "write a story about the river and the garden " * 4, "Hi"])  # a longer bucket
  assert s3[1] > s1[1]
  assert len(traces) == 2 and decode.generate._cache_size() == size + 1
  s4 = run(["Please " + "write a story about the garden and the river " * 4, "Hello"])
  assert s4 == s3 and len(traces) == 2


def test_generate_texts_rejects_bad_max_new_tokens(tiny_model):
  # Batching in input order (last batch padded) vs transformers: cli_test runs --batch_size=2.
  with pytest.raises(ValueError, match="max_new_tokens"):
    decode.generate_texts(tiny_model("llama"), PROMPTS, max_new_tokens=0)


def test_sampling_draws_from_the_softmax_and_greedy_is_temperature_zero(tiny_model):
  """Temperature 1 samples are reproducible per key, differ between keys, and stay inside the vocabulary;
  a near-zero temperature gives the greedy tokens; sampling without a key is refused."""
  m = tiny_model("llama")
  _, _, tokens, mask = _inputs(m)
  greedy, _, _ = _ours(m, tokens, mask, eos_ids=(NEVER,))

  def sample(temperature, key):
    dec = decode.Decoder(cfg=m.cfg, max_new_tokens=NEW, eos_ids=(NEVER,), sampling=decode.Sampling(temperature))
    return np.asarray(decode.generate(m.params, tokens, mask, np.int32(NEW), np.int32(m.pad_id), None, key,
                                      decoder=dec).tokens)

  a, b = sample(1.0, jax.random.key(0)), sample(1.0, jax.random.key(0))
  np.testing.assert_array_equal(a, b)
  assert (a != sample(1.0, jax.random.key(1))).any()
  assert (a != greedy).any() and ((a >= 0) & (a < m.cfg.vocab_size)).all()
  np.testing.assert_array_equal(sample(1e-6, jax.random.key(2)), greedy)
  with pytest.raises(ValueError, match="PRNG key"):
    sample(1.0, None)
  with pytest.raises(ValueError, match="temperature"):
    decode.Sampling(-1.0)


# ------------------------------------------------------------------ phased cache


def test_phase_ends():
  assert decode.phase_ends(32) == (32,)
  assert decode.phase_ends(64) == (32, 64)
  assert decode.phase_ends(150) == (32, 64, 128, 150)
  assert decode.phase_ends(512) == (32, 64, 128, 192, 288, 448, 512)  # x1.5 past 128
  assert decode.phase_ends(150, first=64) == (64, 128, 150)


def test_long_decode_across_phases_matches_transformers(tiny_model, hf_model):
  """150 new tokens cross three cache growths (32, 64, 128): still transformers' tokens."""
  hf, m = hf_model("llama"), tiny_model("llama")
  rendered, add, tokens, mask = _inputs(m)
  ref, _ = _hf_generate(hf, m.tokenizer, rendered, add, new=150, eos_token_id=NEVER)
  ours, lengths, _ = _ours(m, tokens, mask, new=150, eos_ids=(NEVER,))
  assert ref.shape == (len(PROMPTS), 150) and (lengths == 150).all()
  np.testing.assert_array_equal(ours, ref)


def test_greedy_token_is_argmax_with_ties_and_nonfinite():
  rng = np.random.RandomState(0)
  logits = rng.randn(8, 50).astype(np.float32)
  logits[0, [3, 7]] = 9.0  # tie: the first wins
  logits[1, 5], logits[1, 9] = np.nan, np.inf  # NaN beats everything, as in argmax
  logits[2, 4] = -np.inf
  logits[3, [2, 8]] = np.inf
  logits[4] = 1.0
  logits[5, [10, 20]] = np.nan
  tok, finite = decode.greedy_token(jax.numpy.asarray(logits))
  np.testing.assert_array_equal(np.asarray(tok), np.argmax(logits, -1))
  np.testing.assert_array_equal(np.asarray(finite), np.isfinite(logits).all(-1))


def test_decode_partition_minimises_slots():
  groups = ((0, 5, 64), (5, 29, 40), (29, 58, 32), (58, 80, 24))  # the AdvBench toy scan's prefill groups
  assert decode.decode_partition(groups, 1) == ((0, 4),)
  assert decode.decode_partition(groups, 2) == ((0, 1), (1, 4))  # 5 x 64 + 75 x 40 slots, the least of 2 runs
  assert decode.decode_partition(groups, 4) == ((0, 1), (1, 2), (2, 3), (3, 4))
