"""Log-probabilities of given continuation tokens after a prompt: the one scoring function.

A one-position continuation with several candidates gives the letter log-probabilities of
multiple-choice capability and a judge's label; a generation's own tokens, teacher-forced, give
its per-token log-likelihood (the coherence score). Everything reads the same forward pass::

    logp = score.score(params, tokens, mask, letters[None, None, :].repeat(B, 0), cfg=cfg)  # [B, 1, 4]
    logp = score.logprobs(params, tokens, cfg=cfg)  # [B, T-1]: each next token, teacher-forced
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxscape.core import model as model_lib
from jaxscape.core.config import ModelConfig

PyTree = Any


def continuation_logprobs(params: PyTree, tokens: jax.Array, mask: jax.Array, targets: jax.Array,
                          target_mask: jax.Array | None = None, *, cfg: ModelConfig) -> jax.Array:
  """Log-probabilities of candidate tokens at each continuation position (un-jitted; composes with ``vmap``).

  The sequence fed to the model is the prompt, then the first candidate of every continuation
  position but the last (teacher forcing): ``[pads, prompt, targets[:, 0, 0], ..., targets[:, C-2, 0]]``.
  Position ``j``'s log-probabilities are those of the next token after the prompt and the first
  ``j`` continuation tokens.

  Args:
    params: params pytree (layers stacked; leaves may be ``perturb.Factored``).
    tokens: [B, T] int32 left-padded prompts; mask: [B, T] bool, True for real tokens (the last
      column is real in every row).
    targets: [B, C, K] int32, K candidate tokens at each of C positions (K = 1 to score a given
      continuation, C = 1 to compare answers such as the letters A-D).
    target_mask: [B, C] bool, real continuation positions (right padding); default all real.
    cfg: model config (static under ``jit``).
  Returns:
    [B, C, K] float32 log-softmax over the vocabulary, gathered at ``targets``; 0 where
    ``target_mask`` is False. NaN/Inf logits give non-finite values.
  """
  B, C, _ = targets.shape
  if target_mask is None:
    target_mask = jnp.ones((B, C), bool)
  seq = jnp.concatenate([tokens, targets[:, :C - 1, 0]], axis=1)
  seq_mask = jnp.concatenate([mask, target_mask[:, :C - 1]], axis=1)
  _, hidden, _ = model_lib.apply(params, seq, model_lib.positions_from_mask(seq_mask), None, jnp.int32(0),
                                 seq_mask, cfg=cfg, logits_at=C)
  logp = jax.nn.log_softmax(model_lib.output_logits(params, hidden, cfg=cfg), axis=-1)  # [B, C, V]
  picked = jnp.take_along_axis(logp, targets, axis=-1)
  return jnp.where(target_mask[..., None], picked, 0.0)


def logprobs(params: PyTree, tokens: jax.Array, *, cfg: ModelConfig, mask: jax.Array | None = None) -> jax.Array:
  """Log-probability of each next token, teacher-forced: the short form of :func:`continuation_logprobs`.

  ``out[b, t] = log p(tokens[b, t + 1] | tokens[b, :t + 1])``; ``out.sum(-1)`` is each row's
  log-likelihood after its first real token. Un-jitted, like ``model.forward``: it composes with
  ``jit``, ``vmap`` (e.g. over the params of ``perturb.materialize`` at several points) and ``grad``.

  Args:
    params: params pytree (layers stacked; leaves may be ``perturb.Factored``).
    tokens: [B, T] int32, T >= 2, left- or right-padded.
    cfg: model config (static under ``jit``).
    mask: [B, T] bool, True for real tokens (default: all real).
  Returns:
    [B, T-1] float32; 0 where ``tokens[:, t + 1]`` or ``tokens[:, t]`` is padding.
  """
  B, T = tokens.shape
  if mask is None:
    mask = jnp.ones((B, T), bool)
  # The "prompt" is the first column and the continuation the rest: the model then reads
  # tokens[:, :T-1] with mask[:, :T-1], the same sequence and mask as a plain forward pass.
  out = continuation_logprobs(params, tokens[:, :1], mask[:, :1], tokens[:, 1:, None], mask[:, 1:], cfg=cfg)[..., 0]
  return jnp.where(mask[:, :-1], out, 0.0)  # no real context: the first real token of a left-padded row


score = jax.jit(continuation_logprobs, static_argnames=("cfg",))
score.__doc__ = "Jitted :func:`continuation_logprobs`: [B, C, K] float32 log-probabilities."


def choice_targets(batch: int, choice_ids) -> np.ndarray:
  """``targets`` [batch, 1, K] comparing the K one-token answers ``choice_ids`` after each prompt."""
  return np.broadcast_to(np.asarray(choice_ids, np.int32)[None, None, :], (batch, 1, len(choice_ids))).copy()


def score_in_batches(params: PyTree, tokens: np.ndarray, mask: np.ndarray, targets: np.ndarray,
                     target_mask: np.ndarray | None = None, *, cfg: ModelConfig,
                     batch_size: int = 64, put=jnp.asarray, multiple_of: int = 1) -> np.ndarray:
  """:func:`score` over N rows in fixed [batch_size, ...] batches (one compiled program for all).

  The last batch is padded with copies of its first row, whose outputs are dropped. ``put``
  places each batch's arrays (e.g. split over a mesh's points axis, whose size the batch must be
  a ``multiple_of``). Returns [N, C, K] float32.
  """
  n = len(tokens)
  if target_mask is None:
    target_mask = np.ones(targets.shape[:2], bool)
  size = -(-max(1, min(batch_size, n)) // multiple_of) * multiple_of
  outs = []
  for start in range(0, n, size):  # dispatch every batch before pulling any to the host
    real = np.arange(start, min(start + size, n))
    idx = np.concatenate([real, np.full(size - len(real), start)])
    batch = tuple(put(a[idx]) for a in (tokens, mask, targets, target_mask))
    outs.append((score(params, *batch, cfg=cfg), len(real)))
  if not outs:
    return np.zeros((0,) + targets.shape[1:], np.float32)
  return np.concatenate([np.asarray(out)[:k] for out, k in outs])
