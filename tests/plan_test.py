"""Memory planner: strategy and slice size from a budget, shape-only (nothing allocated)."""

import pytest

from jaxscape.core import plan as planner
from jaxscape.core.config import ModelConfig

LLAMA_100M = ModelConfig(model_type="llama", vocab_size=8000, hidden_size=768, intermediate_size=2048, num_layers=12,
                         num_heads=12, num_kv_heads=12, head_dim=64)
LLAMA2_7B = ModelConfig(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                        num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128)
GIB = 1 << 30


def test_big_budget_takes_all_points_materialized():
  plan = planner.plan_scan(LLAMA_100M, n_points=21, n_dirs=1, batch=80, seq_len=128, budget=64 * GIB)
  assert (plan.strategy, plan.slice_size) == ("materialize", 21)
  assert plan.bytes_per_device <= plan.budget


def test_tight_budget_picks_factored_when_materialize_cannot_fit():
  # 7B in float32: theta + one direction = 56 GB; a materialized point needs another 28 GB.
  plan = planner.plan_scan(LLAMA2_7B, n_points=21, n_dirs=1, batch=8, seq_len=128, budget=70 * GIB)
  assert plan.strategy == "factored" and plan.slice_size >= 1
  assert plan.bytes_per_device <= 70 * GIB
  assert planner.estimate_bytes(LLAMA2_7B, strategy="materialize", points=1, n_dirs=1, batch=8,
                             seq_len=128) > 70 * GIB


def test_slices_are_even_and_multiples_of_point_shards():
  plan = planner.plan_scan(LLAMA_100M, n_points=21, n_dirs=1, batch=80, seq_len=128, budget=4 * GIB, point_shards=4)
  assert plan.slice_size % 4 == 0 and plan.bytes_per_device <= 4 * GIB


def test_no_plan_fits_is_a_clear_error():
  with pytest.raises(ValueError, match="no scan plan fits"):
    planner.plan_scan(LLAMA2_7B, n_points=21, n_dirs=2, batch=8, seq_len=128, budget=8 * GIB)


def test_forced_strategy_and_slice_size():
  plan = planner.plan_scan(LLAMA_100M, n_points=21, n_dirs=1, batch=80, seq_len=128, budget=64 * GIB,
                        strategy="factored", slice_size=5)
  assert (plan.strategy, plan.slice_size, plan.reason) == ("factored", 5, "forced")
  with pytest.raises(ValueError, match="unknown strategy"):
    planner.plan_scan(LLAMA_100M, n_points=21, n_dirs=1, batch=80, seq_len=128, budget=GIB, strategy="fast")


def test_hybrid_counts_materialize_and_factored_memory():
  kw = dict(n_dirs=1, batch=16, seq_len=128)
  est = {s: planner.estimate_bytes(LLAMA_100M, strategy=s, points=5, **kw) for s in planner.STRATEGIES}
  assert est["hybrid"] > est["materialize"] > est["factored"]
  plan = planner.plan_scan(LLAMA_100M, n_points=5, budget=64 * GIB, strategy="hybrid", **kw)
  assert (plan.strategy, plan.slice_size, plan.bytes_per_device) == ("hybrid", 5, est["hybrid"])


def test_auto_decodes_factored_where_weights_outweigh_the_kv_cache():
  # The 100M benchmark workload (16 prompts, 136 slots): KV cache 0.41 of a point's weights.
  auto = lambda **kw: planner.plan_scan(LLAMA_100M, **{**dict(n_points=5, n_dirs=1, seq_len=136, budget=64 * GIB), **kw})
  plan = auto(batch=16)
  assert plan.strategy == "hybrid" and plan.slice_size == 5 and "KV cache" in plan.reason
  assert auto(batch=64).strategy == "materialize"  # KV cache 1.65x the weights
  assert auto(batch=16, n_points=2).strategy == "materialize"  # 2 points read no more than 1 + 1 copies
  assert auto(batch=16, n_points=3, n_dirs=2).strategy == "materialize"
  assert auto(batch=16, n_points=10, point_shards=5).strategy == "materialize"  # 2 points per device
  assert auto(batch=16, strategy="materialize").strategy == "materialize"  # forcing still forces
  # Where hybrid's extra activations do not fit, materialize's slice is larger: it stays.
  mat_5 = planner.estimate_bytes(LLAMA_100M, strategy="materialize", points=5, n_dirs=1, batch=16, seq_len=136)
  assert auto(batch=16, budget=mat_5).strategy == "materialize"
  # A budget that fits only factored still gets factored.
  fac_5 = planner.estimate_bytes(LLAMA_100M, strategy="factored", points=5, n_dirs=1, batch=16, seq_len=136)
  assert auto(batch=16, budget=fac_5).strategy == "factored"


def test_compiled_bytes_counts_arguments_and_temporaries():
  import jax
  import jax.numpy as jnp
  x = jnp.ones((256, 256), jnp.float32)
  compiled = jax.jit(lambda a: (a @ a).sum()).lower(x).compile()
  got = planner.compiled_bytes(compiled)
  assert got is None or got >= x.nbytes  # the argument at least (None: backend does not report)


def test_slice_over_budget_after_compiling_is_shrunk(tmp_path, monkeypatch, capsys):
  """A plan whose compiled slice exceeds the budget is halved until it fits (here: 1 point)."""
  import jax
  from jaxscape import testing
  from jaxscape.core import convert, sharding
  from jaxscape.studies import landscape
  model = convert.load_model(testing.make_tiny_checkpoint(str(tmp_path / "tiny"), "llama", seed=1))
  budget = 1 << 30
  real = planner.compiled_bytes
  sizes = []

  def fake(compiled):  # the first compiled slice (3 points) "needs" more than the budget; later ones are real
    size = real(compiled)
    sizes.append(size)
    return size if len(sizes) > 1 else budget + 1

  monkeypatch.setattr(planner, "compiled_bytes", fake)
  spec = landscape.LandscapeSpec(kind="1d_random", steps=2)
  summary = landscape.run_landscape(model, ["Hi", "Write a poem"], spec, out_dir=str(tmp_path / "out"),
                                    decode=landscape.DecodeSpec(max_new_tokens=3),
                                    options=landscape.ScanOptions(memory_budget=budget, progress=False,
                                                                  mesh=sharding.make_mesh(None, jax.devices()[:1])))
  assert summary["plan"]["slice_size"] == 1  # 3 points fit the budget's estimate, the "compiled" 3 did not
  assert "shrunk" in summary["host"]["memory_plan"]["reason"]
  assert len(sizes) == 2
  assert "over the budget" in capsys.readouterr().err


def test_bfloat16_materialized_points_count_bfloat16_weights():
  """Materialized bfloat16 points are stored in bfloat16 (planner._per_point): half the float32 weight bytes each."""
  import dataclasses

  import jax
  if jax.default_backend() != "cpu":
    pytest.skip("the KV cache is float32 for both dtypes only on CPU (model.kv_dtype)")
  bf16 = dataclasses.replace(LLAMA_100M, compute_dtype="bfloat16")
  kw = dict(strategy="materialize", n_dirs=1, batch=16, seq_len=128)
  per_point = {c.compute_dtype: planner.estimate_bytes(c, points=2, **kw) - planner.estimate_bytes(c, points=1, **kw)
               for c in (LLAMA_100M, bf16)}
  weights = LLAMA_100M.num_params() * 4
  kv_and_acts = per_point["float32"] - weights  # the KV cache: float32 on CPU for both (model.kv_dtype)
  assert per_point["bfloat16"] == pytest.approx(kv_and_acts + weights // 2, rel=1e-6)


def test_stop_when_decided_checks_its_largest_chunk_near_the_budget(tmp_path, monkeypatch):
  """With --stop_when_decided the largest chunk program is compiled for its size when the plan is near the budget."""
  import jax
  from jaxscape import testing
  from jaxscape.core import convert, sharding
  from jaxscape.studies import landscape
  model = convert.load_model(testing.make_tiny_checkpoint(str(tmp_path / "tiny"), "llama", seed=1))
  real = planner.compiled_bytes
  sizes = []
  budget = 4_000_000  # the estimate of 3 points (~3.2 MB) is over half of it: the check runs

  def fake(compiled):  # the first check "needs" more than the budget; later ones are real
    sizes.append(real(compiled))
    return sizes[-1] if len(sizes) > 1 else budget + 1

  monkeypatch.setattr(planner, "compiled_bytes", fake)
  run = lambda out, budget: landscape.run_landscape(  # noqa: E731
      model, ["Hi", "Write a poem"], landscape.LandscapeSpec(kind="1d_random", steps=2), out_dir=str(tmp_path / out),
      decode=landscape.DecodeSpec(max_new_tokens=40, stop_when_decided=True),
      options=landscape.ScanOptions(memory_budget=budget, mesh=sharding.make_mesh(None, jax.devices()[:1]),
                                    progress=False))
  summary = run("near", budget)
  assert summary["plan"]["slice_size"] == 1 and "shrunk" in summary["host"]["memory_plan"]["reason"]
  assert len(sizes) == 2 and 0 < sizes[1] <= budget
  sizes.clear()
  far = run("far", 1 << 30)  # far below the budget: no extra compile
  assert sizes == [] and far["host"]["memory_plan"]["compiled_bytes_per_device"] is None
  assert far["asr"] == summary["asr"]
