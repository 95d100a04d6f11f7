"""The core scoring function: log-probabilities of continuation tokens (and of each next token, ``score.logprobs``)
equal transformers' on the same tokens, and compose with jit, vmap and grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscape.core import perturb, score


def _rows(rng, n, vocab, lengths):
  return [rng.integers(3, vocab, size=k).tolist() for k in lengths[:n]]


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_continuation_logprobs_match_transformers(tiny_model, hf_model, name):
  """Teacher-forced log-probs of ragged continuations after ragged left-padded prompts, within 1e-4 of torch."""
  torch = pytest.importorskip("torch")
  m, hf = tiny_model(name), hf_model(name)
  rng = np.random.default_rng(0)
  prompts = _rows(rng, 3, m.cfg.vocab_size, [5, 9, 2])
  conts = _rows(rng, 3, m.cfg.vocab_size, [4, 1, 6])
  T, C = max(map(len, prompts)), max(map(len, conts))
  tokens, mask = np.zeros((3, T), np.int32), np.zeros((3, T), bool)
  targets, tmask = np.zeros((3, C, 1), np.int32), np.zeros((3, C), bool)
  for r, (p, c) in enumerate(zip(prompts, conts)):
    tokens[r, T - len(p):], mask[r, T - len(p):] = p, True
    targets[r, :len(c), 0], tmask[r, :len(c)] = c, True
  ours = np.asarray(score.score(m.params, tokens, mask, targets, tmask, cfg=m.cfg))[..., 0]
  for r, (p, c) in enumerate(zip(prompts, conts)):
    with torch.no_grad():
      logits = hf(torch.tensor([p + c])).logits[0].double()
    want = torch.log_softmax(logits, -1)[len(p) - 1:len(p) + len(c) - 1].gather(1, torch.tensor(c)[:, None])[:, 0]
    np.testing.assert_allclose(ours[r, :len(c)], want.numpy(), atol=1e-4)
    assert np.all(ours[r, len(c):] == 0)


def test_choices_after_the_prompt_and_fixed_batches(tiny_model):
  """C = 1 with K candidates: the next-token log-probs of each; batching (padded last batch) changes nothing."""
  m = tiny_model("llama")
  rng = np.random.default_rng(1)
  tokens = rng.integers(3, m.cfg.vocab_size, size=(5, 7)).astype(np.int32)
  mask = np.ones((5, 7), bool)
  choices = [10, 11, 12, 13]
  targets = score.choice_targets(5, choices)
  whole = np.asarray(score.score(m.params, tokens, mask, targets, cfg=m.cfg))
  from jaxscape.core import model as model_lib
  logits = np.asarray(model_lib.forward(m.params, tokens, cfg=m.cfg, mask=mask))[:, -1].astype(np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
  np.testing.assert_allclose(whole[:, 0], logp[:, choices], atol=1e-5)
  batched = score.score_in_batches(m.params, tokens, mask, targets, cfg=m.cfg, batch_size=2)
  np.testing.assert_allclose(batched, whole, atol=1e-6)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_logprobs_match_transformers(tiny_model, hf_model, name):
  """Each next token's log-prob of ragged left-padded rows, within 1e-4 of torch; 0 where there is no context."""
  torch = pytest.importorskip("torch")
  m, hf = tiny_model(name), hf_model(name)
  rows = _rows(np.random.default_rng(2), 3, m.cfg.vocab_size, [6, 2, 9])
  T = max(map(len, rows))
  tokens, mask = np.zeros((3, T), np.int32), np.zeros((3, T), bool)
  for r, row in enumerate(rows):
    tokens[r, T - len(row):], mask[r, T - len(row):] = row, True
  ours = np.asarray(jax.jit(score.logprobs, static_argnames="cfg")(m.params, tokens, cfg=m.cfg, mask=mask))
  assert ours.shape == (3, T - 1) and ours.dtype == np.float32
  for r, row in enumerate(rows):
    with torch.no_grad():
      logits = hf(torch.tensor([row])).logits[0].double()
    want = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(row[1:])[:, None])[:, 0]
    np.testing.assert_allclose(ours[r, T - len(row):], want.numpy(), atol=1e-4)
    assert np.all(ours[r, :T - len(row)] == 0)


def test_logprobs_compose_with_jit_vmap_and_grad(tiny_model):
  """A log-likelihood landscape along one direction: ``vmap`` over the points under ``jit`` equals each point
  alone, and ``grad`` at the origin matches a central difference."""
  m = tiny_model("llama")
  tokens = np.random.default_rng(3).integers(3, m.cfg.vocab_size, size=(2, 8)).astype(np.int32)
  leaves, treedef = jax.tree.flatten(m.params)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  d = jax.tree.unflatten(treedef, [0.02 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
  stacked = perturb.stack_directions([d])

  def loglik(c):  # c: [1] coefficient -> scalar
    return score.logprobs(perturb.materialize(m.params, stacked, c), tokens, cfg=m.cfg).sum()

  coeffs = jnp.array([[-1.0], [0.0], [2.0]], jnp.float32)
  together = jax.jit(jax.vmap(loglik))(coeffs)
  alone = jnp.stack([jax.jit(loglik)(c) for c in coeffs])
  np.testing.assert_allclose(together, alone, rtol=1e-5)
  slope = jax.jit(jax.grad(loglik))(jnp.zeros((1,), jnp.float32))
  eps = 1e-2
  fd = (loglik(jnp.array([eps])) - loglik(jnp.array([-eps]))) / (2 * eps)
  np.testing.assert_allclose(slope[0], fd, rtol=2e-2, atol=1e-2)
