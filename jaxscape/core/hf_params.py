"""HF tensor names <-> the params pytree: one name table for the Llama family, and the conversions it drives.

Pure and in memory (no files; see ``jaxscape.core.convert`` for checkpoint dirs). HF's per-layer
tensors ``model.layers.{i}.self_attn.q_proj.weight`` are slice ``i`` of one stacked leaf
``params["layers"]["attn"]["q"]["kernel"]`` [L, D, H*E] (see ``jaxscape.core.model``):
:func:`hf_to_params` fills each stacked leaf layer by layer, :func:`params_to_hf` writes the slices
back under their per-layer names.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxscape.core.config import ModelConfig
from jaxscape.core.model import init_params
from jaxscape.errors import InputError

PyTree = Any

_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


# One table for the whole Llama family: HF name -> (our path, transform to ours, transform back).
# llama, mistral and qwen2 share names; they differ only in which entries exist.

def _t(x):
  return x.T


def _id(x):
  return x


def _layer_table(i: int, cfg: ModelConfig) -> dict[str, tuple[tuple, Callable, Callable]]:
  hf = f"model.layers.{i}"
  ours = ("layers", i)
  table = {
      f"{hf}.input_layernorm.weight": (ours + ("attn_norm", "scale"), _id, _id),
      f"{hf}.post_attention_layernorm.weight": (ours + ("mlp_norm", "scale"), _id, _id),
  }
  for name in ("q", "k", "v", "o"):
    table[f"{hf}.self_attn.{name}_proj.weight"] = (ours + ("attn", name, "kernel"), _t, _t)
    if cfg.attention_bias and name != "o":
      table[f"{hf}.self_attn.{name}_proj.bias"] = (ours + ("attn", name, "bias"), _id, _id)
  for name in ("gate", "up", "down"):
    table[f"{hf}.mlp.{name}_proj.weight"] = (ours + ("mlp", name, "kernel"), _t, _t)
    if cfg.mlp_bias:
      table[f"{hf}.mlp.{name}_proj.bias"] = (ours + ("mlp", name, "bias"), _id, _id)
  return table


def name_table(cfg: ModelConfig) -> dict[str, tuple[tuple, Callable, Callable]]:
  """HF tensor name -> (params path tuple, hf_to_ours, ours_to_hf) for ``cfg``.

  A layer tensor's path is ``("layers", i, "attn", "q", "kernel")``: slice ``i`` of the stacked
  leaf ``params["layers"]["attn"]["q"]["kernel"]`` (see :func:`get_tensor`).
  """
  table = {
      "model.embed_tokens.weight": (("embed", "embedding"), _id, _id),
      "model.norm.weight": (("final_norm", "scale"), _id, _id),
  }
  if not cfg.tie_word_embeddings:
    table["lm_head.weight"] = (("lm_head", "kernel"), _t, _t)
  for i in range(cfg.num_layers):
    table.update(_layer_table(i, cfg))
  return table


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree, path, value):
  for k in path[:-1]:
    tree = tree[k]
  tree[path[-1]] = value


def get_tensor(params: PyTree, path: tuple):
  """The tensor at a :func:`name_table` path: ``("layers", i, *rest)`` is slice i of a stacked leaf.

  Also reads the former layout (``params["layers"]`` a list of per-layer dicts).
  """
  if path[0] != "layers":
    return _get(params, path)
  layers = params["layers"]
  if isinstance(layers, (list, tuple)):
    return _get(layers[path[1]], path[2:])
  return _get(layers, path[2:])[path[1]]


def abstract_params(cfg: ModelConfig) -> PyTree:
  """``jax.ShapeDtypeStruct`` tree of ``cfg``'s params in ``cfg.param_dtype``, layers stacked."""
  return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))  # init_params stacks the layers


def hf_to_params(tensors: Mapping[str, np.ndarray], cfg: ModelConfig, *, dtype=None,
                 place: Callable[[np.ndarray], Any] = lambda x: x) -> PyTree:
  """HF tensors -> params pytree, layers stacked (numpy leaves cast to ``dtype``, then passed through ``place``).

  ``dtype`` None: each leaf in its resident dtype (``ModelConfig.resident_dtype``): matrices in the
  compute dtype (bfloat16 residency halves θ's bytes), vectors float32.

  Each stacked leaf [L, ...] is filled layer by layer into one preallocated array and then
  placed (``place``, e.g. ``jax.device_put``), so with a lazy ``tensors``
  (:class:`SafetensorsReader`) the host holds one stacked leaf's copies at a time, never the
  checkpoint twice.
  """
  shapes = abstract_params(cfg)
  params = jax.tree.map(lambda _: None, shapes, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
  table = name_table(cfg)
  missing = [n for n in table if n not in tensors]
  if missing:
    raise InputError(f"checkpoint lacks {len(missing)} tensor(s) for {cfg.model_type}, e.g. {missing[0]}")
  stacks: dict[tuple, list] = {}  # stacked leaf path -> [(layer, HF name, transform)]
  for name, (path, to_ours, _) in table.items():
    if path[0] == "layers":
      stacks.setdefault(path[2:], []).append((path[1], name, to_ours))
      continue
    want = _get(shapes, path).shape
    value = np.asarray(to_ours(tensors[name])).astype(_np_dtype(dtype, cfg, len(want)))
    if value.shape != want:
      raise InputError(f"tensor {name} has shape {value.shape}, config.json implies {want}")
    _set(params, path, place(value))
  for rest, entries in stacks.items():
    want = _get(shapes["layers"], rest).shape
    stacked = np.empty(want, _np_dtype(dtype, cfg, len(want) - 1))
    for i, name, to_ours in entries:
      value = np.asarray(to_ours(tensors[name]))
      if value.shape != want[1:]:
        raise InputError(f"tensor {name} has shape {value.shape}, config.json implies {want[1:]}")
      stacked[i] = value.astype(stacked.dtype)
    _set(params, ("layers",) + rest, place(stacked))
    del stacked
  return params


def _np_dtype(dtype, cfg: ModelConfig, ndim_per_layer: int):
  """``dtype``, or (None) the numpy form of the leaf's resident dtype (bfloat16 via ``ml_dtypes``)."""
  if dtype is not None:
    return dtype
  return _NP_DTYPES[jnp.dtype(cfg.resident_dtype(ndim_per_layer)).name]


def to_residency(params: PyTree, cfg: ModelConfig) -> PyTree:
  """``params`` (float32, e.g. restored from orbax) with each leaf cast to its resident dtype, one leaf
  at a time (the float32 leaf is dropped once cast)."""
  def one(path, w):
    stacked = jax.tree_util.keystr(path[:1]) == "['layers']"
    want = cfg.resident_dtype(w.ndim - 1 if stacked else w.ndim)
    return w if w.dtype == want else jax.device_put(w).astype(want)
  return jax.tree_util.tree_map_with_path(one, params)


def params_to_hf(params: PyTree, cfg: ModelConfig, *, dtype: str | None = None) -> dict[str, np.ndarray]:
  """Params pytree (layers stacked, or the former list) -> HF tensor dict with per-layer names,
  cast to ``dtype`` (default ``cfg.param_dtype``)."""
  np_dtype = _NP_DTYPES[dtype or cfg.param_dtype]
  host: dict[int, np.ndarray] = {}  # one host copy per stacked leaf, sliced per layer

  def tensor(path):
    if path[0] != "layers" or isinstance(params["layers"], (list, tuple)):
      return np.asarray(get_tensor(params, path))
    leaf = _get(params["layers"], path[2:])
    if id(leaf) not in host:
      host[id(leaf)] = np.asarray(leaf)
    return host[id(leaf)][path[1]]

  out = {}
  for name, (path, _, to_hf) in name_table(cfg).items():
    out[name] = np.ascontiguousarray(to_hf(tensor(path)).astype(np_dtype))
  return out
