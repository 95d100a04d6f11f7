"""SFT core: chat encoding with assistant-only masks, batching, masked loss, accumulation, determinism, export."""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxscape import testing
from jaxscape.core import convert, hf_params
from jaxscape.studies import chat_data, finetune, lora, train_state, train_step
from jaxscape.core.model import init_params

CHAT = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}]
TWO_TURNS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
             {"role": "assistant", "content": "Sure here"}, {"role": "user", "content": "Again please"},
             {"role": "assistant", "content": "I cannot"}]


@pytest.fixture(scope="module")
def llama_tok():
  return testing.tiny_tokenizer("llama")


@pytest.fixture(scope="module")
def chatml_tok():
  return testing.tiny_tokenizer("qwen2")


def _targets(tok, ex):
  return tok.decode(ex.ids[ex.loss_mask])


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_encode_chat_masks_exactly_the_assistant_turns(family, llama_tok, chatml_tok):
  tok = llama_tok if family == "llama" else chatml_tok
  ex = chat_data.encode_chat(tok, TWO_TURNS)
  assert ex.ids.dtype == np.int32 and ex.loss_mask.dtype == bool and ex.ids.shape == ex.loss_mask.shape
  # ids are exactly the template's full render, tokenized once
  full = tok.apply_chat_template(TWO_TURNS, tokenize=False)
  assert ex.ids.tolist() == tok(full, add_special_tokens=False)["input_ids"]
  target = _targets(tok, ex)
  assert "Sure here" in target and "I cannot" in target and tok.eos_token in target
  assert "Hi there" not in target and "Again" not in target and "Be brief" not in target
  # Exactly two runs of target tokens (one per assistant turn), each ending with the EOS.
  runs = np.flatnonzero(np.diff(ex.loss_mask.astype(int)) == -1)
  assert len(runs) + ex.loss_mask[-1] == 2
  eos = tok.convert_tokens_to_ids(tok.eos_token)
  assert all(ex.ids[i] == eos for i in runs) or family == "qwen2"


def test_encode_chat_truncates_and_validates(llama_tok):
  ex = chat_data.encode_chat(llama_tok, CHAT, max_length=5)
  assert len(ex.ids) == 5
  with pytest.raises(ValueError, match="no assistant"):
    chat_data.encode_chat(llama_tok, CHAT[:1])
  with pytest.raises(ValueError, match="bad message"):
    chat_data.encode_chat(llama_tok, [{"role": "robot", "content": "x"}])
  with pytest.raises(ValueError, match="record 1"):
    chat_data.encode_chats(llama_tok, [{"messages": CHAT}, {"msgs": []}], max_length=64)


def test_pad_batch_exact():
  ex = [chat_data.Example(np.array([5, 6, 7], np.int32), np.array([False, True, True])),
        chat_data.Example(np.array([8], np.int32), np.array([True]))]
  b = chat_data.pad_batch(ex, 4, pad_id=0)
  np.testing.assert_array_equal(b["tokens"], [[0, 5, 6, 7], [0, 0, 0, 8]])
  np.testing.assert_array_equal(b["mask"], [[0, 1, 1, 1], [0, 0, 0, 1]])
  np.testing.assert_array_equal(b["loss_mask"], [[0, 0, 1, 1], [0, 0, 0, 1]])
  with pytest.raises(ValueError, match="4 tokens"):
    chat_data.pad_batch([chat_data.Example(np.arange(4, dtype=np.int32), np.ones(4, bool))], 3, pad_id=0)


def test_masked_cross_entropy_matches_numpy_and_ignores_masked_positions():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  tokens = rng.integers(0, 7, size=(2, 5)).astype(np.int32)
  loss_mask = np.array([[0, 0, 1, 1, 1], [0, 1, 0, 0, 1]], bool)
  s, n = train_step.masked_cross_entropy(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(loss_mask))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = -sum(logp[b, t - 1, tokens[b, t]] for b in range(2) for t in range(1, 5) if loss_mask[b, t])
  np.testing.assert_allclose(float(s), want, rtol=1e-5)
  assert float(n) == loss_mask[:, 1:].sum()
  # Logits at positions that predict non-targets do not matter.
  changed = logits.copy()
  changed[0, 0] += 100.0  # predicts token 1 of row 0, not a target
  s2, _ = train_step.masked_cross_entropy(jnp.asarray(changed), jnp.asarray(tokens), jnp.asarray(loss_mask))
  np.testing.assert_allclose(float(s2), float(s), rtol=1e-6)


def _toy_setup(n=12):
  cfg = testing.tiny_config("llama", vocab_size=512, num_layers=1, hidden_size=32, intermediate_size=64,
                            num_heads=4, num_kv_heads=2, head_dim=8)
  rng = np.random.default_rng(0)
  examples = []
  for i in range(n):
    L = int(rng.integers(6, 14))
    ids = rng.integers(3, 512, size=L).astype(np.int32)
    examples.append(chat_data.Example(ids, np.arange(L) >= L // 2))
  return cfg, examples


def test_gradient_accumulation_equals_one_big_batch():
  cfg, examples = _toy_setup(8)
  params = init_params(cfg, jax.random.key(0))
  tc1 = train_step.TrainConfig(num_steps=1, batch_size=8, micro_batches=1, buckets=(16,), warmup_steps=0,
                               learning_rate=1e-2)
  tc4 = dataclasses.replace(tc1, micro_batches=4)
  batch = chat_data.pad_batch(examples, 16, pad_id=0)
  outs = []
  for tc in (tc1, tc4):
    M = tc.micro_batches
    b = {k: v.reshape((M, 8 // M) + v.shape[1:]) for k, v in batch.items()}
    # Plain SGD: the update is the (token-mean) gradient itself; Adam's first step would
    # amplify float noise in near-zero gradients into sign flips.
    opt = optax.sgd(1.0)
    step = train_step.make_train_step(cfg, opt)
    p = jax.tree.map(jnp.array, params)
    p, _, stats = step(p, opt.init(p), None, b)
    outs.append((p, stats))
  np.testing.assert_allclose(float(outs[0][1]["loss"]), float(outs[1][1]["loss"]), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(outs[0][0]), jax.tree.leaves(outs[1][0])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_batches_are_deterministic_and_cover_every_example():
  _, examples = _toy_setup(10)
  tc = train_step.TrainConfig(num_steps=5, batch_size=4, micro_batches=2, buckets=(8, 16), warmup_steps=1, seed=3)
  a, b = chat_data.batches(examples, tc, 0), chat_data.batches(examples, tc, 0)
  first = [next(a) for _ in range(4)]
  for x in first:
    y = next(b)
    assert x["tokens"].shape[:2] == (2, 2) and x["tokens"].shape[2] in (8, 16)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  other = next(chat_data.batches(examples, dataclasses.replace(tc, seed=4), 0))
  assert not all(np.array_equal(first[0][k], other[k]) for k in other) or first[0]["tokens"].shape != \
      other["tokens"].shape
  # One epoch (10 examples in buckets of 3 and 7 -> 1 + 2 batches) sees every example.
  seen = set()
  for x in chat_data.batches(examples, tc, 0):
    for row in x["tokens"].reshape(-1, x["tokens"].shape[-1]):
      seen.add(tuple(int(t) for t in row if t))
    if len(seen) == len(examples):
      break
  assert seen == {tuple(e.ids.tolist()) for e in examples}


def test_train_is_deterministic_and_learns():
  cfg, examples = _toy_setup(4)
  tc = train_step.TrainConfig(num_steps=30, batch_size=4, buckets=(16,), learning_rate=1e-2, warmup_steps=2)
  params = init_params(cfg, jax.random.key(0))
  p1, h1 = finetune.train(params, cfg, examples, tc, pad_id=0, progress=False)
  p2, h2 = finetune.train(params, cfg, examples, tc, pad_id=0, progress=False)
  assert h1["loss"] == h2["loss"]
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert h1["loss"][-1] < 0.5 * h1["loss"][0]
  # The caller's params are not donated away.
  assert np.isfinite(np.asarray(params["embed"]["embedding"])).all()


def test_train_over_a_subtree_with_merge_fn_leaves_frozen_params_alone():
  cfg, examples = _toy_setup(4)
  params = init_params(cfg, jax.random.key(1))
  trainable = {"lm_head": params["lm_head"]}
  frozen = {k: v for k, v in params.items() if k != "lm_head"}
  merge = lambda t, f: {**f, **t}  # noqa: E731
  calls = []
  tc = train_step.TrainConfig(num_steps=4, batch_size=4, buckets=(16,), warmup_steps=1)
  out, hist = finetune.train(trainable, cfg, examples, tc, pad_id=0, frozen=frozen, merge_fn=merge,
                             eval_fn=lambda p, s: calls.append(s) or {"n_leaves": len(jax.tree.leaves(p))},
                             eval_every=2, progress=False)
  assert set(out) == {"lm_head"}
  assert not np.array_equal(np.asarray(out["lm_head"]["kernel"]), np.asarray(params["lm_head"]["kernel"]))
  assert calls == [2, 4] and hist["evals"][-1]["n_leaves"] == len(jax.tree.leaves(params))


def test_learning_rate_schedule():
  tc = train_step.TrainConfig(num_steps=100, warmup_steps=10, learning_rate=1e-3, end_lr_ratio=0.1)
  sched = train_step.learning_rate_schedule(tc)
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(10)), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(float(sched(100)), 1e-4, rtol=1e-5)
  assert float(sched(50)) < float(sched(20))


@pytest.mark.parametrize("kw,match", [({"num_steps": 0}, "num_steps"),
                                      ({"batch_size": 6, "micro_batches": 4}, "multiple"),
                                      ({"buckets": (64, 32)}, "buckets"),
                                      ({"warmup_steps": 10, "num_steps": 5}, "warmup")])
def test_train_config_validation(kw, match):
  with pytest.raises(ValueError, match=match):
    train_step.TrainConfig(**kw)


def test_save_model_loads_in_jaxscape_and_transformers(tmp_path, llama_tok):
  cfg = testing.tiny_config("llama")
  params = init_params(cfg, jax.random.key(2), std=0.1)
  out = convert.save_model(params, cfg, llama_tok, str(tmp_path / "m"))
  model = convert.load_model(out)
  assert model.eos_ids == (llama_tok.eos_token_id,)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(model.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  torch = pytest.importorskip("torch")
  import transformers
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  assert hf.config.eos_token_id == llama_tok.eos_token_id


# ----------------------------------------------------------------- LoRA


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_merge_lora_with_zero_b_is_the_base_exactly(family):
  cfg = testing.tiny_config(family)
  params = init_params(cfg, jax.random.key(3), std=0.1)
  adapters = lora.init_lora(params, cfg, 4, jax.random.key(0))
  a = adapters["layers"]["attn"]["k"]  # stacked like the params: [L, in, r], [L, r, out]
  assert a["a"].shape == (2, 64, 4) and a["b"].shape == (2, 4, 2 * 16) and a["a"].dtype == jnp.float32
  assert set(adapters["layers"]["mlp"]) == {"gate", "up", "down"}
  merged = lora.merge_lora(adapters, params, scale=2.0)
  assert jax.tree.structure(merged) == jax.tree.structure(params)
  for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # Non-zero B: exactly the targeted kernels move, by scale * A @ B per layer; biases and others are shared.
  only_q = lora.init_lora(params, cfg, 2, jax.random.key(0), targets=("q_proj",))
  assert set(only_q["layers"]) == {"attn"} and set(only_q["layers"]["attn"]) == {"q"}
  # A (layer, target) draws the same A whatever the other targets.
  all_r2 = lora.init_lora(params, cfg, 2, jax.random.key(0))
  np.testing.assert_array_equal(only_q["layers"]["attn"]["q"]["a"], all_r2["layers"]["attn"]["q"]["a"])
  only_q = jax.tree.map(lambda x: x + 0.5 if x.shape[1] == 2 else x, only_q)  # B = 0.5
  moved = lora.merge_lora(only_q, params, scale=0.25)
  ab = only_q["layers"]["attn"]["q"]
  for i in range(cfg.num_layers):  # the batched matmul is one matmul per layer
    want = params["layers"]["attn"]["q"]["kernel"][i] + 0.25 * np.asarray(ab["a"][i]) @ np.asarray(ab["b"][i])
    np.testing.assert_allclose(moved["layers"]["attn"]["q"]["kernel"][i], want, rtol=1e-6, atol=1e-6)
  assert moved["layers"]["attn"]["k"] is params["layers"]["attn"]["k"]
  assert moved["layers"]["mlp"] is params["layers"]["mlp"] and moved["embed"] is params["embed"]
  if family == "qwen2":
    assert moved["layers"]["attn"]["q"]["bias"] is params["layers"]["attn"]["q"]["bias"]
  with pytest.raises(ValueError, match="rank"):
    lora.init_lora(params, cfg, 0, jax.random.key(0))
  with pytest.raises(ValueError, match="qkv"):
    lora.init_lora(params, cfg, 2, jax.random.key(0), targets=("qkv",))


def test_init_lora_draws_what_the_per_layer_adapters_drew():
  """Stacked adapters hold, layer by layer, the A the former one-dict-per-layer init drew (same keys)."""
  cfg = testing.tiny_config("llama", num_layers=3)
  params = init_params(cfg, jax.random.key(3))
  key = jax.random.key(7)
  got = lora.init_lora(params, cfg, 4, key, targets=("k_proj", "down_proj"))
  names = list(lora.LORA_TARGETS)
  for i in range(cfg.num_layers):
    for t in ("k_proj", "down_proj"):
      block, name = lora.LORA_TARGETS[t]
      n_in = params["layers"][block][name]["kernel"].shape[1]
      k = jax.random.fold_in(key, i * len(names) + names.index(t))
      want = jax.random.normal(k, (n_in, 4), jnp.float32) / np.float32(np.sqrt(n_in))
      np.testing.assert_array_equal(got["layers"][block][name]["a"][i], want)
      assert not np.asarray(got["layers"][block][name]["b"][i]).any()


def test_lora_loss_equals_the_loss_of_the_merged_weights():
  """The merge_fn path gives the loss of W + scale * A @ B formed layer by layer (the model sees plain weights)."""
  cfg, examples = _toy_setup(4)
  cfg = dataclasses.replace(cfg, num_layers=2)
  params = init_params(cfg, jax.random.key(0), std=0.1)
  adapters = lora.init_lora(params, cfg, 2, jax.random.key(1))
  rng = np.random.default_rng(0)
  adapters = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape).astype(np.float32) * 0.1), adapters)
  by_hand = jax.tree.map(np.array, params)
  for block, entries in adapters["layers"].items():
    for name, ab in entries.items():
      for i in range(cfg.num_layers):
        by_hand["layers"][block][name]["kernel"][i] += 2.0 * np.asarray(ab["a"][i], np.float64) @ np.asarray(ab["b"][i])
  batch = {k: jnp.asarray(v) for k, v in chat_data.pad_batch(examples, 16, pad_id=0).items()}
  loss, n = train_step.lm_loss(adapters, params, batch, cfg=cfg, merge_fn=lora.lora_merge_fn(2.0))
  want, m = train_step.lm_loss(jax.tree.map(jnp.asarray, by_hand), None, batch, cfg=cfg)
  assert float(n) == float(m) > 0
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)


def test_weight_decay_skips_stacked_norm_scales():
  """AdamW decays matrices only: stacked kernels [L, in, out] yes, stacked norm scales [L, D] no."""
  cfg = testing.tiny_config("qwen2")  # with biases
  params = init_params(cfg, jax.random.key(0))
  tc = train_step.TrainConfig(num_steps=10, warmup_steps=0, learning_rate=1e-2, weight_decay=0.5, grad_clip=0)
  opt = train_step.make_optimizer(tc)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = opt.update(zeros, opt.init(params), params)  # zero gradients: the update is the decay alone
  u = dict(jax.tree_util.tree_leaves_with_path(updates))
  for path, x in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path)
    decayed = np.asarray(u[path]).any()
    assert decayed == ("kernel" in name or "embedding" in name), name
  adapters = lora.init_lora(params, cfg, 2, jax.random.key(0))
  adapters = jax.tree.map(lambda x: x + 1.0, adapters)
  updates, _ = opt.update(jax.tree.map(jnp.zeros_like, adapters), opt.init(adapters), adapters)
  assert all(np.asarray(x).any() for x in jax.tree.leaves(updates))  # adapters [L, in, r], [L, r, out]: matrices


def test_lora_training_changes_only_adapters_and_lowers_the_loss():
  cfg, examples = _toy_setup(4)
  params = init_params(cfg, jax.random.key(0), std=0.1)
  before = jax.tree.map(np.array, params)
  adapters = lora.init_lora(params, cfg, 4, jax.random.key(1), targets=("q_proj", "v_proj", "down_proj"))
  merge = functools.partial(lora.merge_lora, scale=2.0)
  tc = train_step.TrainConfig(num_steps=30, batch_size=4, buckets=(16,), learning_rate=3e-2, warmup_steps=2)
  out, hist = finetune.train(adapters, cfg, examples, tc, pad_id=0, frozen=params, merge_fn=merge, progress=False)
  assert jax.tree.structure(out) == jax.tree.structure(adapters)
  assert hist["loss"][-1] < 0.75 * hist["loss"][0]  # 6.3 -> 4.0: rank-4 adapters on a random model
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(before)):  # the frozen base is untouched
    np.testing.assert_array_equal(np.asarray(x), y)
  merged = merge(out, params)
  flat_m = dict(jax.tree_util.tree_leaves_with_path(merged))
  changed = {jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(before)
             if not np.array_equal(np.asarray(flat_m[k]), v)}
  assert changed == {f"['layers']['{b}']['{n}']['kernel']" for b, n in (("attn", "q"), ("attn", "v"),
                                                                             ("mlp", "down"))}


# ----------------------------------------------------------------- checkpoints and resume


def test_early_stopping_ends_at_the_step_that_asks_and_resumes_as_stopped(tmp_path):
  cfg, examples = _toy_setup(4)
  params = init_params(cfg, jax.random.key(2))
  tc = train_step.TrainConfig(num_steps=10, batch_size=4, buckets=(16,), learning_rate=1e-2, warmup_steps=1)
  full, h_full = finetune.train(params, cfg, examples, tc, pad_id=0, progress=False)
  calls = []
  stop_at_4 = lambda p, s: calls.append(s) or {"stop": s >= 4}  # noqa: E731
  ckpt = str(tmp_path / "state")
  out, hist = finetune.train(params, cfg, examples, tc, pad_id=0, progress=False, eval_fn=stop_at_4, eval_every=2,
                             checkpoint_dir=ckpt)
  assert calls == [2, 4] and hist["stopped_at"] == 4 and len(hist["loss"]) == 4
  assert hist["loss"] == h_full["loss"][:4] and h_full["stopped_at"] is None
  assert sorted(os.listdir(ckpt)) == ["4"]  # the state where it stopped
  again, hist2 = finetune.train(params, cfg, examples, tc, pad_id=0, progress=False, checkpoint_dir=ckpt)
  assert hist2["resumed_from"] == 4 and hist2["stopped_at"] == 4 and len(hist2["loss"]) == 4  # not trained on
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(again)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _Killed(Exception):
  pass


def _kill_at(step):
  def eval_fn(params, s):
    if s == step:
      raise _Killed(f"killed at step {s}")
    return {}
  return eval_fn


@pytest.mark.parametrize("use_lora", [False, True])
def test_resume_after_interruption_is_bit_identical(tmp_path, use_lora):
  cfg, examples = _toy_setup(10)
  params = init_params(cfg, jax.random.key(0))
  tc = train_step.TrainConfig(num_steps=9, batch_size=4, micro_batches=2, buckets=(16,), learning_rate=1e-2,
                              warmup_steps=2)
  kw = dict(pad_id=0, progress=False)
  if use_lora:
    trainable = lora.init_lora(params, cfg, 2, jax.random.key(1))
    kw.update(frozen=params, merge_fn=lora.lora_merge_fn(2.0))
  else:
    trainable = params
  ref, ref_hist = finetune.train(trainable, cfg, examples, tc, **kw)
  ckpt = str(tmp_path / "state")
  with pytest.raises(_Killed):
    finetune.train(trainable, cfg, examples, tc, checkpoint_dir=ckpt, checkpoint_every=2, eval_fn=_kill_at(7),
                   eval_every=1, **kw)
  assert sorted(os.listdir(ckpt)) == ["4", "6"]  # the newest two are kept
  out, hist = finetune.train(trainable, cfg, examples, tc, checkpoint_dir=ckpt, checkpoint_every=2, **kw)
  assert hist["resumed_from"] == 6 and hist["loss"] == ref_hist["loss"]
  assert jax.tree.structure(out) == jax.tree.structure(ref)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert sorted(os.listdir(ckpt)) == ["8", "9"]
  # A finished state resumes to the end at once.
  again, hist2 = finetune.train(trainable, cfg, examples, tc, checkpoint_dir=ckpt, **kw)
  assert hist2["resumed_from"] == 9 and hist2["loss"] == ref_hist["loss"]
  np.testing.assert_array_equal(np.asarray(jax.tree.leaves(again)[0]), np.asarray(jax.tree.leaves(ref)[0]))


def test_batches_start_skips_exactly():
  _, examples = _toy_setup(10)
  tc = train_step.TrainConfig(num_steps=5, batch_size=4, buckets=(8, 16), warmup_steps=1)
  full = chat_data.batches(examples, tc, 0)
  ref = [next(full) for _ in range(9)]  # crosses epoch boundaries (3 batches an epoch)
  skipped = chat_data.batches(examples, tc, 0, start=5)
  for want in ref[5:]:
    got = next(skipped)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_incompatible_checkpoint_is_refused(tmp_path):
  cfg, examples = _toy_setup(4)
  params = init_params(cfg, jax.random.key(0))
  tc = train_step.TrainConfig(num_steps=2, batch_size=4, buckets=(16,), warmup_steps=1)
  ckpt = str(tmp_path / "state")
  finetune.train(params, cfg, examples, tc, pad_id=0, progress=False, checkpoint_dir=ckpt)
  cases = [("train_config.learning_rate", dict(tc=dataclasses.replace(tc, learning_rate=2e-3))),
           ("data", dict(examples=examples[:3])),
           ("initial_trainable", dict(params=init_params(cfg, jax.random.key(9)))),
           ("model_config.compute_dtype", dict(cfg=dataclasses.replace(cfg, compute_dtype="bfloat16"))),
           ("lora", dict(fingerprint={"lora": {"rank": 2}}))]
  for what, change in cases:
    args = {"params": params, "cfg": cfg, "examples": examples, "tc": tc, "fingerprint": None, **change}
    with pytest.raises(ValueError, match=f"different run: {what}"):
      finetune.train(args["params"], args["cfg"], args["examples"], args["tc"], pad_id=0, progress=False,
                     checkpoint_dir=ckpt, fingerprint=args["fingerprint"])


# ----------------------------------------------------------------- chat JSONL


def _write(path, lines):
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(path)


def test_load_chat_records(tmp_path):
  import json
  good = _write(tmp_path / "good.jsonl", [json.dumps({"messages": CHAT}), "",
                                          json.dumps({"prompt": "Hi", "response": "Hello.", "system": "S"})])
  recs = chat_data.load_chat_records(good)
  assert recs == [{"messages": CHAT}, {"messages": [{"role": "system", "content": "S"},
                                                    {"role": "user", "content": "Hi"},
                                                    {"role": "assistant", "content": "Hello."}]}]
  assert len(chat_data.load_chat_records("builtin:harmful_train")) > 100
  ok = json.dumps({"messages": CHAT})
  cases = [(["", ""], "holds no records"),
           ([ok, "", "{not json"], r"bad.jsonl:3: not valid JSON"),
           ([ok, json.dumps({"msgs": CHAT})], r"bad.jsonl:2: expected an object"),
           ([json.dumps([1, 2])], r"bad.jsonl:1: expected an object"),
           ([json.dumps({"messages": [{"role": "robot", "content": "x"}]})], r"bad.jsonl:1: bad message"),
           ([json.dumps({"messages": CHAT[:1]})], r"bad.jsonl:1: no assistant"),
           ([json.dumps({"messages": []})], r"bad.jsonl:1: \"messages\" must be a non-empty list")]
  for lines, match in cases:
    with pytest.raises(ValueError, match=match):
      chat_data.load_chat_records(_write(tmp_path / "bad.jsonl", lines))
  with pytest.raises(ValueError, match="does not exist"):
    chat_data.load_chat_records(str(tmp_path / "missing.jsonl"))


# ----------------------------------------------------------------- run_finetune


def _records(n=6):
  return [{"messages": [{"role": "user", "content": f"Please create a plan {i}"},
                        {"role": "assistant", "content": f"Sure, here is step {i}."}]} for i in range(n)]


def test_run_finetune_lora_writes_merged_weights_and_guards_its_out_dir(tmp_path, tiny_dir):
  base = convert.load_model(tiny_dir("qwen2"))
  tc = train_step.TrainConfig(num_steps=3, batch_size=2, buckets=(64,), learning_rate=1e-2, warmup_steps=1)
  out = str(tmp_path / "ft")
  info = finetune.run_finetune(tiny_dir("qwen2"), _records(), tc, out_dir=out, lora_rank=2,
                               lora_targets=("o_proj", "up_proj"), progress=False, extra_info={"note": "x"})
  assert info["lora"] == {"rank": 2, "alpha": 4.0, "targets": ["o_proj", "up_proj"]} and info["note"] == "x"
  assert len(info["loss"]) == 3 and info["resumed_from"] == 0 and info["examples"] == 6
  assert info["trainable_params"] == 2 * (2 * (64 + 64) + 2 * (64 + 128))
  assert not os.path.exists(os.path.join(out, train_state.TRAIN_STATE_DIR))  # removed once complete
  assert convert.is_converted_dir(out)
  got = convert.load_model(out)
  hf_only = hf_params.hf_to_params(convert.read_safetensors(out), got.cfg)
  assert got.cfg == base.cfg and got.eos_ids == base.eos_ids
  moved = set()
  for (k, x), y, z in zip(jax.tree_util.tree_leaves_with_path(got.params), jax.tree.leaves(base.params),
                          jax.tree.leaves(hf_only)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(z))  # orbax copy == safetensors
    if not np.array_equal(np.asarray(x), np.asarray(y)):
      moved.add(jax.tree_util.keystr(k).split("]")[-3].strip("['"))
  assert moved == {"o", "up"}
  # A finished run is not overwritten by accident; with overwrite it is replaced.
  with pytest.raises(ValueError, match="not empty.*earlier results"):
    finetune.run_finetune(tiny_dir("qwen2"), _records(), tc, out_dir=out, progress=False)
  with pytest.raises(ValueError, match="is the model dir"):
    finetune.run_finetune(tiny_dir("qwen2"), _records(), tc, out_dir=tiny_dir("qwen2"), progress=False)
  info2 = finetune.run_finetune(base, _records(), tc, out_dir=out, lora_rank=2, lora_targets=("o_proj", "up_proj"),
                                overwrite=True, orbax_copy=False, progress=False)
  assert not convert.is_converted_dir(out)  # the stale orbax copy is gone
  assert info2["loss"] == info["loss"]  # deterministic
  for x, y in zip(jax.tree.leaves(convert.load_model(out).params), jax.tree.leaves(got.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_run_finetune_resumes_an_interrupted_run(tmp_path, tiny_dir):
  tc = train_step.TrainConfig(num_steps=4, batch_size=2, buckets=(64,), learning_rate=1e-2, warmup_steps=1)
  ref = finetune.run_finetune(tiny_dir("llama"), _records(), tc, out_dir=str(tmp_path / "ref"), lora_rank=2,
                              progress=False)
  out = str(tmp_path / "ft")
  with pytest.raises(_Killed):
    finetune.run_finetune(tiny_dir("llama"), _records(), tc, out_dir=out, lora_rank=2, checkpoint_every=2,
                          eval_fn=_kill_at(3), eval_every=1, progress=False)
  with pytest.raises(ValueError, match="interrupted run"):
    finetune.run_finetune(tiny_dir("llama"), _records(), tc, out_dir=out, lora_rank=2, resume=False,
                          progress=False)
  with pytest.raises(ValueError, match="lora.rank: saved 2, now 3"):
    finetune.run_finetune(tiny_dir("llama"), _records(), tc, out_dir=out, lora_rank=3, progress=False)
  info = finetune.run_finetune(tiny_dir("llama"), _records(), tc, out_dir=out, lora_rank=2, progress=False)
  assert info["resumed_from"] == 2 and info["loss"] == ref["loss"]
  with open(os.path.join(out, convert.SAFETENSORS), "rb") as f, \
       open(os.path.join(ref["out_dir"], convert.SAFETENSORS), "rb") as g:
    assert f.read() == g.read()
