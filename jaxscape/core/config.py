"""``ModelConfig``: the architecture of a Llama-family model (llama, mistral, qwen2), read from and
written to HF ``config.json`` dicts. Frozen and hashable, so it is a static ``jit`` argument."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxscape.errors import InputError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a Llama-family model. Frozen and hashable: a static jit argument."""
  model_type: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  # (("rope_type", "llama3"), ("factor", 8.0), ...) or () for plain RoPE.
  rope_scaling: tuple = ()
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  mlp_bias: bool = False
  sliding_window: int | None = None
  param_dtype: str = "float32"  # storage dtype of the checkpoint
  compute_dtype: str = "float32"  # matmul dtype; norms, softmax and logits stay float32
  # Devices the weights are split over (a mesh's "model" axis, ``sharding.config_for_mesh``):
  # projections fused into one matmul are laid out shard by shard (``perturb.matmul_split``).
  model_shards: int = 1

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise InputError(f"unsupported model_type {self.model_type!r}; supported: "
                       f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    if self.num_heads % self.num_kv_heads:
      raise InputError(f"num_attention_heads={self.num_heads} is not a multiple of "
                       f"num_key_value_heads={self.num_kv_heads}")
    if self.model_shards < 1:
      raise InputError(f"model_shards must be >= 1, got {self.model_shards}")
    if self.compute_dtype not in _DTYPES or self.param_dtype not in _DTYPES:
      raise InputError(f"dtypes must be one of {sorted(_DTYPES)}, got param_dtype="
                       f"{self.param_dtype!r}, compute_dtype={self.compute_dtype!r}")

  @property
  def dtype(self):
    """The compute dtype as a jnp dtype."""
    return _DTYPES[self.compute_dtype]

  @property
  def residency(self) -> str:
    """The dtype θ's and the directions' matrices are held in: the compute dtype. Vectors (norm
    scales, biases) stay float32, as the model computes with them in float32."""
    return self.compute_dtype

  def resident_dtype(self, ndim_per_layer: int):
    """The dtype a leaf is held in, by its rank per layer (a stacked ``[L, ...]`` leaf's rank less 1)."""
    return _DTYPES[self.residency] if ndim_per_layer >= 2 else jnp.float32

  @classmethod
  def from_hf_dict(cls, d: dict, *, compute_dtype: str = "float32") -> "ModelConfig":
    """From a ``config.json`` dict, in the transformers 4 or 5 spelling."""
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise InputError(f"unsupported model_type {model_type!r}; supported: "
                       f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    heads = d["num_attention_heads"]
    # transformers 5: rope_parameters={"rope_type", "rope_theta", ...}; 4: rope_theta + rope_scaling.
    rope = dict(d.get("rope_parameters") or {})
    scaling = dict(d.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
    rope.update(scaling)
    if "type" in rope and "rope_type" not in rope:
      rope["rope_type"] = rope.pop("type")
    rope.pop("type", None)
    if rope.get("rope_type", "default") == "default":
      rope = {}
    elif rope["rope_type"] not in ("linear", "llama3"):
      raise InputError(f"unsupported rope_type {rope['rope_type']!r}; supported: default, linear, llama3")
    window = _sliding_window(d, model_type)
    dtype = str(d.get("dtype") or d.get("torch_dtype") or "float32").replace("torch.", "")
    return cls(
        model_type=model_type,
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=d.get("head_dim") or d["hidden_size"] // heads,
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        rope_scaling=tuple(sorted((k, v) for k, v in rope.items() if isinstance(v, (int, float, str)))),
        max_position_embeddings=d.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),  # transformers' default, all three
        attention_bias=model_type == "qwen2" or bool(d.get("attention_bias", False)),
        mlp_bias=bool(d.get("mlp_bias", False)),
        sliding_window=window,
        param_dtype=dtype if dtype in _DTYPES else "float32",
        compute_dtype=compute_dtype,
    )

  def to_hf_dict(self) -> dict:
    """A transformers-5 ``config.json`` dict for this architecture."""
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
    rope = {"rope_type": "default", "rope_theta": self.rope_theta}
    rope.update(dict(self.rope_scaling))
    d = {
        "architectures": [arch[self.model_type]],
        "model_type": self.model_type,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": self.rms_norm_eps,
        "rope_parameters": rope,
        "max_position_embeddings": self.max_position_embeddings,
        "tie_word_embeddings": self.tie_word_embeddings,
        "dtype": self.param_dtype,
    }
    if self.model_type == "llama":
      d.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
    if self.model_type in ("mistral", "qwen2"):
      d["sliding_window"] = self.sliding_window
    if self.model_type == "qwen2":
      d["use_sliding_window"] = self.sliding_window is not None
      d["max_window_layers"] = 0  # the window applies to every layer, as in forward
    return d

  def num_params(self, *, embeddings: bool = True) -> int:
    """Parameter count (with or without the input/output embeddings)."""
    D, F, E = self.hidden_size, self.intermediate_size, self.head_dim
    attn = D * E * (self.num_heads * 2 + self.num_kv_heads * 2)
    if self.attention_bias:
      attn += E * (self.num_heads + 2 * self.num_kv_heads)
    per_layer = attn + 3 * D * F + 2 * D
    n = self.num_layers * per_layer + D
    if embeddings:
      n += self.vocab_size * D * (1 if self.tie_word_embeddings else 2)
    return n


def _sliding_window(d: dict, model_type: str) -> int | None:
  """The attention window of a ``config.json`` dict, as transformers reads it; one for all layers.

  llama has none; mistral defaults to 4096; qwen2 slides only with ``use_sliding_window`` and
  then only in layers ``>= max_window_layers`` (or per explicit ``layer_types``).
  """
  if model_type == "llama":
    return None
  window = d.get("sliding_window", 4096)
  if model_type == "qwen2":
    if not d.get("use_sliding_window", False) or window is None:
      return None
    n = d["num_hidden_layers"]
    types = d.get("layer_types") or ["sliding_attention" if i >= d.get("max_window_layers", 28) else "full_attention"
                                     for i in range(n)]
    if all(t == "full_attention" for t in types):
      return None
    if any(t != "sliding_attention" for t in types):
      raise InputError(f"per-layer attention types {types} are not supported (only all-full or all-sliding)")
  return window
