"""Continuous batching: the engine's tokens are greedy decoding's at every point, for any slots / group / interval."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscape import decode, engine, model, perturb

N = 24


@pytest.fixture(scope="module")
def setup():
  cfg = model.ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=3,
                          num_heads=4, num_kv_heads=2, head_dim=8)
  params = model.init_params(cfg, jax.random.key(0), std=0.3)
  rng = np.random.default_rng(0)
  B, T = 5, 9
  tokens = rng.integers(3, 64, (B, T)).astype(np.int32)
  mask = np.ones((B, T), bool)
  for row, pad in enumerate([0, 2, 3, 5, 6]):  # sorted by length, as landscape passes them
    mask[row, :pad] = False
  d = jax.tree.map(lambda x: 0.5 * jnp.sin(13 * x + 1), params)
  stacked = perturb.stack_directions([d])
  coeffs = np.array([[0.0], [0.5], [-1.0]], np.float32)
  return cfg, params, stacked, coeffs, tokens, mask


def _reference(setup, prefix):
  """Greedy decoding of every prompt at every materialized point, one call per point."""
  cfg, params, stacked, coeffs, tokens, mask = setup
  return np.stack([np.asarray(decode.greedy_generate(
      perturb.materialize(params, stacked, jnp.asarray(c)), tokens, mask, np.int32(N), np.int32(0), prefix,
      cfg=cfg, max_new_tokens=N, eos_ids=(1,)).tokens) for c in coeffs])


# More slots than rows; slots fewer than a group's rows plus the buffer's; a group per point
# with a one-step interval; groups spanning points (factored prefill).
@pytest.mark.parametrize("prefill,slots,group,interval,with_prefix", [
    ("materialize", 18, 3, 4, True), ("materialize", 4, 2, 3, False), ("materialize", 6, 5, 1, True),
    ("factored", 4, 3, 8, True)])
def test_engine_gives_greedy_tokens(setup, prefill, slots, group, interval, with_prefix):
  cfg, params, stacked, coeffs, tokens, mask = setup
  spec = engine.EngineSpec(slots=slots, group=group, interval=interval, prefill=prefill)
  prefix = jnp.asarray([5, 6, 7], jnp.int32) if with_prefix else None
  out = engine.decode_rows(params, stacked, coeffs, tokens, mask, 0, prefix, cfg=cfg, spec=spec, max_new_tokens=N,
                           eos_ids=(1,))
  want = _reference(setup, prefix)
  np.testing.assert_array_equal(np.asarray(out["tokens"]), want)
  lengths = np.asarray(out["lengths"])
  np.testing.assert_array_equal(lengths, [[next((k + 1 for k, t in enumerate(r) if t == 1), N) for r in p]
                                          for p in want])
  # Row-steps count every slot of every decoding step: a whole number of steps, at least one
  # slot-step per decoded token (prefill emits each row's first).
  row_steps = int(out["decode_row_steps"])
  assert row_steps % slots == 0 and row_steps >= lengths.sum() - lengths.size


def test_stopping_rows_keeps_their_tokens(setup):
  cfg, params, stacked, coeffs, tokens, mask = setup
  spec = engine.EngineSpec(slots=4, group=2, interval=2)
  full = _reference(setup, None)
  out = engine.decode_rows(params, stacked, coeffs, tokens, mask, 0, None, cfg=cfg, spec=spec, max_new_tokens=N,
                           eos_ids=(1,), is_decided=lambda row: len(row) >= 5)
  lengths, truncated = out["lengths"], out["truncated"]
  # Stopped rows were looked at once per interval: they hold a prefix of the full decode's tokens.
  for p, b in np.ndindex(lengths.shape):
    n = lengths[p, b]
    np.testing.assert_array_equal(out["tokens"][p, b, :n], full[p, b, :n])
    assert truncated[p, b] == (n < N and full[p, b, n - 1] != 1)
    assert not truncated[p, b] or 5 <= n < 5 + spec.interval
  assert truncated.any()


def test_engine_spec_checks_its_shape():
  with pytest.raises(ValueError, match="refill interval"):
    engine.EngineSpec(slots=4, group=2, interval=9)
  with pytest.raises(ValueError, match="prefill group"):
    engine.EngineSpec(slots=4, group=5, interval=4)
  spec = engine.plan_engine(1680, 80, strategy="materialize")
  assert spec.slots <= 1680 and spec.interval <= engine.MAX_REFILL_INTERVAL and spec.group <= 80
  assert engine.plan_engine(6, 3, strategy="factored").slots == 6


def test_prefill_widths_cover_the_prompt():
  assert engine.prefill_widths(59) == (16, 32, 48, 59)  # quarters rounded up to multiples of 8, then the whole
  assert engine.prefill_widths(3) == (3,)


def test_one_program_per_phase_whatever_the_number_of_intervals(setup):
  """The host-checked scan compiles its start and its refill interval once, then only reruns them."""
  from jax._src import monitoring
  cfg, params, stacked, coeffs, tokens, mask = setup
  spec = engine.EngineSpec(slots=3, group=2, interval=1)  # many intervals
  compiles = []
  listener = lambda event, secs, **kw: compiles.append(event) if event.endswith("backend_compile_duration") else None
  monitoring.register_event_duration_secs_listener(listener)
  try:
    out = engine.decode_rows(params, stacked, coeffs, tokens, mask, 0, None, cfg=cfg, spec=spec, max_new_tokens=N,
                             eos_ids=(1,), is_decided=lambda row: False)
  finally:
    monitoring.unregister_event_duration_listener(listener)
  assert int(out["decode_row_steps"]) >= N * spec.slots  # at least N intervals of one step ran
  assert len(compiles) <= 2, compiles
