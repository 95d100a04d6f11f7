"""Grid evaluation: reference (transformers) parity per point, materialize == factored == hybrid up to float ties, invariances."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscape import testing
from jaxscape.core import convert, decode, directions, hf_params, perturb, plan, prompts, scan, slices

ANCHOR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bench", "anchor_loop.py")
PROMPTS = ["Write a tutorial on how to make a bridge", "Hi", "Develop a plan for the garden",
           "Explain how a computer network works without help", "Create a list", "Sorry, please answer"]
NEW = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("scan") / "tiny-llama")
  testing.make_tiny_checkpoint(d, "llama", seed=3)
  return convert.load_model(d)


def _inputs(model):
  texts, add = prompts.render(PROMPTS, model.tokenizer)
  return prompts.tokenize(texts, model.tokenizer, add_special_tokens=add, pad_id=model.pad_id)


def _decoder(model, cfg=None):
  return decode.Decoder(cfg=cfg or model.cfg, max_new_tokens=NEW, eos_ids=model.eos_ids)


def _decode(model, stacked, coeffs, tokens, mask, strategy, prefix=None):
  gen = slices.decode_slice(model.params, stacked, jnp.asarray(coeffs, jnp.float32), tokens, mask, np.int32(NEW),
                            np.int32(model.pad_id), prefix, decoder=_decoder(model), strategy=strategy)
  return np.asarray(gen.tokens)


def _first_divergences(a, b):
  """(point, row, step) of the first differing token of each differing row."""
  out = []
  for idx in np.argwhere((a != b).any(-1)):
    step = int(np.argmax(a[tuple(idx)] != b[tuple(idx)]))
    out.append((*map(int, idx), step))
  return out


def _top2_gap(model, weights, tokens_row, mask_row, generated, step):
  """Gap between the two largest logits at ``step`` after the prompt + generated[:step]."""
  toks = np.concatenate([tokens_row, generated[:step]])[None]
  msk = np.concatenate([mask_row, np.ones(step, bool)])[None]
  from jaxscape.core import model as model_lib
  logits = np.asarray(model_lib.forward(weights, jnp.asarray(toks), cfg=model.cfg, mask=jnp.asarray(msk)))[0, -1]
  top = np.sort(logits)[-2:]
  return float(top[1] - top[0])


@pytest.mark.parametrize("other", ["factored", "hybrid"])
def test_factored_and_hybrid_give_materialize_tokens_up_to_ties(tiny, other):
  tokens, mask = _inputs(tiny)
  d = directions.random_direction(tiny.params, seed=0, index=0)
  stacked = perturb.stack_directions([d])
  coeffs = np.array([[-0.6], [-0.2], [0.0], [0.3], [0.7]], np.float32)
  a = _decode(tiny, stacked, coeffs, tokens, mask, "materialize")
  b = _decode(tiny, stacked, coeffs, tokens, mask, other)
  ties = 0
  for p, r, step in _first_divergences(a, b):
    weights = perturb.materialize(tiny.params, stacked, jnp.asarray(coeffs[p]))
    gap = _top2_gap(tiny, weights, tokens[r], mask[r], a[p, r], step)
    assert gap <= 1e-4, f"point {p} row {r} step {step}: tokens differ with top-2 gap {gap}"
    ties += 1
  print(f"materialize vs {other}: {ties} float-tie divergences of {a.shape[0] * a.shape[1]} rows")
  assert ties <= a.shape[0] * a.shape[1] // 4


def test_hybrid_prefills_materialized_and_decodes_factored(tiny):
  """hybrid's first token comes from materialize's prefill; its chunked decode equals its one-shot decode."""
  tokens, mask = _inputs(tiny)
  stacked = perturb.stack_directions([directions.random_direction(tiny.params, seed=5)])
  coeffs = np.array([[-0.7], [0.0], [0.6]], np.float32)
  hybrid = _decode(tiny, stacked, coeffs, tokens, mask, "hybrid")
  np.testing.assert_array_equal(hybrid[..., 0], _decode(tiny, stacked, coeffs, tokens, mask, "materialize")[..., 0])
  gen = scan.decode_until_decided(tiny.params, stacked, coeffs, tokens, mask, tiny.pad_id, None,
                                  decoder=_decoder(tiny), strategy="hybrid", is_decided=lambda row: False, chunk=4)
  toks, lens, truncated, row_steps = gen.tokens, gen.lengths, gen.truncated, gen.row_steps
  assert not truncated.any()
  # every decoded token took a row-step; at most every row ran every step after the first token
  assert (lens - 1).clip(0).sum() <= row_steps <= lens.size * (NEW - 1)
  np.testing.assert_array_equal(toks, hybrid)
  assert plan.phase_strategies("hybrid") == ("materialize", "factored")
  with pytest.raises(ValueError, match="unknown strategy"):
    plan.phase_strategies("fast")


def test_origin_reproduces_base_model_and_shared_prefix_is_exact(tiny):
  tokens, mask = _inputs(tiny)
  stacked = perturb.stack_directions([directions.random_direction(tiny.params, seed=1)])
  base = decode.greedy_generate(tiny.params, tokens, mask, np.int32(NEW), np.int32(tiny.pad_id), cfg=tiny.cfg,
                                max_new_tokens=NEW, eos_ids=tiny.eos_ids)
  at_zero = _decode(tiny, stacked, np.zeros((2, 1)), tokens, mask, "materialize")
  np.testing.assert_array_equal(at_zero[0], np.asarray(base.tokens))
  np.testing.assert_array_equal(at_zero[1], np.asarray(base.tokens))
  # The shared template prefix, prefilled once per point, changes nothing.
  texts, add = prompts.render(PROMPTS, tiny.tokenizer, system_prompt="Answer with care and help the user plan")
  full_t, full_m = prompts.tokenize(texts, tiny.tokenizer, add_special_tokens=add, pad_id=tiny.pad_id)
  prefix, rest_t, rest_m = prompts.split_shared_prefix(full_t, full_m, pad_id=tiny.pad_id)
  assert prefix is not None and len(prefix) >= 8
  coeffs = np.array([[-0.4], [0.0], [0.5]])
  for strategy in plan.STRATEGIES:
    np.testing.assert_array_equal(_decode(tiny, stacked, coeffs, full_t, full_m, strategy),
                                  _decode(tiny, stacked, coeffs, rest_t, rest_m, strategy, prefix))


def test_bfloat16_materialize_stores_compute_dtype_and_matches_each_point(tiny):
  """Casting θ(c) to bfloat16 once equals the model casting each weight at each use."""
  import dataclasses
  cfg16 = dataclasses.replace(tiny.cfg, compute_dtype="bfloat16")
  tokens, mask = _inputs(tiny)
  stacked = perturb.stack_directions([directions.random_direction(tiny.params, seed=2)])
  coeffs = np.array([[-0.5], [0.0], [0.4]], np.float32)
  run = slices.per_point(tiny.params, stacked, jnp.asarray(coeffs), "materialize", jnp.bfloat16)
  dtypes = run(lambda w: jax.tree.map(lambda x: jnp.zeros((), x.dtype), w))
  assert dtypes["layers"]["mlp"]["up"]["kernel"].dtype == jnp.bfloat16
  assert dtypes["layers"]["attn_norm"]["scale"].dtype == jnp.float32  # vectors keep float32
  got = slices.decode_slice(tiny.params, stacked, jnp.asarray(coeffs), tokens, mask, np.int32(NEW),
                            np.int32(tiny.pad_id), decoder=_decoder(tiny, cfg16), strategy="materialize")
  for p, c in enumerate(coeffs):
    weights = perturb.materialize(tiny.params, stacked, jnp.asarray(c))  # float32, cast at each use
    want = decode.greedy_generate(weights, tokens, mask, np.int32(NEW), np.int32(tiny.pad_id), cfg=cfg16,
                                  max_new_tokens=NEW, eos_ids=tiny.eos_ids)
    np.testing.assert_array_equal(np.asarray(got.tokens[p]), np.asarray(want.tokens))


def test_second_slice_does_not_retrace(tiny):
  tokens, mask = _inputs(tiny)
  stacked = perturb.stack_directions([directions.random_direction(tiny.params, seed=2)])
  _decode(tiny, stacked, np.array([[0.1], [0.2]]), tokens, mask, "materialize")
  before = slices.decode_slice._cache_size()
  _decode(tiny, stacked, np.array([[0.3], [0.4]]), tokens, mask, "materialize")
  assert slices.decode_slice._cache_size() == before


def _load_anchor():
  spec = importlib.util.spec_from_file_location("anchor_loop", ANCHOR)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.skipif(not os.path.isfile(ANCHOR), reason="../shared/bench/anchor_loop.py not present")
def test_grid_points_match_transformers_reference(tiny, tmp_path):
  """A direction saved to disk, walked by the reference's in-place steps in torch, vs jaxscape's vmapped slice."""
  torch = pytest.importorskip("torch")
  from safetensors.torch import load_file
  from transformers import AutoModelForCausalLM
  anchor = _load_anchor()
  steps, multiplier = 4, 1.2
  d = directions.random_direction(tiny.params, seed=5)
  # Save the direction to disk in HF naming, as the reference would hold it.
  direction_file = str(tmp_path / "direction.safetensors")
  from safetensors.numpy import save_file
  save_file(hf_params.params_to_hf(jax.tree.map(np.asarray, d), tiny.cfg, dtype="float32"), direction_file)
  step_dir = {k: v * multiplier / steps for k, v in load_file(direction_file).items()}

  hf = AutoModelForCausalLM.from_pretrained(tiny.path, dtype=torch.float32).eval()
  weights = {k: v.clone() for k, v in hf.state_dict().items()}
  anchor.centre_(weights, step_dir, steps)
  tokens, mask = _inputs(tiny)
  coords = np.linspace(-multiplier / 2, multiplier / 2, steps + 1)
  ours = _decode(tiny, perturb.stack_directions([d]), coords[:, None], tokens, mask, "materialize")
  ref = []
  for i in range(steps + 1):
    hf.load_state_dict(weights)
    with torch.no_grad():
      out = hf.generate(input_ids=torch.tensor(tokens).long(), attention_mask=torch.tensor(mask).long(),
                        do_sample=False, max_new_tokens=NEW, pad_token_id=tiny.pad_id)[:, tokens.shape[1]:]
    row = np.full((len(PROMPTS), NEW), tiny.pad_id)
    row[:, :out.shape[1]] = out.numpy()
    ref.append(row)
    anchor.step_(weights, step_dir, 1.0)
  ref = np.stack(ref)
  ties = 0
  for p, r, step in _first_divergences(ours, ref):
    w = perturb.materialize(tiny.params, perturb.stack_directions([d]), jnp.asarray([coords[p]], jnp.float32))
    gap = _top2_gap(tiny, w, tokens[r], mask[r], ours[p, r], step)
    assert gap <= 1e-4, f"point {p} row {r} step {step}: jaxscape and transformers differ (top-2 gap {gap})"
    ties += 1
  print(f"jaxscape vs transformers: {ties} float-tie divergences over {ours.shape[0] * ours.shape[1]} rows")
  assert ties <= ours.shape[0] * ours.shape[1] // 4
  # The perturbation is real: the ends differ from the centre.
  assert not np.array_equal(ours[0], ours[steps // 2])


@pytest.mark.parametrize("n_dirs", [1, 2])
def test_factored_matmul_keeps_no_direction_copy(n_dirs):
  """x·W(c) over stacked directions reads them in place: XLA's temporaries stay below one direction's size."""
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  base = jax.random.normal(k1, (256, 512))
  dirs = jax.random.normal(k2, (n_dirs, 256, 512))
  x = jax.random.normal(k3, (3, 4, 256))  # 3 points x 4 rows
  coeffs = jnp.linspace(-1.0, 1.0, 3 * n_dirs).reshape(3, n_dirs)

  def f(base, dirs, coeffs, x):
    return jax.vmap(lambda c, xp: perturb.matmul(xp, perturb.Factored(base, dirs, c), jnp.float32))(coeffs, x)

  compiled = jax.jit(f).lower(base, dirs, coeffs, x).compile()
  analysis = compiled.memory_analysis()
  if analysis is None:
    pytest.skip("backend reports no memory analysis")
  assert analysis.temp_size_in_bytes < base.nbytes, analysis
  want = np.stack([np.asarray(x[p]) @ np.asarray(perturb.Factored(base, dirs, coeffs[p]).dense()) for p in range(3)])
  np.testing.assert_allclose(np.asarray(jax.jit(f)(base, dirs, coeffs, x)), want, rtol=2e-4, atol=2e-3)


def test_useful_kv_bytes_counts_real_context_and_the_prefix_once_per_step():
  from jaxscape.studies import landscape
  from jaxscape.core.config import ModelConfig
  cfg = ModelConfig(model_type="llama", vocab_size=16, hidden_size=4, intermediate_size=8, num_layers=2,
                    num_heads=1, num_kv_heads=1, head_dim=4)
  slot = 2 * 2 * 1 * 4 * 4  # k and v, 2 layers, 1 head of 4 float32
  # Row 0: a 5-token prompt (2 of them the shared prefix), 3 tokens generated, so 2 fed back,
  # reading 4 and 5 own slots; row 1 stopped at its first token. The prefix: 2 slots x 2 steps.
  got = landscape._useful_kv_bytes(cfg, np.array([5, 3]), [[3, 1], None], prefix_len=2)
  assert got == slot * (4 + 5 + 2 * 2)
