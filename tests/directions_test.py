"""Tests for jaxscape.directions: random/interpolation directions, grid axes, storage."""

import json
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscape import directions as dl

V, D, H, HD, K, F = 32, 16, 4, 4, 2, 24


@pytest.fixture(autouse=True)
def _strict_rank_promotion():
  with jax.numpy_rank_promotion("raise"):
    yield


def make_params(seed=0, *, tied=False, bias=False, dtype=np.float32, layers=2):
  """Tiny params tree following the jaxscape.model layout."""
  rng = np.random.default_rng(seed)
  a = lambda *s: jnp.asarray(rng.normal(size=s), dtype)

  def lin(i, o):
    d = {"kernel": a(i, o)}
    if bias:
      d["bias"] = a(o)
    return d

  p = {
      "embed": {"embedding": a(V, D)},
      "layers": [{
          "attn_norm": {"scale": a(D)},
          "attn": {"q": lin(D, H * HD), "k": lin(D, K * HD), "v": lin(D, K * HD),
                   "o": {"kernel": a(H * HD, D)}},
          "mlp_norm": {"scale": a(D)},
          "mlp": {"gate": {"kernel": a(D, F)}, "up": {"kernel": a(D, F)}, "down": {"kernel": a(F, D)}},
      } for _ in range(layers)],
      "final_norm": {"scale": a(D)},
  }
  if not tied:
    p["lm_head"] = {"kernel": a(D, V)}
  return p


def flat(tree):
  return dict(zip(dl.leaf_paths(tree), jax.tree.leaves(tree)))


def assert_trees_equal(a, b):
  assert dl.leaf_paths(a) == dl.leaf_paths(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    assert np.array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------------------- paths


def test_leaf_paths_and_index():
  p = make_params(bias=True)
  paths = dl.leaf_paths(p)
  assert len(paths) == len(jax.tree.leaves(p))
  for want in ("embed/embedding", "layers/0/attn/q/kernel", "layers/1/attn/q/bias", "layers/1/mlp/down/kernel",
               "final_norm/scale", "lm_head/kernel", "layers/0/attn_norm/scale"):
    assert want in paths
  assert paths[0] == "embed/embedding"  # sorted dict keys, flatten order
  assert dl.path_index("layers/0/attn/q/kernel") == zlib.crc32(b"layers/0/attn/q/kernel")
  assert dl.path_index("layers/0/attn/q/kernel") != dl.path_index("layers/1/attn/q/kernel")


# ---------------------------------------------------------------------- random directions


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_layer_norm_matches_weight_norm(dtype):
  p = make_params(dtype=dtype, bias=True)
  d = dl.random_direction(p, seed=3)
  assert jax.tree.structure(d) == jax.tree.structure(p)
  fp, fd = flat(p), flat(d)
  for path, w in fp.items():
    x = np.asarray(fd[path])
    assert x.dtype == np.float32 and x.shape == w.shape, path
    if "norm" in path:
      assert not x.any(), path
    else:
      w32 = np.asarray(w, np.float32)
      np.testing.assert_allclose(np.linalg.norm(x), np.linalg.norm(w32), rtol=1e-5, err_msg=path)
      assert not np.allclose(x / np.linalg.norm(x), w32 / np.linalg.norm(w32))  # random, not w itself


def test_filter_norm_per_output_unit():
  p = make_params(bias=True)
  d = flat(dl.random_direction(p, seed=1, norm="filter"))
  for path, w in flat(p).items():
    x, w = np.asarray(d[path]), np.asarray(w)
    if "norm" in path:
      assert not x.any()
    elif path == "embed/embedding":  # [V, D]: per vocab entry (row)
      np.testing.assert_allclose(np.linalg.norm(x, axis=1), np.linalg.norm(w, axis=1), rtol=1e-5)
      assert not np.allclose(np.linalg.norm(x, axis=0), np.linalg.norm(w, axis=0), rtol=1e-3)
    elif w.ndim == 2:  # kernels [in, out]: per column
      np.testing.assert_allclose(np.linalg.norm(x, axis=0), np.linalg.norm(w, axis=0), rtol=1e-5, err_msg=path)
      assert not np.allclose(np.linalg.norm(x, axis=1), np.linalg.norm(w, axis=1), rtol=1e-3), path
    else:  # biases: whole tensor
      assert w.ndim == 1, path
      np.testing.assert_allclose(np.linalg.norm(x), np.linalg.norm(w), rtol=1e-5, err_msg=path)


def test_none_norm_is_documented_key_derivation():
  p = make_params()
  seed, index = 7, 2
  d = flat(dl.random_direction(p, seed=seed, index=index, norm="none", exclude=()))
  base = jax.random.fold_in(jax.random.PRNGKey(seed), index)
  for path, w in flat(p).items():
    key = jax.random.fold_in(base, np.uint32(zlib.crc32(path.encode())))
    np.testing.assert_allclose(d[path], jax.random.normal(key, w.shape, jnp.float32), rtol=1e-6, atol=1e-6,
                               err_msg=path)


def test_leaf_draw_does_not_depend_on_other_leaves():
  untied, tied = make_params(), make_params(tied=True)
  du, dt = flat(dl.random_direction(untied, seed=5)), flat(dl.random_direction(tied, seed=5))
  assert "lm_head/kernel" in du and "lm_head/kernel" not in dt
  for path in dt:
    assert np.array_equal(du[path], dt[path]), path
  # Dropping a layer changes nothing in the remaining one.
  d1 = flat(dl.random_direction(make_params(layers=1), seed=5))
  assert np.array_equal(d1["layers/0/mlp/up/kernel"], du["layers/0/mlp/up/kernel"])


def test_regeneration_bit_identical_and_index_seed_differ():
  p = make_params()
  a = dl.random_direction(p, seed=11, index=0)
  assert_trees_equal(a, dl.random_direction(p, seed=11, index=0))
  for other in (dl.random_direction(p, seed=11, index=1), dl.random_direction(p, seed=12, index=0)):
    fa, fo = flat(a), flat(other)
    for path in fa:
      if "norm" not in path:
        assert not np.allclose(fa[path], fo[path]), path


def test_exclude_patterns():
  p = make_params(bias=True)
  d = flat(dl.random_direction(p, seed=0, exclude=(r"attn/q", r"^embed/")))
  for path, x in d.items():
    zero = not np.asarray(x).any()
    assert zero == (path.startswith("layers/") and "/attn/q/" in path or path == "embed/embedding"), path
  # A bare string is one pattern, not a set of characters.
  d2 = flat(dl.random_direction(p, seed=0, exclude="norm"))
  assert not d2["final_norm/scale"].any() and d2["lm_head/kernel"].any()
  with pytest.raises(ValueError, match=r"invalid exclude regex '\('"):
    dl.random_direction(p, seed=0, exclude=("(",))
  with pytest.raises(ValueError, match="unknown norm 'unit'"):
    dl.random_direction(p, seed=0, norm="unit")
  with pytest.raises(ValueError, match="index must be >= 0, got -1"):
    dl.random_direction(p, seed=0, index=-1)


def test_random_direction_inside_jit():
  p = make_params()
  f = jax.jit(lambda params: dl.random_direction(params, seed=4, index=1))
  inside, outside = flat(f(p)), flat(dl.random_direction(p, seed=4, index=1))
  for path in outside:
    np.testing.assert_allclose(inside[path], outside[path], rtol=1e-6, atol=1e-7, err_msg=path)


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_sharded_params_same_direction(axis_type):
  if jax.device_count() < 2:
    pytest.skip("needs >= 2 devices (XLA_FLAGS=--xla_force_host_platform_device_count)")
  mesh = jax.make_mesh((2,), ("model",), axis_types=(getattr(jax.sharding.AxisType, axis_type),),
                       devices=jax.devices()[:2])
  p = make_params()
  spec = lambda x: jax.sharding.PartitionSpec(*([None] * (x.ndim - 1) + ["model"]))
  ps = jax.tree.map(lambda x: jax.device_put(x, jax.sharding.NamedSharding(mesh, spec(x))), p)
  ds, d = dl.random_direction(ps, seed=2), dl.random_direction(p, seed=2)
  for x, y, w in zip(jax.tree.leaves(ds), jax.tree.leaves(d), jax.tree.leaves(ps)):
    assert x.sharding.is_equivalent_to(w.sharding, x.ndim)
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)  # norms: reduction order may differ
  # The Gaussian draws themselves do not depend on sharding (threefry_partitionable).
  raw_s, raw = dl.random_direction(ps, seed=2, norm="none"), dl.random_direction(p, seed=2, norm="none")
  for x, y in zip(jax.tree.leaves(raw_s), jax.tree.leaves(raw)):
    assert np.array_equal(x, y)


# --------------------------------------------------------------------- orthogonalize


def test_orthogonalize():
  p = make_params()
  d1, d2 = dl.random_direction(p, seed=0, index=0), dl.random_direction(p, seed=0, index=1)
  dot = lambda a, b: sum(float(np.vdot(np.asarray(x, np.float64), np.asarray(y, np.float64)))
                         for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert abs(dot(d2, d1)) > 1e-3 * np.sqrt(dot(d1, d1) * dot(d2, d2))  # not orthogonal to start with
  o = dl.orthogonalize(d2, d1)
  assert abs(dot(o, d1)) < 1e-5 * np.sqrt(dot(d1, d1) * dot(o, o))
  # Exactly d2 minus a multiple of d1 (no rescaling).
  coef = dot(d2, d1) / dot(d1, d1)
  for x, a, b in zip(jax.tree.leaves(o), jax.tree.leaves(d2), jax.tree.leaves(d1)):
    np.testing.assert_allclose(x, np.asarray(a) - coef * np.asarray(b), rtol=1e-5, atol=1e-6)
  zero = jax.tree.map(jnp.zeros_like, d1)
  assert_trees_equal(dl.orthogonalize(d2, zero), d2)
  with pytest.raises(ValueError, match="same tree"):
    dl.orthogonalize(d2, make_params(tied=True))


# --------------------------------------------------------------------- interpolation


def test_interpolation_direction_and_mismatch():
  a, b = make_params(0, dtype=jnp.bfloat16), make_params(1, dtype=jnp.bfloat16)
  d = dl.interpolation_direction(a, b)
  for path, x in flat(d).items():
    want = np.asarray(flat(b)[path], np.float32) - np.asarray(flat(a)[path], np.float32)
    assert x.dtype == jnp.float32 and np.array_equal(x, want), path
  bad = make_params(1)
  bad["layers"][1]["mlp"]["up"]["kernel"] = jnp.zeros((D, F + 1))
  with pytest.raises(ValueError, match=r"different architecture.*layers/1/mlp/up/kernel.*\(16, 24\).*\(16, 25\)"):
    dl.interpolation_direction(make_params(0), bad)
  with pytest.raises(ValueError, match="different architecture.*lm_head/kernel"):
    dl.interpolation_direction(make_params(0), make_params(1, tied=True))


# ------------------------------------------------------------------- recipes, kinds


def test_recipe_json_roundtrip_and_validation():
  r = dl.RandomRecipe(seed=9, index=1, norm="filter", exclude=["norm", "embed"], orthogonalize_to=0)
  assert r.exclude == ("norm", "embed")
  j = r.to_json()
  assert j["kind"] == "random"
  assert dl.RandomRecipe.from_json(json.loads(json.dumps(j))) == r
  assert dl.RandomRecipe.from_json(json.dumps(j)) == r
  assert hash(r) == hash(dl.RandomRecipe.from_json(j))
  with pytest.raises(ValueError, match="orthogonalize_to must differ"):
    dl.RandomRecipe(seed=0, index=1, orthogonalize_to=1)
  with pytest.raises(ValueError, match="unknown norm"):
    dl.RandomRecipe(seed=0, norm="bogus")
  with pytest.raises(ValueError, match="not a random-direction recipe"):
    dl.RandomRecipe.from_json({"kind": "interpolation"})


def test_directions_for_kinds():
  a, b, c = make_params(0), make_params(1), make_params(2)
  dirs, recipes = dl.directions_for("1d_random", a, seed=3, num_directions=3)
  assert len(dirs) == 3 and [r.index for r in recipes] == [0, 1, 2]
  for d, r in zip(dirs, recipes):
    assert_trees_equal(d, dl.random_direction(a, seed=3, index=r.index))

  dirs, recipes = dl.directions_for("2d_random", a, seed=3)
  assert [r.index for r in recipes] == [0, 1] and recipes[1].orthogonalize_to is None
  assert_trees_equal(dirs[1], dl.random_direction(a, seed=3, index=1))

  dirs, recipes = dl.directions_for("2d_random", a, seed=3, orthogonal=True)
  assert recipes[1].orthogonalize_to == 0
  assert_trees_equal(dirs[1], recipes[1].generate(a))
  assert_trees_equal(dirs[1], dl.orthogonalize(dl.random_direction(a, seed=3, index=1), dirs[0]))

  dirs, recipes = dl.directions_for("1d_interpolation", a, params_b=b)
  assert recipes == [None]
  assert_trees_equal(dirs[0], dl.interpolation_direction(a, b))

  dirs, recipes = dl.directions_for("2d_interpolation", a, params_b=b, params_c=c)
  assert recipes == [None, None]
  assert_trees_equal(dirs[1], dl.interpolation_direction(a, c))

  dirs, recipes = dl.directions_for("2d_interpolation_random", a, params_b=b, seed=4)
  assert recipes[0] is None and recipes[1] == dl.RandomRecipe(4, 0, "layer", ("norm",))
  assert_trees_equal(dirs[1], dl.random_direction(a, seed=4))  # normalised against model a
  assert not np.array_equal(flat(dirs[1])["lm_head/kernel"], flat(dl.random_direction(b, seed=4))["lm_head/kernel"])


def test_directions_for_errors():
  a = make_params()
  with pytest.raises(ValueError, match="unknown kind '3d_random'.*1d_random, 2d_random, 1d_interpolation, "
                                       "2d_interpolation, 2d_interpolation_random"):
    dl.directions_for("3d_random", a)
  with pytest.raises(ValueError, match="needs params_b"):
    dl.directions_for("1d_interpolation", a)
  with pytest.raises(ValueError, match="needs params_c"):
    dl.directions_for("2d_interpolation", a, params_b=a)
  with pytest.raises(ValueError, match="does not use params_b"):
    dl.directions_for("1d_random", a, params_b=a)
  with pytest.raises(ValueError, match="num_directions > 1 needs kind 1d_random"):
    dl.directions_for("2d_random", a, num_directions=2)
  with pytest.raises(ValueError, match="num_directions must be >= 1, got 0"):
    dl.directions_for("1d_random", a, num_directions=0)
  with pytest.raises(ValueError, match="orthogonal is only supported for kind 2d_random"):
    dl.directions_for("1d_random", a, orthogonal=True)


# ------------------------------------------------------------------------ grid axes


def test_grid_axes_reference_layout():
  steps, m, e = 4, 0.5, 2
  (x,) = dl.grid_axes("1d_random", steps=steps, multiplier=m)
  np.testing.assert_array_equal(x, np.linspace(-m / 2, m / 2, steps + 1))
  assert x.dtype == np.float64 and len(x) == 5 and x[0] == -0.25 and x[-1] == 0.25
  # The reference walks: centre - steps/2 * step, then + step (step = m / steps).
  np.testing.assert_allclose(x, -steps / 2 * (m / steps) + np.arange(steps + 1) * (m / steps), atol=1e-12)

  (t,) = dl.grid_axes("1d_interpolation", steps=steps, extra_steps=e)
  np.testing.assert_array_equal(t, np.linspace(-e / steps, 1 + e / steps, steps + 2 * e + 1))
  assert len(t) == 9
  np.testing.assert_allclose(t, (np.arange(steps + 2 * e + 1) - e) / steps, atol=1e-12)
  assert t[e] == 0.0 and abs(t[e + steps] - 1.0) < 1e-12

  t0, r = dl.grid_axes("2d_interpolation_random", steps=steps, multiplier=m, extra_steps=e)
  np.testing.assert_array_equal(t0, t)
  np.testing.assert_array_equal(r, x)
  assert [len(a) for a in dl.grid_axes("2d_random", steps=3)] == [4, 4]
  assert [len(a) for a in dl.grid_axes("2d_interpolation", steps=3, extra_steps=1)] == [6, 6]


def test_grid_coords_row_major():
  c1 = dl.grid_coords([np.array([0.0, 1.0, 2.0])])
  assert c1.shape == (3, 1) and c1.dtype == np.float64
  c2 = dl.grid_coords([np.array([0.0, 1.0]), np.array([10.0, 20.0, 30.0])])
  np.testing.assert_array_equal(c2, [[0, 10], [0, 20], [0, 30], [1, 10], [1, 20], [1, 30]])
  with pytest.raises(ValueError, match="1 or 2 axes"):
    dl.grid_coords([np.zeros(2)] * 3)


@pytest.mark.parametrize("kwargs,match", [
    ({"steps": 0}, "steps must be > 0, got 0"),
    ({"steps": -3}, "steps must be > 0, got -3"),
    ({"steps": 2.5}, "steps must be > 0, got 2.5"),
    ({"steps": 4, "multiplier": 0.0}, "multiplier must be finite and nonzero, got 0.0"),
    ({"steps": 4, "multiplier": float("nan")}, "multiplier must be finite and nonzero"),
    ({"steps": 4, "extra_steps": -1}, "extra_steps must be an integer >= 0, got -1"),
])
def test_grid_axes_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    dl.grid_axes("1d_interpolation", **kwargs)


def test_grid_axes_unknown_kind():
  with pytest.raises(ValueError, match="unknown kind 'random'.*2d_interpolation_random"):
    dl.grid_axes("random", steps=4)


# ------------------------------------------------------------------------- storage


def test_save_load_random_is_recipe_only_and_bit_identical(tmp_path):
  p = make_params()
  dirs, recipes = dl.directions_for("2d_random", p, seed=21, orthogonal=True, norm="filter")
  out = tmp_path / "dirs"
  dl.save_directions(out, dirs, recipes)
  assert sorted(os.listdir(out)) == ["directions.json"]  # nothing but the recipes
  manifest = json.loads((out / "directions.json").read_text())
  assert [e["index"] for e in manifest["directions"]] == [0, 1]
  loaded, lrec = dl.load_directions(out, p)
  assert lrec == recipes
  for a, b in zip(dirs, loaded):
    assert_trees_equal(a, b)
  with pytest.raises(ValueError, match="already holds directions"):
    dl.save_directions(out, dirs, recipes)
  dl.save_directions(out, dirs, recipes, overwrite=True)
  with pytest.raises(ValueError, match="no directions.json"):
    dl.load_directions(tmp_path / "missing", p)


def test_save_load_interpolation_orbax(tmp_path):
  a, b = make_params(0), make_params(1, dtype=jnp.bfloat16)
  dirs, recipes = dl.directions_for("2d_interpolation_random", a, params_b=b, seed=5)
  out = tmp_path / "dirs"
  cwd = os.getcwd()
  try:  # relative paths are made absolute for orbax
    os.chdir(tmp_path)
    dl.save_directions("dirs", dirs, recipes)
  finally:
    os.chdir(cwd)
  assert os.path.isdir(out / "direction_0")
  loaded, lrec = dl.load_directions(out, a)
  assert lrec[0] is None and lrec[1] == recipes[1]
  assert jax.tree.structure(loaded[0]) == jax.tree.structure(a)
  for x, y in zip(dirs, loaded):
    assert_trees_equal(x, y)

  bad = make_params(0)
  bad["layers"][0]["attn"]["o"]["kernel"] = jnp.zeros((H * HD + 1, D))
  with pytest.raises(ValueError, match=r"do not match the model.*layers/0/attn/o/kernel.*\(17, 16\).*\(16, 16\)"):
    dl.load_directions(out, bad)
  with pytest.raises(ValueError, match="do not match the model.*lm_head/kernel"):
    dl.load_directions(out, make_params(0, tied=True))


def test_check_matches():
  p = make_params()
  dl.check_matches(p, dl.random_direction(p, seed=0))
  with pytest.raises(ValueError, match=r"do not match the model.*embed/embedding.*\(32, 16\).*\(32, 8\)"):
    dl.check_matches(p, {**p, "embed": {"embedding": jnp.zeros((V, 8))}})
  with pytest.raises(ValueError, match="do not match the model"):
    dl.check_matches(p, make_params(layers=1))
