"""HuggingFace checkpoint dirs <-> (ModelConfig, params pytree), and loading a model dir.

Reads single-file and sharded safetensors with safetensors' numpy API (float32,
bfloat16 via ``ml_dtypes``, float16): no torch at run time. A converted dir
(``experiments.convert``) holds the HF metadata and tokenizer next to an orbax copy
of the params in ``params/``; :func:`load_model` accepts either kind.

HF tensor names map to param paths through ``jaxscape.core.hf_params``. Layers are stacked on
a leading axis; :func:`stack_layers` / :func:`unstack_layers` map between this layout and the
former one (``params["layers"]`` a list of per-layer dicts), which converted dirs written before
the change still hold: they are stacked on load.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxscape.core import checkpoint
from jaxscape.core.config import ModelConfig
from jaxscape.core.hf_params import abstract_params, hf_to_params, name_table, params_to_hf, to_residency
from jaxscape.errors import InputError

PyTree = Any

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
ORBAX_DIR = "params"
# Files copied from an HF dir into a converted dir (tokenizer, chat template, configs).
_META_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "tokenizer.model", "chat_template.jinja", "chat_template.json",
               "added_tokens.json", "vocab.json", "merges.txt")


# ------------------------------------------------------------------ layer stacking


def _stack(xs):
  if all(isinstance(x, np.ndarray) for x in xs):
    out = np.empty((len(xs),) + xs[0].shape, xs[0].dtype)
    for i, x in enumerate(xs):
      out[i] = x
    return out
  if all(isinstance(x, jax.ShapeDtypeStruct) for x in xs):
    return jax.ShapeDtypeStruct((len(xs),) + tuple(xs[0].shape), xs[0].dtype)
  return jnp.stack(xs)


def stack_layers(tree: PyTree) -> PyTree:
  """The former layout -> stacked: ``tree["layers"]``, a list of L per-layer dicts, becomes one
  dict whose leaves have a leading [L] axis (``jnp.stack``; numpy leaves stay numpy).

  Works on params, directions and LoRA adapters alike; a tree already stacked (or without
  ``"layers"``) is returned as it is. ``jax.ShapeDtypeStruct`` leaves give stacked abstract shapes.
  """
  layers = tree.get("layers") if isinstance(tree, dict) else None
  if not isinstance(layers, (list, tuple)):
    return tree
  if not layers:
    raise ValueError("cannot stack an empty list of layers")
  return {**tree, "layers": jax.tree.map(lambda *xs: _stack(xs), *layers)}


def unstack_layers(tree: PyTree) -> PyTree:
  """Stacked -> the former layout: ``tree["layers"]`` becomes a list of L per-layer dicts (``x[i]``).

  Inverse of :func:`stack_layers`; a tree already in the list layout is returned as it is.
  """
  layers = tree.get("layers") if isinstance(tree, dict) else None
  if layers is None or isinstance(layers, (list, tuple)):
    return tree
  leaves = jax.tree.leaves(layers)
  if not leaves:
    return {**tree, "layers": []}
  L = np.shape(leaves[0])[0]
  if isinstance(leaves[0], jax.ShapeDtypeStruct):
    one = jax.tree.map(lambda s: jax.ShapeDtypeStruct(tuple(s.shape[1:]), s.dtype), layers)
    return {**tree, "layers": [one] * L}
  return {**tree, "layers": [jax.tree.map(lambda x, i=i: x[i], layers) for i in range(L)]}


def fingerprint_tree(tree: Any) -> str:
  """sha256 over every leaf's path, dtype, shape and bytes (hex, 16 chars)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.asarray(leaf)
    h.update(jax.tree_util.keystr(path).encode())
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:16]


def fingerprint(tree: PyTree) -> str:
  """:func:`fingerprint_tree` of the values as float32, per layer (:func:`unstack_layers`): the
  same model held in bfloat16 or float32 (a bfloat16 checkpoint) keeps its fingerprint, and a results
  dir written before the layers were stacked still resumes. (A run's identity names its model by it.)"""
  return fingerprint_tree(unstack_layers(jax.tree.map(lambda x: np.asarray(x, np.float32), tree)))


# ------------------------------------------------------------------ safetensors


def read_config(model_dir: str, *, compute_dtype: str = "float32") -> ModelConfig:
  """ModelConfig from ``model_dir/config.json``."""
  path = os.path.join(model_dir, "config.json")
  if not os.path.isfile(path):
    raise InputError(f"{model_dir}: no config.json (is this a model directory?)")
  try:
    with open(path, encoding="utf-8") as f:
      d = json.load(f)
  except (OSError, ValueError) as e:  # ValueError: bad JSON or not UTF-8
    raise InputError(f"{path}: unreadable config ({e})") from None
  if not isinstance(d, dict):
    raise InputError(f"{path}: expected a JSON object, got {type(d).__name__}")
  try:
    return ModelConfig.from_hf_dict(d, compute_dtype=compute_dtype)
  except KeyError as e:
    raise InputError(f"{path}: missing key {e}") from None
  except (TypeError, ValueError, ZeroDivisionError) as e:  # a bad field value; InputErrors get the path too
    raise InputError(f"{path}: {e}") from None


def _weight_files(model_dir: str) -> list[str]:
  index = os.path.join(model_dir, SAFETENSORS_INDEX)
  if os.path.isfile(index):
    try:
      with open(index, encoding="utf-8") as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # bad JSON, no weight_map, wrong types
      raise InputError(f"{index}: malformed index, expected {{\"weight_map\": {{tensor: file}}}} "
                       f"({type(e).__name__}: {e})") from None
    return [os.path.join(model_dir, f) for f in files]
  single = os.path.join(model_dir, SAFETENSORS)
  if os.path.isfile(single):
    return [single]
  raise InputError(f"{model_dir}: no {SAFETENSORS} or {SAFETENSORS_INDEX}")


class SafetensorsReader(collections.abc.Mapping):
  """The tensors of an HF dir as a read-only mapping, each read from disk when asked for.

  Loading through it converts and places one tensor at a time, so the host holds one
  tensor's copies at once instead of the whole checkpoint's (reading every tensor first left
  about twice the params' bytes resident after the load).
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
      raise InputError(f"{path}: corrupt or truncated safetensors file ({type(e).__name__}: {e})") from None

  def __getitem__(self, name: str) -> np.ndarray:
    path = self._where[name]
    with self._opened(path) as f:
      try:
        return f.get_tensor(name)
      except Exception as e:
        raise InputError(f"{path}: corrupt or truncated safetensors file ({type(e).__name__}: {e})") from None

  def __iter__(self):
    return iter(self._where)

  def __len__(self) -> int:
    return len(self._where)


def read_safetensors(model_dir: str) -> dict[str, np.ndarray]:
  """All tensors of an HF dir as numpy arrays in their stored dtype (bfloat16 via ml_dtypes)."""
  return dict(SafetensorsReader(model_dir))


def load_hf(model_dir: str, *, compute_dtype: str = "float32") -> tuple[ModelConfig, PyTree]:
  """Read an HF checkpoint dir -> (config, float32 params pytree of numpy arrays).

  bfloat16/float16 files are widened to float32 (exactly), so perturbations are formed in
  float32 as in the reference; ``cfg.param_dtype`` remembers the file dtype for export.
  """
  cfg = read_config(model_dir, compute_dtype=compute_dtype)
  # Lazily, tensor by tensor: the host holds the stacked params and one file tensor, not both in full.
  return cfg, hf_to_params(SafetensorsReader(model_dir), cfg, dtype=np.float32)


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


def save_model(params: PyTree, cfg: ModelConfig, tokenizer, out_dir: str, *,
               orbax_copy: bool = False, dtype: str | None = None, eos_ids: tuple[int, ...] | None = None) -> str:
  """Write an HF checkpoint dir that jaxscape and ``transformers`` both load.

  ``config.json`` and ``model.safetensors`` (:func:`save_hf`), the tokenizer files,
  ``generation_config.json`` with the EOS/BOS/pad ids (also written into ``config.json``),
  and with ``orbax_copy`` the params as orbax under ``params/``. Returns ``out_dir``. Used by
  finetuning (``studies.finetune``) and GGUF conversion (:func:`gguf_to_hf_dir`).

  Args:
    eos_ids: generation stop ids for ``generation_config.json`` (default: the tokenizer's EOS),
      e.g. a source model's several end-of-turn ids.
  """
  os.makedirs(out_dir, exist_ok=True)
  params = jax.tree.map(np.asarray, params)
  save_hf(params, cfg, out_dir, dtype=dtype)
  tokenizer.save_pretrained(out_dir)
  ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
         "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id}
  path = os.path.join(out_dir, "config.json")
  with open(path, encoding="utf-8") as f:
    hf_cfg = json.load(f)
  hf_cfg.update(ids)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(hf_cfg, f, indent=2, sort_keys=True)
  with open(os.path.join(out_dir, "generation_config.json"), "w", encoding="utf-8") as f:
    json.dump({**ids, "eos_token_id": list(eos_ids or [ids["eos_token_id"]]), "do_sample": False}, f, indent=2,
              sort_keys=True)
  if orbax_copy:
    checkpoint.save_params(os.path.join(out_dir, ORBAX_DIR), params, overwrite=True)
  return out_dir


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
      try:
        with open(path, encoding="utf-8") as f:
          eos = json.load(f).get("eos_token_id")
        if eos is not None:
          return tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))
      except (ValueError, TypeError, AttributeError) as e:  # bad JSON, not an object, non-integer ids
        raise InputError(f"{path}: cannot read eos_token_id ({type(e).__name__}: {e})") from None
  return ()


# Tokenizer classes loaded directly, not through AutoTokenizer: the generic tokenizers-backed ones,
# which AutoTokenizer resolves to the very same class. AutoTokenizer's config machinery imports torch
# when it is installed, which makes loading the toy's tokenizer several times slower (BENCHMARKS.md).
_DIRECT_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(model_dir: str):
  """The dir's tokenizer (``transformers.AutoTokenizer``'s class for it), left padding."""
  import transformers  # deferred: slow import, not needed by the pure functions above
  try:
    with open(os.path.join(model_dir, "tokenizer_config.json"), encoding="utf-8") as f:
      name = json.load(f).get("tokenizer_class")
  except (OSError, ValueError):
    name = None
  try:
    if name in _DIRECT_TOKENIZER_CLASSES and os.path.isfile(os.path.join(model_dir, "tokenizer.json")):
      tok = getattr(transformers, name).from_pretrained(model_dir, padding_side="left")
    else:
      tok = transformers.AutoTokenizer.from_pretrained(model_dir, padding_side="left")
  except Exception as e:
    raise InputError(f"{model_dir}: cannot load tokenizer ({type(e).__name__}: {e})") from None
  return tok


def is_converted_dir(model_dir: str) -> bool:
  return os.path.isdir(os.path.join(model_dir, ORBAX_DIR))


def load_model(model_dir: str, *, compute_dtype: str = "float32") -> Model:
  """Load a model with its tokenizer: an HF checkpoint dir, a converted dir (orbax ``params/``),
  a GGUF file (a ``.gguf`` path, a dir holding exactly one, or ``package:NAME``; see
  ``jaxscape.core.gguf_io``), dequantized, or a hub id ``org/name[@revision]`` (its snapshot in the
  hub cache, downloaded if missing; see ``jaxscape.core.hub``). ``Model.path`` is the local path loaded.

  The weights are held in their resident dtype (``ModelConfig.resident_dtype``): with
  ``compute_dtype="bfloat16"`` θ's matrices are bfloat16 (the values the model computes with),
  converted tensor by tensor as they are read; float32 keeps float32."""
  from jaxscape.core import gguf_io, hub  # noqa: PLC0415 - light; keeps this module's import list HF-only

  model_dir = hub.resolve(model_dir)  # an existing local path is returned as it is
  gguf_file = gguf_io.find_file(model_dir)
  if gguf_file is not None:
    return _load_gguf(gguf_file, compute_dtype=compute_dtype)
  if not os.path.isdir(model_dir):
    raise InputError(f"model dir {model_dir} does not exist")
  cfg = read_config(model_dir, compute_dtype=compute_dtype)
  if is_converted_dir(model_dir):
    params = to_residency(restore_converted(os.path.join(model_dir, ORBAX_DIR), cfg), cfg)
  else:
    # device_put, not jnp.asarray: a transfer, where asarray compiles a copy program per shape.
    params = hf_to_params(SafetensorsReader(model_dir), cfg, place=jax.device_put)
  tok = load_tokenizer(model_dir)
  eos = eos_ids_of(model_dir) or ((tok.eos_token_id,) if tok.eos_token_id is not None else ())
  if not eos:
    raise InputError(f"{model_dir}: no eos_token_id in generation_config.json, config.json or tokenizer")
  pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
  return Model(cfg=cfg, params=params, tokenizer=tok, eos_ids=eos, pad_id=int(pad), path=model_dir)


def gguf_to_hf_dir(path: str, out_dir: str, *, dtype: str = "float32", overwrite: bool = False) -> str:
  """GGUF file -> a plain HF checkpoint dir (config, safetensors, tokenizer, generation config).

  Written to ``out_dir + '.tmp'`` and renamed when complete. Returns the absolute ``out_dir``.
  """
  if dtype not in ("float32", "bfloat16"):
    raise InputError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and not overwrite:
    raise InputError(f"{out_dir} already exists (pass --overwrite to replace it)")
  model = load_model(path)
  tmp = out_dir + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  save_model(model.params, model.cfg, model.tokenizer, tmp, dtype=dtype, eos_ids=model.eos_ids)
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.replace(tmp, out_dir)
  return out_dir


def _load_gguf(path: str, *, compute_dtype: str) -> Model:
  from jaxscape.core import gguf_io  # noqa: PLC0415

  hf_cfg, tensors, tok, eos = gguf_io.load(path, lambda d: name_table(ModelConfig.from_hf_dict(d)))
  cfg = ModelConfig.from_hf_dict(hf_cfg, compute_dtype=compute_dtype)
  params = hf_to_params(tensors, cfg, place=jax.device_put)
  eos = eos or ((tok.eos_token_id,) if tok.eos_token_id is not None else ())
  if not eos:
    raise InputError(f"{path}: no eos_token_id in the GGUF metadata")
  pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
  return Model(cfg=cfg, params=params, tokenizer=tok, eos_ids=eos, pad_id=int(pad), path=path)


def restore_converted(path: str, cfg: ModelConfig) -> PyTree:
  """The float32 params of a converted dir's orbax ``params/``, layers stacked.

  A dir written before layers were stacked (``layers`` saved as a list of per-layer dicts) is
  stacked on load, one leaf at a time; re-run ``experiments.convert`` to store it stacked.
  """
  abstract = abstract_params(dataclasses.replace(cfg, param_dtype="float32"))
  saved = checkpoint.saved_tree(path)
  if not (isinstance(saved, dict) and isinstance(saved.get("layers"), (list, tuple))):
    # orbax restores the saved shapes whatever ``abstract`` says: a config.json edited after
    # conversion would otherwise run a model other than the one it describes.
    _check_saved_shapes(path, _leaf_shapes(saved), _leaf_shapes(abstract))
    return checkpoint.restore_params(path, abstract)
  old = checkpoint.restore_params(path)  # as saved: numpy, the former per-layer layout
  layers = old.pop("layers")
  _check_saved_shapes(path, _leaf_shapes(unstack_layers({**old, "layers": layers})),
                      _leaf_shapes(unstack_layers(abstract)))
  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract["layers"])
  paths = [tuple(_key(k) for k in p) for p, _ in flat]
  # One stacked leaf at a time, dropping its per-layer arrays as it is filled.
  stacked = [jax.device_put(_stack([_pop(layer, rest) for layer in layers]).astype(np.float32, copy=False))
             for rest in paths]
  return jax.tree.map(jax.device_put, {**old, "layers": jax.tree_util.tree_unflatten(treedef, stacked)})


def _leaf_shapes(tree: PyTree) -> list[tuple[str, tuple]]:
  """``(path, shape)`` of every leaf: arrays, ``ShapeDtypeStruct`` or orbax metadata."""
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
  return [(jax.tree_util.keystr(p), tuple(np.shape(x))) for p, x in flat]


def _check_saved_shapes(path: str, got: list, want: list) -> None:
  if got != want:
    w, g = next(((w, g) for w, g in zip(want, got) if w != g), (len(want), len(got)))
    raise InputError(f"{path}: the saved params do not match config.json (config: {w}, saved: {g}); "
                     "convert the checkpoint again")


def _key(k):
  return getattr(k, "key", getattr(k, "idx", k))


def _pop(tree, path):
  for k in path[:-1]:
    tree = tree[k]
  return tree.pop(path[-1])


def convert(hf_dir: str, out_dir: str, *, overwrite: bool = False) -> str:
  """HF dir -> converted dir: metadata and tokenizer copied, params saved with orbax (layers stacked).

  Refuses an existing ``out_dir`` unless ``overwrite``. Returns the absolute out dir.
  """
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and not overwrite:
    raise InputError(f"{out_dir} already exists (pass --overwrite to replace it)")
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
