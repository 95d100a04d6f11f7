"""bfloat16 residency: θ and the directions held in the compute dtype, the same tokens, no float32 copies."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscape import testing
from jaxscape.core import convert, decode, directions, perturb, prompts, slices
from jaxscape.studies import landscape

PROMPTS = ["Write a tutorial on how to make a bridge", "Hi", "Develop a plan for the garden"]
NEW = 12
# Widths no activation has, so a float32 buffer of a stacked leaf's shape is one in the HLO.
DIMS = dict(num_layers=3, hidden_size=48, intermediate_size=80, num_heads=4, num_kv_heads=2, head_dim=12)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  return testing.make_tiny_checkpoint(str(tmp_path_factory.mktemp("res") / "tiny"), "llama", seed=5, **DIMS)


def _rows(model):
  texts, add = prompts.render(PROMPTS, model.tokenizer)
  return prompts.tokenize(texts, model.tokenizer, add_special_tokens=add, pad_id=model.pad_id)


def test_matrices_are_held_in_the_compute_dtype_vectors_in_float32(ckpt):
  bf16, f32 = convert.load_model(ckpt, compute_dtype="bfloat16"), convert.load_model(ckpt)
  for path, w in jax.tree_util.tree_flatten_with_path(bf16.params)[0]:
    stacked = jax.tree_util.keystr(path).startswith("['layers']")
    per_layer = w.ndim - 1 if stacked else w.ndim
    assert w.dtype == (jnp.bfloat16 if per_layer >= 2 else jnp.float32), jax.tree_util.keystr(path)
  assert all(w.dtype == jnp.float32 for w in jax.tree.leaves(f32.params))
  # The held values are the ones bfloat16 compute used over float32 residency (the model's cast at each use).
  for a, b in zip(jax.tree.leaves(bf16.params), jax.tree.leaves(f32.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(a.dtype)))
  d = directions.random_direction(bf16.params, seed=1)
  assert all(x.dtype == w.dtype for x, w in zip(jax.tree.leaves(d), jax.tree.leaves(bf16.params)))


@pytest.mark.parametrize("strategy", ["materialize", "factored"])
def test_origin_tokens_equal_bfloat16_compute_over_float32_residency(ckpt, strategy):
  bf16, f32 = convert.load_model(ckpt, compute_dtype="bfloat16"), convert.load_model(ckpt)
  old_cfg = dataclasses.replace(f32.cfg, compute_dtype="bfloat16")  # before: float32 θ, bfloat16 matmuls
  tokens, mask = _rows(bf16)
  coeffs = jnp.zeros((2, 1), jnp.float32)

  def run(model, cfg):
    dirs = perturb.stack_directions([directions.random_direction(model.params, seed=2)])
    dec = decode.Decoder(cfg=cfg, max_new_tokens=NEW, eos_ids=model.eos_ids)
    return np.asarray(slices.decode_slice(model.params, dirs, coeffs, tokens, mask, np.int32(NEW),
                                          np.int32(model.pad_id), decoder=dec, strategy=strategy).tokens)

  np.testing.assert_array_equal(run(bf16, bf16.cfg), run(f32, old_cfg))


@pytest.mark.parametrize("strategy", ["materialize", "factored"])
def test_no_float32_copy_of_a_stacked_leaf_in_the_compiled_scan(ckpt, strategy):
  """XLA:CPU would convert a stacked bfloat16 operand of the layer scan's dynamic slice to float32 once, whole:
  the leaves are sliced as bits (perturb.layer_slice) and formed per point in one fused cast (perturb.materialize)."""
  model = convert.load_model(ckpt, compute_dtype="bfloat16")
  tokens, mask = _rows(model)
  dirs = perturb.stack_directions([directions.random_direction(model.params, seed=2)])
  dec = decode.Decoder(cfg=model.cfg, max_new_tokens=NEW, eos_ids=model.eos_ids)
  hlo = slices.decode_slice.lower(model.params, dirs, jnp.zeros((2, 1), jnp.float32), tokens, mask, np.int32(NEW),
                                  np.int32(model.pad_id), decoder=dec, strategy=strategy).compile().as_text()
  stacked = {tuple(w.shape) for w in jax.tree.leaves(model.params["layers"]) if w.ndim == 3}
  assert stacked, "the test model has stacked matrices"
  buffers = _buffer_lines(hlo)
  for shape in stacked:
    dims = ",".join(map(str, shape))
    pattern = rf"= f32\[(\d+,)?{dims}\]"  # a stack, or a stack per point
    assert not [line for line in buffers if re.search(pattern, line)], (strategy, pattern)
  assert any(re.search(r"= bf16\[", line) for line in buffers)  # the check sees buffers at all


def _buffer_lines(hlo: str) -> list[str]:
  """The instructions of an HLO module's non-fused computations (entry, loop bodies, branches): those
  whose results are buffers. Instructions inside fused (and single-op wrapped) computations are not."""
  lines, inside_fusion = [], False
  for line in hlo.splitlines():
    head = re.match(r"^(ENTRY )?%([\w.\-]+) ", line)
    if head:
      inside_fusion = "computation" in head.group(2)
    elif not inside_fusion and line.startswith("  "):
      lines.append(line)
  return lines


def test_fingerprint_is_of_the_values_whatever_the_residency(tiny_dir):
  """A bfloat16 checkpoint held in bfloat16 or widened to float32: the same values, one fingerprint."""
  path = tiny_dir("llama-bf16")
  a, b = convert.load_model(path, compute_dtype="bfloat16"), convert.load_model(path)
  assert convert.fingerprint(a.params) == convert.fingerprint(b.params)
  assert a.cfg.residency == "bfloat16" and b.cfg.residency == "float32"
