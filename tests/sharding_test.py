"""Same results on 1 device, 8 simulated devices (points:8, points:4,model:2) and 2 processes x 4 devices."""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscape import testing
from jaxscape.core import convert, decode, directions, perturb, prompts, sharding, slices
from jaxscape.studies import landscape
from jaxscape.core import model as model_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["Write a tutorial on how to make a bridge", "Hi", "Develop a plan for the garden",
           "Explain how a computer network works", "Create a list of ideas"]
NEW = 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("shard") / "tiny")
  testing.make_tiny_checkpoint(d, "llama", seed=7)
  return convert.load_model(d)


def needs_devices(n):
  return pytest.mark.skipif(jax.device_count() < n, reason=f"needs {n} devices (XLA_FLAGS in conftest)")


def test_parse_mesh():
  assert sharding.parse_mesh(None, 8) == {"points": 8, "model": 1}
  assert sharding.parse_mesh("points:4,model:2", 8) == {"points": 4, "model": 2}
  assert sharding.parse_mesh("model:2,points:-1", 8) == {"points": 4, "model": 2}
  for bad in ("points:3", "points:x", "gpus:8", "points:0,model:8"):
    with pytest.raises(ValueError):
      sharding.parse_mesh(bad, 8)


@needs_devices(2)
def test_param_specs_of_stacked_layers_keep_the_layer_axis_whole():
  from jax.sharding import PartitionSpec as P
  cfg = testing.tiny_config("qwen2", num_layers=2)  # biases; tied embeddings
  params = jax.eval_shape(lambda: model_lib.init_params(cfg, jax.random.key(0)))
  specs = sharding.param_specs(params, sharding.make_mesh("points:1,model:2", jax.devices()[:2]))
  layers = specs["layers"]
  assert layers["attn"]["q"]["kernel"] == P(None, None, "model")  # [L, D, H*E]: columns
  assert layers["attn"]["q"]["bias"] == P(None, "model")
  assert layers["attn"]["o"]["kernel"] == P(None, "model", None)  # rows
  assert layers["mlp"]["down"]["kernel"] == P(None, "model", None)
  assert layers["attn_norm"]["scale"] == P() and specs["final_norm"]["scale"] == P()
  assert specs["embed"]["embedding"] == P("model", None)
  # The layer axis is not what has to divide: a split axis that does not is replicated.
  odd = {"layers": {"attn": {"q": {"kernel": jax.ShapeDtypeStruct((3, 16, 5), jnp.float32)}}}}
  assert sharding.param_specs(odd, sharding.make_mesh("points:1,model:2", jax.devices()[:2]))["layers"]["attn"]["q"][
      "kernel"] == P()
  # Direction shardings: one more leading axis, replicated.
  ds = sharding.direction_shardings(params, sharding.make_mesh("points:1,model:2", jax.devices()[:2]))
  assert ds["layers"]["attn"]["q"]["kernel"].spec == P(None, None, None, "model")


def _decode_on(tiny, mesh, strategy):
  texts, add = prompts.render(PROMPTS, tiny.tokenizer)
  tokens, mask = prompts.tokenize(texts, tiny.tokenizer, add_special_tokens=add, pad_id=tiny.pad_id)
  d = directions.random_direction(tiny.params, seed=11)
  coeffs = np.linspace(-0.6, 0.6, 8, dtype=np.float32)[:, None]
  params = sharding.put(tiny.params, sharding.param_shardings(tiny.params, mesh))
  stacked = sharding.put(perturb.stack_directions([d]), sharding.direction_shardings(tiny.params, mesh))
  c = sharding.put(coeffs, sharding.points_sharding(mesh))
  rep = sharding.replicated(mesh)
  gen = slices.decode_slice(params, stacked, c, *sharding.put((tokens, mask), (rep, rep)), np.int32(NEW),
                            np.int32(tiny.pad_id), strategy=strategy,
                            decoder=decode.Decoder(cfg=sharding.config_for_mesh(tiny.cfg, mesh), max_new_tokens=NEW,
                                                 eos_ids=tiny.eos_ids))
  if mesh.shape["model"] > 1:  # the params really are split over the model axis
    q = params["layers"]["attn"]["q"]["kernel"]  # [L, D, H*E]: columns split, the layer axis whole
    assert q.sharding.shard_shape(q.shape) == (q.shape[0], q.shape[1], q.shape[2] // mesh.shape["model"])
  return np.asarray(gen.tokens), tokens, mask, d, coeffs


@needs_devices(8)
@pytest.mark.parametrize("strategy", ["materialize", "factored"])
def test_points_split_is_bit_identical_and_model_split_within_ties(tiny, strategy):
  one, tokens, mask, d, coeffs = _decode_on(tiny, sharding.make_mesh(None, jax.devices()[:1]), strategy)
  p8, *_ = _decode_on(tiny, sharding.make_mesh("points:8"), strategy)
  np.testing.assert_array_equal(one, p8)
  p4m2, *_ = _decode_on(tiny, sharding.make_mesh("points:4,model:2"), strategy)
  ties = 0
  for p, r in np.argwhere((one != p4m2).any(-1)):
    step = int(np.argmax(one[p, r] != p4m2[p, r]))
    w = perturb.materialize(tiny.params, perturb.stack_directions([d]), jnp.asarray(coeffs[p]))
    toks = np.concatenate([tokens[r], one[p, r, :step]])[None]
    msk = np.concatenate([mask[r], np.ones(step, bool)])[None]
    logits = np.sort(np.asarray(model_lib.forward(w, jnp.asarray(toks), cfg=tiny.cfg, mask=jnp.asarray(msk)))[0, -1])
    assert logits[-1] - logits[-2] <= 1e-4, f"point {p} row {r}: model split changed a token beyond a float tie"
    ties += 1
  print(f"points:4,model:2 ({strategy}): {ties} float-tie divergences of {one.shape[0] * one.shape[1]} rows")


@needs_devices(2)
def test_model_split_keeps_fused_projections_on_their_shards(tiny):
  """q/k/v and gate/up run as one matmul; on a model split each device must concatenate only its columns."""
  mesh = sharding.make_mesh("points:1,model:2", jax.devices()[:2])
  texts, add = prompts.render(PROMPTS, tiny.tokenizer)
  tokens, mask = prompts.tokenize(texts, tiny.tokenizer, add_special_tokens=add, pad_id=tiny.pad_id)
  params = sharding.put(tiny.params, sharding.param_shardings(tiny.params, mesh))
  stacked = sharding.put(perturb.stack_directions([directions.random_direction(tiny.params, seed=11)]),
                         sharding.direction_shardings(tiny.params, mesh))
  c = sharding.put(np.zeros((1, 1), np.float32), sharding.points_sharding(mesh))
  rep = sharding.replicated(mesh)
  tokens, mask = sharding.put((tokens, mask), (rep, rep))

  def compiled(cfg):
    return slices.decode_slice.lower(params, stacked, c, tokens, mask, np.int32(NEW), np.int32(tiny.pad_id),
                                     decoder=decode.Decoder(cfg=cfg, max_new_tokens=NEW, eos_ids=tiny.eos_ids),
                                     strategy="materialize").compile()

  split, unaware = compiled(sharding.config_for_mesh(tiny.cfg, mesh)), compiled(tiny.cfg)
  assert "collective-permute" in unaware.as_text()  # what a plain concatenation along the split axis costs
  assert "collective-permute" not in split.as_text()
  assert split.memory_analysis().temp_size_in_bytes < unaware.memory_analysis().temp_size_in_bytes


@needs_devices(8)
def test_landscape_same_summary_on_one_and_eight_devices(tiny, tmp_path):
  spec = landscape.LandscapeSpec(kind="1d_random", steps=6)
  dec = landscape.DecodeSpec(max_new_tokens=NEW)
  outs = {}
  for name, mesh in (("one", sharding.make_mesh(None, jax.devices()[:1])), ("p8", sharding.make_mesh("points:8"))):
    out = str(tmp_path / name)
    s = landscape.run_landscape(tiny, PROMPTS, spec, out_dir=out, decode=dec,
                                options=landscape.ScanOptions(mesh=mesh, progress=False))
    outs[name] = (s["asr"], s["visage"], open(os.path.join(out, "generations.jsonl"), "rb").read())
  assert outs["one"] == outs["p8"]


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  model = testing.make_tiny_checkpoint(str(tmp_path / "tiny"), "llama", seed=7)
  prompt_file = tmp_path / "p.jsonl"
  prompt_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
  common = [sys.executable, "-m", "experiments.run_grid", f"--model={model}", f"--prompts={prompt_file}",
            "--steps=8", f"--max_new_tokens={NEW}"]
  env1 = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  subprocess.run(common + [f"--out={tmp_path / 'single'}"], cwd=REPO, env=env1, check=True, capture_output=True,
                 timeout=300)
  env4 = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  port = _free_port()
  procs = [subprocess.Popen(common + [f"--out={tmp_path / 'multi'}", f"--coordinator=localhost:{port}",
                                      "--num_processes=2", f"--process_id={i}"], cwd=REPO, env=env4,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
  single = json.load(open(tmp_path / "single" / "summary.json"))
  multi = json.load(open(tmp_path / "multi" / "summary.json"))
  assert multi["mesh"] == {"points": 8, "model": 1}
  assert (single["asr"], single["visage"]) == (multi["asr"], multi["visage"])
  assert (tmp_path / "single" / "generations.jsonl").read_bytes() == (tmp_path / "multi" / "generations.jsonl").read_bytes()


def test_split_cpu_host_sets_device_count_only_when_unset():
  code = ("import jax; from jaxscape import sharding; n = sharding.split_cpu_host(3); "
          "print(n, jax.device_count(), sharding.split_cpu_host(3))")
  base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  run = lambda env: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,  # noqa: E731
                                   timeout=120, check=True).stdout.split()
  assert run({**base, "JAX_PLATFORMS": "cpu"}) == ["3", "3", "0"]  # the second call: backend already up
  preset = {**base, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  assert run(preset) == ["0", "1", "0"]  # the user's XLA_FLAGS win
  one_point = ("import jax; from jaxscape import sharding; "
               "print(sharding.split_cpu_host(0, points=1), jax.device_count())")
  out = subprocess.run([sys.executable, "-c", one_point], env={**base, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                       text=True, timeout=120, check=True).stdout.split()
  assert out == ["0", "1"]  # one point: splitting would only idle devices


@pytest.mark.parametrize("points,cores,expected", [
    (21, 2, 2),  # 22 slots for 21 points: one idle slot of 22
    (5, 2, 1),  # 6 slots for 5: 20% idle, slower than one device (measured on the 100M model)
    (3, 2, 1), (1, 2, 1), (441, 2, 2),
    (21, 8, 7),  # 7 x 3 = 21 exactly; 8 devices would pad to 24 (14% idle)
    (5, 4, 1), (10, 4, 2), (40, 4, 4), (4, 1, 1),
])
def test_cpu_devices_for_avoids_idle_point_slots(points, cores, expected):
  d = sharding.cpu_devices_for(points, cores)
  assert d == expected
  assert d * -(-points // d) - points <= sharding.MAX_IDLE_POINT_SLOTS * points
