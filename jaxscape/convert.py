"""HuggingFace checkpoint dirs <-> (ModelConfig, params pytree), and loading a model dir.

Reads single-file and sharded safetensors with safetensors' numpy API (float32,
bfloat16 via ``ml_dtypes``, float16): no torch at run time. A converted dir
(``experiments.convert``) holds the HF metadata and tokenizer next to an orbax copy
of the params in ``params/``; :func:`load_model` accepts either kind.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import os
import shutil
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxscape import checkpoint
from jaxscape.model import ModelConfig, init_params

PyTree = Any

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
ORBAX_DIR = "params"
# Files copied from an HF dir into a converted dir (tokenizer, chat template, configs).
_META_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "tokenizer.model", "chat_template.jinja", "chat_template.json",
               "added_tokens.json", "vocab.json", "merges.txt")
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


# ------------------------------------------------------------------ name tables
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
  """HF tensor name -> (params path tuple, hf_to_ours, ours_to_hf) for ``cfg``."""
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


# ------------------------------------------------------------------ safetensors


def read_config(model_dir: str, *, compute_dtype: str = "float32") -> ModelConfig:
  """ModelConfig from ``model_dir/config.json``."""
  path = os.path.join(model_dir, "config.json")
  if not os.path.isfile(path):
    raise ValueError(f"{model_dir}: no config.json (is this a model directory?)")
  try:
    with open(path, encoding="utf-8") as f:
      d = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: unreadable config ({e})") from None
  try:
    return ModelConfig.from_hf_dict(d, compute_dtype=compute_dtype)
  except KeyError as e:
    raise ValueError(f"{path}: missing key {e}") from None


def _weight_files(model_dir: str) -> list[str]:
  index = os.path.join(model_dir, SAFETENSORS_INDEX)
  if os.path.isfile(index):
    with open(index, encoding="utf-8") as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
    return [os.path.join(model_dir, f) for f in files]
  single = os.path.join(model_dir, SAFETENSORS)
  if os.path.isfile(single):
    return [single]
  raise ValueError(f"{model_dir}: no {SAFETENSORS} or {SAFETENSORS_INDEX}")


class SafetensorsReader(collections.abc.Mapping):
  """The tensors of an HF dir as a read-only mapping, each read from disk when asked for.

  Loading through it converts and places one tensor at a time, so the host holds one
  tensor's copies at once instead of the whole checkpoint's (a 100M model's load left
  +0.62 GiB resident for 0.36 GiB of params when every tensor was read first).
  """

  def __init__(self, model_dir: str):
    self._where = {}
    for path in _weight_files(model_dir):
      with self._opened(path) as f:
        self._where.update(dict.fromkeys(f.keys(), path))

  @staticmethod
  def _opened(path: str):
    try:
      return safe_open(path, framework="np")
    except Exception as e:  # safetensors raises its own error types for corrupt headers/data
      raise ValueError(f"{path}: corrupt or truncated safetensors file ({type(e).__name__}: {e})") from None

  def __getitem__(self, name: str) -> np.ndarray:
    path = self._where[name]
    with self._opened(path) as f:
      try:
        return f.get_tensor(name)
      except Exception as e:
        raise ValueError(f"{path}: corrupt or truncated safetensors file ({type(e).__name__}: {e})") from None

  def __iter__(self):
    return iter(self._where)

  def __len__(self) -> int:
    return len(self._where)


def read_safetensors(model_dir: str) -> dict[str, np.ndarray]:
  """All tensors of an HF dir as numpy arrays in their stored dtype (bfloat16 via ml_dtypes)."""
  return dict(SafetensorsReader(model_dir))


def hf_to_params(tensors: Mapping[str, np.ndarray], cfg: ModelConfig, *, dtype=np.float32,
                 place: Callable[[np.ndarray], Any] = lambda x: x) -> PyTree:
  """HF tensors -> params pytree (numpy leaves cast to ``dtype``, then passed through ``place``).

  ``place`` (e.g. ``jnp.asarray``) runs as each leaf is converted, so with a lazy ``tensors``
  (:class:`SafetensorsReader`) only one leaf's host copies exist at a time.
  """
  shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  params = jax.tree.map(lambda _: None, shapes, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
  table = name_table(cfg)
  missing = [n for n in table if n not in tensors]
  if missing:
    raise ValueError(f"checkpoint lacks {len(missing)} tensor(s) for {cfg.model_type}, e.g. {missing[0]}")
  for name, (path, to_ours, _) in table.items():
    value = np.asarray(to_ours(tensors[name])).astype(dtype)
    want = _get(shapes, path).shape
    if value.shape != want:
      raise ValueError(f"tensor {name} has shape {value.shape}, config.json implies {want}")
    _set(params, path, place(value))
  return params


def params_to_hf(params: PyTree, cfg: ModelConfig, *, dtype: str | None = None) -> dict[str, np.ndarray]:
  """Params pytree -> HF tensor dict, cast to ``dtype`` (default ``cfg.param_dtype``)."""
  np_dtype = _NP_DTYPES[dtype or cfg.param_dtype]
  out = {}
  for name, (path, _, to_hf) in name_table(cfg).items():
    out[name] = np.ascontiguousarray(to_hf(np.asarray(_get(params, path))).astype(np_dtype))
  return out


def load_hf(model_dir: str, *, compute_dtype: str = "float32") -> tuple[ModelConfig, PyTree]:
  """Read an HF checkpoint dir -> (config, float32 params pytree of numpy arrays).

  bfloat16/float16 files are widened to float32 (exactly), so perturbations are formed in
  float32 as in the reference; ``cfg.param_dtype`` remembers the file dtype for export.
  """
  cfg = read_config(model_dir, compute_dtype=compute_dtype)
  return cfg, hf_to_params(read_safetensors(model_dir), cfg)


def save_hf(params: PyTree, cfg: ModelConfig, out_dir: str, *, dtype: str | None = None,
            source_dir: str | None = None) -> None:
  """Write an HF checkpoint dir: ``config.json``, ``model.safetensors``.

  Args:
    dtype: tensor dtype in the file (default ``cfg.param_dtype``).
    source_dir: copy tokenizer files and ``generation_config.json`` from here.
  """
  os.makedirs(out_dir, exist_ok=True)
  hf_cfg = cfg.to_hf_dict()
  if dtype:
    hf_cfg["dtype"] = dtype
  if source_dir:
    _copy_meta(source_dir, out_dir, skip=("config.json",))
    src_cfg = os.path.join(source_dir, "config.json")
    if os.path.isfile(src_cfg):  # keep token ids and other keys we do not model
      with open(src_cfg, encoding="utf-8") as f:
        hf_cfg = {**json.load(f), **hf_cfg}
      hf_cfg.pop("torch_dtype", None)
      hf_cfg.pop("rope_theta", None)
      hf_cfg.pop("rope_scaling", None)
  with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf_cfg, f, indent=2)
  save_file(params_to_hf(params, cfg, dtype=dtype), os.path.join(out_dir, SAFETENSORS),
            metadata={"format": "pt"})


def _copy_meta(src: str, dst: str, skip=()) -> None:
  for name in _META_FILES:
    if name not in skip and os.path.isfile(os.path.join(src, name)):
      shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


# ------------------------------------------------------------------ model dirs


@dataclasses.dataclass
class Model:
  """A loaded model: config, params pytree, tokenizer and generation token ids."""
  cfg: ModelConfig
  params: PyTree
  tokenizer: Any
  eos_ids: tuple[int, ...]
  pad_id: int
  path: str


def eos_ids_of(model_dir: str) -> tuple[int, ...]:
  """EOS ids from ``generation_config.json`` (int or list), else ``config.json``."""
  for name in ("generation_config.json", "config.json"):
    path = os.path.join(model_dir, name)
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        eos = json.load(f).get("eos_token_id")
      if eos is not None:
        return tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))
  return ()


def load_tokenizer(model_dir: str):
  """``transformers.AutoTokenizer`` from the dir, left padding."""
  import transformers  # deferred: slow import, not needed by the pure functions above
  try:
    tok = transformers.AutoTokenizer.from_pretrained(model_dir, padding_side="left")
  except Exception as e:
    raise ValueError(f"{model_dir}: cannot load tokenizer ({type(e).__name__}: {e})") from None
  return tok


def is_converted_dir(model_dir: str) -> bool:
  return os.path.isdir(os.path.join(model_dir, ORBAX_DIR))


def load_model(model_dir: str, *, compute_dtype: str = "float32") -> Model:
  """Load an HF checkpoint dir or a converted dir (orbax ``params/``) with its tokenizer."""
  if not os.path.isdir(model_dir):
    raise ValueError(f"model dir {model_dir} does not exist")
  cfg = read_config(model_dir, compute_dtype=compute_dtype)
  if is_converted_dir(model_dir):
    abstract = jax.eval_shape(lambda: init_params(dataclasses.replace(cfg, param_dtype="float32"),
                                                  jax.random.key(0)))
    params = checkpoint.restore_params(os.path.join(model_dir, ORBAX_DIR), abstract)
  else:
    params = hf_to_params(SafetensorsReader(model_dir), cfg, place=jnp.asarray)
  params = jax.tree.map(jnp.asarray, params)  # orbax restores are placed already; a no-op for them
  tok = load_tokenizer(model_dir)
  eos = eos_ids_of(model_dir) or ((tok.eos_token_id,) if tok.eos_token_id is not None else ())
  if not eos:
    raise ValueError(f"{model_dir}: no eos_token_id in generation_config.json, config.json or tokenizer")
  pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
  return Model(cfg=cfg, params=params, tokenizer=tok, eos_ids=eos, pad_id=int(pad), path=model_dir)


def convert(hf_dir: str, out_dir: str, *, overwrite: bool = False) -> str:
  """HF dir -> converted dir: metadata and tokenizer copied, params saved with orbax.

  Refuses an existing ``out_dir`` unless ``overwrite``. Returns the absolute out dir.
  """
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and not overwrite:
    raise ValueError(f"{out_dir} already exists (pass --overwrite to replace it)")
  _, params = load_hf(hf_dir)
  tmp = out_dir + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  _copy_meta(hf_dir, tmp)
  checkpoint.save_params(os.path.join(tmp, ORBAX_DIR), params)
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.replace(tmp, out_dir)  # the destination appears only when complete
  return out_dir
