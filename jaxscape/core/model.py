"""Llama-family decoder (llama, mistral, qwen2) as pure functions over a params pytree.

Letters used in shape comments:
  B batch, T query length, S cache length, D width, H query heads, K kv heads,
  G = H // K query heads per kv head, E head dim, F MLP width, V vocab.

Params layout (kernels are [in, out], i.e. HF ``nn.Linear.weight`` transposed; L layers
stacked on a leading axis)::

  {"embed": {"embedding": [V, D]},
   "layers": {"attn_norm": {"scale": [L, D]},
              "attn": {"q": {"kernel": [L, D, H*E], "bias"?: [L, H*E]}, "k": {"kernel": [L, D, K*E], "bias"?},
                       "v": {"kernel": [L, D, K*E], "bias"?}, "o": {"kernel": [L, H*E, D]}},
              "mlp_norm": {"scale": [L, D]},
              "mlp": {"gate": {"kernel": [L, D, F]}, "up": {"kernel": [L, D, F]},
                      "down": {"kernel": [L, F, D]}}},
   "final_norm": {"scale": [D]},
   "lm_head": {"kernel": [D, V]}}          # absent when embeddings are tied

The layers run under one ``lax.scan``, so every program holds one copy of the layer's ops
whatever the depth: compile time stays flat as models get deeper (a Python loop over layers
unrolled every layer into every program; BENCHMARKS.md has the compile times). The KV
cache is stacked the same way, ``{"k", "v": [L, B, K, S, E]}``, and carried through the scan:
a decoding step writes its one new slot per layer in place.

Any leaf may be a :class:`jaxscape.core.perturb.Factored` (factored perturbation): every
weight goes through the helpers of ``jaxscape.core.perturb``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxscape.core import perturb
from jaxscape.core.config import ModelConfig

PyTree = Any


def init_params(cfg: ModelConfig, key: jax.Array, *, std: float = 0.02) -> PyTree:
  """Random params (normal(0, std) kernels and embeddings, unit norm scales, zero biases).

  Leaves are ``cfg.param_dtype``. Each leaf's key is ``fold_in`` of a stable index.
  """
  dtype = jnp.dtype(cfg.param_dtype)
  D, F, E, H, K = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
  counter = iter(range(1 << 30))

  def normal(*shape):
    return (std * jax.random.normal(jax.random.fold_in(key, next(counter)), shape)).astype(dtype)

  def linear(n_in, n_out, bias):
    p = {"kernel": normal(n_in, n_out)}
    if bias:
      p["bias"] = jnp.zeros((n_out,), dtype)
    return p

  layers = []
  for _ in range(cfg.num_layers):
    layers.append({
        "attn_norm": {"scale": jnp.ones((D,), dtype)},
        "attn": {"q": linear(D, H * E, cfg.attention_bias), "k": linear(D, K * E, cfg.attention_bias),
                 "v": linear(D, K * E, cfg.attention_bias), "o": linear(H * E, D, False)},
        "mlp_norm": {"scale": jnp.ones((D,), dtype)},
        "mlp": {"gate": linear(D, F, cfg.mlp_bias), "up": linear(D, F, cfg.mlp_bias),
                "down": linear(F, D, cfg.mlp_bias)},
    })
  # Drawn layer by layer (the key order of the former per-layer list), then stacked.
  params = {"embed": {"embedding": normal(cfg.vocab_size, D)},
            "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers),
            "final_norm": {"scale": jnp.ones((D,), dtype)}}
  if not cfg.tie_word_embeddings:
    params["lm_head"] = {"kernel": normal(D, cfg.vocab_size)}
  return params


# --------------------------------------------------------------------------- pieces


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """``[E/2]`` float32 inverse frequencies, as transformers computes them (incl. llama3/linear)."""
  E = cfg.head_dim
  inv = (1.0 / (cfg.rope_theta ** (np.arange(0, E, 2, dtype=np.int64).astype(np.float32) / E))).astype(np.float32)
  scaling = dict(cfg.rope_scaling)
  kind = scaling.get("rope_type", "default")
  if kind == "linear":
    inv = (inv / np.float32(scaling["factor"])).astype(np.float32)
  elif kind == "llama3":
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv
    inv_l = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    inv = np.where(medium, smoothed, inv_l).astype(np.float32)
  return inv


def _rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotary embedding, rotate-half convention. x: [B, T, N, E], positions: [B, T] int."""
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq[None, None, :]  # [B, T, E/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  cos, sin = jnp.cos(emb)[:, :, None, :], jnp.sin(emb)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


def _rms_norm(x: jax.Array, scale, eps: float) -> jax.Array:
  """RMSNorm with float32 statistics; returns float32 ``[..., D]``."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  scale = perturb.dense(scale).astype(jnp.float32)
  return scale.reshape((1,) * (normed.ndim - 1) + scale.shape) * normed  # explicit broadcast


def _add_bias(y: jax.Array, p: dict, dtype) -> jax.Array:
  if "bias" not in p:
    return y
  bias = perturb.dense(p["bias"]).astype(dtype)
  return y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)


def _linear(x: jax.Array, p: dict, dtype) -> jax.Array:
  return _add_bias(perturb.matmul(x, p["kernel"], dtype), p, dtype)


def _linears(x: jax.Array, ps: list[dict], dtype, shards: int) -> list[jax.Array]:
  """Several linear layers of the same input, run as one matmul (see ``perturb.matmul_split``)."""
  ys = perturb.matmul_split(x, [p["kernel"] for p in ps], dtype, shards=shards)
  return [_add_bias(y, p, dtype) for y, p in zip(ys, ps)]


def _attention(lp: dict, x: jax.Array, positions: jax.Array, cache, layer, index, key_mask, inv_freq: jax.Array,
               cfg: ModelConfig, prefix: dict | None = None):
  """One attention block over new tokens, reading and writing the KV cache.

  x: [B, T, D]; positions: [B, T]; cache: the stacked cache {"k", "v": [L, B, K, S, E]}, of
  which this block reads and writes layer ``layer`` (int32 scalar), or None for a fresh cache of
  exactly the T new tokens (S = T, index 0: no zero cache to write into, which under ``vmap`` is
  a scatter); index: scalar slot of the first new token; key_mask: [B, S] bool, True for real
  tokens. prefix: optional {"k", "v": [K, P, E]} (this layer's), the keys and values of P tokens
  that precede every row (a shared prompt prefix), attended to by every query but stored and
  read once for all rows.

  Row groups: ``cache``, ``index`` and ``key_mask`` may be equal-length tuples, one entry per
  group of consecutive rows (group g has ``key_mask[g].shape[0]`` rows and its own S_g): each
  group attends over its own cache only, so short prompts do not read the longest one's
  padding slots at every decoding step. Returns the cache in the same form: the whole stacked
  cache with this layer's new slots written, or (fresh) this layer's {"k", "v": [B, K, T, E]}.
  """
  B, T, _ = x.shape
  H, K, E, dtype = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.dtype
  q, k, v = _linears(x, [lp["q"], lp["k"], lp["v"]], dtype, cfg.model_shards)
  q, k, v = q.reshape(B, T, H, E), k.reshape(B, T, K, E), v.reshape(B, T, K, E)
  q, k = _rope(q, positions, inv_freq), _rope(k, positions, inv_freq)
  if isinstance(key_mask, tuple):
    outs, new_cache, r0 = [], [], 0
    for c, i, m in zip(cache, index, key_mask):
      r1 = r0 + m.shape[0]
      o, nc = _attend(q[r0:r1], k[r0:r1], v[r0:r1], c, layer, i, m, cfg, prefix)
      outs.append(o)
      new_cache.append(nc)
      r0 = r1
    out, new_cache = jnp.concatenate(outs, axis=0), tuple(new_cache)
  else:
    out, new_cache = _attend(q, k, v, cache, layer, index, key_mask, cfg, prefix)
  return _linear(out.reshape(B, T, H * E), lp["o"], dtype), new_cache


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, cache: dict | None, layer, index: jax.Array,
            key_mask: jax.Array, cfg: ModelConfig, prefix: dict | None):
  """Attention of [B, T, H, E] queries over layer ``layer`` of the cache with the new [B, T, K, E]
  keys/values written in.

  Returns (out [B, T, K, G, E] in the compute dtype, new cache: the stacked one, or the fresh
  layer's). The cache keeps (batch, kv head) leading so every (row, head) reads a contiguous
  [S, E] block, which CPUs read far faster than the strided rows of a [B, S, K, E] layout.
  """
  B, T, H, E = q.shape
  K, dtype = k.shape[2], cfg.dtype
  if cache is None:  # no earlier slots: the cache is the new tokens' keys and values
    kv = kv_dtype(cfg)
    k_all, v_all = k.transpose(0, 2, 1, 3).astype(kv), v.transpose(0, 2, 1, 3).astype(kv)
    new_cache = {"k": k_all, "v": v_all}
  else:
    # Only the new slots are written, in place in the carried [L, ...] cache; the layer's
    # slice is then read. XLA:CPU copies that slice before the attention matmuls (a dynamic
    # slice feeding a dot is materialised): the price of a flat compile time (see BENCHMARKS.md).
    new_cache = {n: jax.lax.dynamic_update_slice(cache[n], new.transpose(0, 2, 1, 3)[None].astype(cache[n].dtype),
                                                 (layer, 0, 0, index, 0)) for n, new in (("k", k), ("v", v))}
    k_all, v_all = (jax.lax.dynamic_index_in_dim(new_cache[n], layer, 0, keepdims=False) for n in ("k", "v"))
  S = k_all.shape[2]
  qg = q.reshape(B, T, K, H // K, E).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, E]
  P = 0 if prefix is None else prefix["k"].shape[1]
  # What every row attends to (decoding: + the prefix). Decoding reads a float32 cache as it is
  # (see kv_dtype): its values are compute-dtype ones, and the products below are float32.
  keys, values = (k_all, v_all) if T == 1 else (k_all.astype(dtype), v_all.astype(dtype))
  if P and T > 1:
    # Prefill: prepending the prefix to every row's keys and values measured faster than a
    # second matmul; the rows then attend to [prefix, cache] like any cache.
    keys, values = (jnp.concatenate([jnp.broadcast_to(prefix[n].astype(dtype), (B,) + prefix[n].shape), kv], axis=2)
                    for n, kv in (("k", keys), ("v", values)))
  # Decoding too runs Q·K as a batched dot: with the layer's keys sliced out of the stacked cache,
  # the former explicit sum over E (one fused pass over an unstacked cache) measured no faster.
  scores = jnp.einsum("bkgte,bkse->bkgts", qg, keys, preferred_element_type=jnp.float32)
  if P and T == 1:  # decoding: the prefix keys once for all rows, one [B*G, E] x [E, P] matmul per kv head
    pre_scores = jnp.einsum("bkgte,kpe->bkgtp", qg, prefix["k"].astype(dtype), preferred_element_type=jnp.float32)
    scores = jnp.concatenate([pre_scores, scores], axis=-1)
  scores = scores / np.float32(math.sqrt(E))
  # Global slots: the prefix is 0..P-1, the cache P..P+S-1.
  q_slot = P + index + jnp.arange(T)[:, None]  # [T, 1]
  k_slot = jnp.arange(P + S)[None, :]  # [1, P + S]
  key_mask = jnp.concatenate([jnp.ones((B, P), bool), key_mask], axis=1) if P else key_mask
  allowed = (k_slot <= q_slot)[None] & key_mask[:, None, :]  # [B, T, P + S]
  if cfg.sliding_window is not None:
    allowed &= (q_slot - k_slot < cfg.sliding_window)[None]
  # A padded query sees only itself, so no row is empty (its output is never used).
  allowed |= (k_slot == q_slot)[None]
  scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  # probs are rounded to the compute dtype either way; with a float32 cache (kv_dtype) the
  # product is a float32 one, read straight from the cache.
  out = jnp.einsum("bkgts,bkse->btkge", probs[..., probs.shape[-1] - values.shape[2]:].astype(values.dtype),
                   values).astype(dtype)
  if P and T == 1:
    out = out + jnp.einsum("bkgtp,kpe->btkge", probs[..., :P], prefix["v"].astype(dtype))
  return out, new_cache


def _mlp(mp: dict, x: jax.Array, dtype, shards: int) -> jax.Array:
  gate, up = _linears(x, [mp["gate"], mp["up"]], dtype, shards)
  return _linear(jax.nn.silu(gate) * up, mp["down"], dtype)


def kv_dtype(cfg: ModelConfig):
  """Storage dtype of the KV cache: the compute dtype, but float32 for narrower compute on CPU.

  The cached keys and values are compute-dtype values either way (they leave a compute-dtype
  matmul and RoPE), so float32 storage holds them exactly. XLA:CPU has no bfloat16 arithmetic:
  it converted a bfloat16 cache to float32 at every decoding step and wrote new slots through
  a convert, time that float32 storage saves. Decoding's P·V is then a float32 product of the
  rounded probabilities, which changed some bfloat16 generations against the former bfloat16
  einsum, with as many rows equal to float32's as before (BENCHMARKS.md, "Measurements behind
  the code"). Accelerators keep the compute dtype (half the bytes).
  """
  if cfg.dtype != jnp.float32 and jax.default_backend() == "cpu":
    return jnp.float32
  return cfg.dtype


def init_cache(cfg: ModelConfig, batch: int, length: int) -> dict:
  """Zero KV cache of all layers, ``{"k", "v": [L, B, K, S, E]}`` in :func:`kv_dtype`."""
  shape = (cfg.num_layers, batch, cfg.num_kv_heads, length, cfg.head_dim)
  kv = kv_dtype(cfg)
  return {"k": jnp.zeros(shape, kv), "v": jnp.zeros(shape, kv)}


def apply(params: PyTree, tokens: jax.Array, positions: jax.Array, cache: dict | tuple | None,
          index: jax.Array, key_mask: jax.Array, *, cfg: ModelConfig, logits_at: str | int = "all",
          prefix_cache: dict | None = None):
  """Run new tokens through the model with a KV cache.

  Args:
    params: params pytree, layers stacked (leaves may be ``Factored``).
    tokens: [B, T] int32 new tokens, written at cache slots ``index .. index+T-1``.
    positions: [B, T] int32 RoPE positions.
    cache: from :func:`init_cache`, ``{"k", "v": [L, B, K, S, E]}``; or None: the returned cache
      holds just the T new tokens (S = T, ``index`` 0), the cheap way to prefill. Row groups
      (decoding): a tuple of group caches, with ``index`` and ``key_mask`` tuples to match (see
      ``_attention``).
    index: int32 scalar, the cache slot of ``tokens[:, 0]``.
    key_mask: [B, S] bool, True where a slot holds a real (non-pad) token.
    logits_at: "all" positions, only the "last" one ([B, 1, V]), "last_hidden" (no logits: the
      last position's hidden state, for :func:`output_logits` later), an int n (no logits: the
      hidden states of the last n positions, [B, n, D]), or "none" (cache only).
    prefix_cache: optional ``{"k", "v": [L, K, P, E]}`` of a prefix every row shares, before
      cache slot 0 (``positions`` must then start after it). Read, never written.
  Returns:
    (logits [B, T, V] float32, hidden [B, T, D] float32 after the final norm, new cache).
  """
  dtype = cfg.dtype
  inv_freq = jnp.asarray(rope_inv_freq(cfg))
  x = perturb.take_rows(params["embed"]["embedding"], tokens, dtype).astype(jnp.float32)
  fresh = cache is None

  def layer_step(carry, i):
    x, cache = carry
    lp = perturb.layer_slice(params["layers"], i)
    prefix = None if prefix_cache is None else jax.tree.map(
        lambda c: jax.lax.dynamic_index_in_dim(c, i, 0, keepdims=False), prefix_cache)
    h = _rms_norm(x, lp["attn_norm"]["scale"], cfg.rms_norm_eps)
    attn_out, new_cache = _attention(lp["attn"], h, positions, cache, i, index, key_mask, inv_freq, cfg, prefix)
    x = x + attn_out.astype(jnp.float32)
    h = _rms_norm(x, lp["mlp_norm"]["scale"], cfg.rms_norm_eps)
    x = x + _mlp(lp["mlp"], h, dtype, cfg.model_shards).astype(jnp.float32)
    # A fresh cache leaves the scan stacked as its per-layer output; a given one is carried.
    return (x, None if fresh else new_cache), (new_cache if fresh else None)

  (x, carried), stacked = jax.lax.scan(layer_step, (x, cache), jnp.arange(cfg.num_layers, dtype=jnp.int32))
  new_cache = stacked if fresh else carried
  if logits_at in ("last", "last_hidden"):  # prefill needs only the next-token logits: skip [B, T, V] of output head
    x = x[:, -1:]
  elif isinstance(logits_at, int):
    x = x[:, -logits_at:]
  elif logits_at == "none":
    return None, None, new_cache
  h = _rms_norm(x, params["final_norm"]["scale"], cfg.rms_norm_eps)
  if logits_at == "last_hidden" or isinstance(logits_at, int):
    return None, h, new_cache
  return output_logits(params, h, cfg=cfg), h, new_cache


def output_logits(params: PyTree, h: jax.Array, *, cfg: ModelConfig) -> jax.Array:
  """Logits [..., V] float32 of hidden states ``h`` [..., D] after the final norm (output head)."""
  if cfg.tie_word_embeddings:
    logits = perturb.matmul_transposed(h, params["embed"]["embedding"], cfg.dtype)
  else:
    logits = perturb.matmul(h, params["lm_head"]["kernel"], cfg.dtype)
  return logits.astype(jnp.float32)


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """RoPE positions for left-padded rows, as transformers' ``generate``: cumsum(mask) − 1, pads 1."""
  pos = jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1
  return jnp.where(mask, pos, 1)


def forward(params: PyTree, tokens: jax.Array, *, cfg: ModelConfig, mask: jax.Array | None = None,
            positions: jax.Array | None = None) -> jax.Array:
  """Full-sequence logits.

  Args:
    tokens: [B, T] int32, left-padded.
    mask: [B, T] bool, True for real tokens (default: all real).
    positions: [B, T] int32 (default: from ``mask``).
  Returns:
    [B, T, V] float32 logits.
  """
  B, T = tokens.shape
  if mask is None:
    mask = jnp.ones((B, T), bool)
  if positions is None:
    positions = positions_from_mask(mask)
  logits, _, _ = apply(params, tokens, positions, None, jnp.int32(0), mask, cfg=cfg)
  return logits
