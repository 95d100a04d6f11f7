"""Chat data for supervised finetuning: records from JSONL, assistant-only encoding, bucketed batches.

    JSONL --load_chat_records--> records [{"messages": [...]}]
      --encode_chats--> Example(ids, loss_mask) per record
      --batches--> {"tokens", "mask", "loss_mask"}: [M, b, T] (M micro-batches of b rows, T a length bucket)

Host-side numpy only; :mod:`jaxscape.studies.finetune` trains on what comes out.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

import numpy as np

from jaxscape.datasets import jsonl
from jaxscape.errors import InputError

if TYPE_CHECKING:  # only its batching fields are read; importing it would pull in JAX and optax
  from jaxscape.studies.train_step import TrainConfig

_log = logging.getLogger("jaxscape")


class Example(NamedTuple):
  """One encoded conversation: ``ids`` int32[L] and ``loss_mask`` bool[L] (True: token is a target)."""
  ids: np.ndarray
  loss_mask: np.ndarray


# ----------------------------------------------------------------- encoding


def _render(tokenizer, messages, *, generation_prompt: bool) -> str:
  import jinja2  # noqa: PLC0415 - light; transformers has imported it already
  try:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
  except jinja2.TemplateError as e:  # the template's raise_exception, e.g. a role it does not take
    raise InputError(f"the tokenizer's chat template refuses this chat ({e})") from None


def _check_messages(messages: Any, where: str) -> None:
  if not isinstance(messages, list) or not messages:
    raise InputError(f"{where}: \"messages\" must be a non-empty list, got {messages!r:.80}")
  for m in messages:
    if not (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str)):
      raise InputError(f"{where}: bad message {m!r:.80} (need role system/user/assistant and string content)")
  if not any(m["role"] == "assistant" for m in messages):
    raise InputError(f"{where}: no assistant message to learn from")


def encode_chat(tokenizer, messages: list[dict], *, max_length: int | None = None) -> Example:
  """Token ids of a chat rendered by the tokenizer's chat template, and its assistant-only loss mask.

  The text is rendered once and tokenized once (so ids are exactly what the template
  gives); a token is a target when its characters fall in an assistant turn, i.e. between
  the render of the turns before it (with the generation prompt) and the render up to and
  including it. The template's end-of-turn token (EOS) is therefore a target too.

  Args:
    messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``.
    max_length: keep the first ``max_length`` tokens.
  Returns:
    :class:`Example` with ``ids`` int32[L] and ``loss_mask`` bool[L].
  Raises:
    ValueError: malformed messages, or a template whose renders are not prefixes of each other.
  """
  _check_messages(messages, "chat")
  text = _render(tokenizer, messages, generation_prompt=False)
  spans = []
  for k, m in enumerate(messages):
    if m["role"] != "assistant":
      continue
    before = _render(tokenizer, messages[:k], generation_prompt=True) if k else ""
    upto = _render(tokenizer, messages[:k + 1], generation_prompt=False)
    if not (upto.startswith(before) and text.startswith(upto)):
      raise InputError("the chat template does not render conversations as prefixes of each other; cannot "
                       f"locate assistant turn {k}")
    spans.append((len(before), len(upto)))
  enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
  ids = np.asarray(enc["input_ids"], np.int32)
  offsets = np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2)
  start, end = offsets[:, 0], offsets[:, 1]
  mask = np.zeros(len(ids), bool)
  for a, b in spans:
    # A token belongs to the turn when it overlaps it (zero-width tokens: when they start in it).
    mask |= np.where(end > start, (end > a) & (start < b), (start >= a) & (start < b))
  if max_length is not None:
    ids, mask = ids[:max_length], mask[:max_length]
  return Example(ids=ids, loss_mask=mask)


def encode_chats(tokenizer, records: list[dict], *, max_length: int) -> list[Example]:
  """:func:`encode_chat` over ``{"messages": [...]}`` records; drops (and logs) those with no target left."""
  out, truncated, dropped = [], 0, 0
  for n, r in enumerate(records):
    if not isinstance(r, dict) or "messages" not in r:
      raise InputError(f"record {n}: expected {{\"messages\": [...]}}, got {str(r)[:80]!r}")
    try:
      ex = encode_chat(tokenizer, r["messages"])
    except InputError as e:
      raise InputError(f"record {n}: {e}") from None
    if len(ex.ids) > max_length:
      truncated += 1
      ex = Example(ex.ids[:max_length], ex.loss_mask[:max_length])
    if not ex.loss_mask[1:].any():
      dropped += 1
      continue
    out.append(ex)
  if truncated or dropped:
    _log.warning("%d of %d conversations truncated to %d tokens, %d dropped (no assistant token left)",
                 truncated, len(records), max_length, dropped)
  if not out:
    raise InputError("no trainable conversations (every one lost its assistant tokens)")
  return out


def load_chat_records(source: str) -> list[dict]:
  """Chat records ``{"messages": [{"role", "content"}, ...]}`` from a JSONL file or ``builtin:NAME``.

  One JSON object a line (blank lines skipped). A line holds either ``"messages"`` or, as the
  built-in sets do, ``"prompt"`` and ``"response"`` strings (one user and one assistant turn,
  with an optional ``"system"`` string).

  Raises:
    ValueError: missing or empty file, or ``PATH:LINE: ...`` for the first malformed line
      (invalid JSON, neither form, bad roles or contents, no assistant turn).
  """
  from jaxscape.datasets import sources

  path = sources.resolve(source)
  records = []
  for where, r in jsonl.iter_jsonl(path):
    if isinstance(r, dict) and "messages" not in r and isinstance(r.get("prompt"), str) \
        and isinstance(r.get("response"), str):
      system = [{"role": "system", "content": r["system"]}] if isinstance(r.get("system"), str) else []
      r = {"messages": system + [{"role": "user", "content": r["prompt"]},
                                 {"role": "assistant", "content": r["response"]}]}
    if not isinstance(r, dict) or "messages" not in r:
      raise InputError(f"{where}: expected an object with \"messages\" (or \"prompt\" and \"response\"), "
                       f"got {json.dumps(r)[:80]!r}")
    _check_messages(r["messages"], where)
    records.append({"messages": r["messages"]})
  if not records:
    raise InputError(f"data file {path} holds no records")
  return records


# ----------------------------------------------------------------- batching


def pad_batch(examples: list[Example], length: int, pad_id: int) -> dict[str, np.ndarray]:
  """Left-pad examples to ``length``: ``{"tokens" int32[B, T], "mask" bool[B, T], "loss_mask" bool[B, T]}``.

  Left padding, as the model expects (positions come from ``mask``). ``loss_mask[b, t]``
  marks target tokens, predicted from position ``t - 1``.
  """
  B = len(examples)
  tokens = np.full((B, length), pad_id, np.int32)
  mask = np.zeros((B, length), bool)
  loss_mask = np.zeros((B, length), bool)
  for r, ex in enumerate(examples):
    n = len(ex.ids)
    if n > length:
      raise ValueError(f"example {r} has {n} tokens, more than the padded length {length}")
    tokens[r, length - n:] = ex.ids
    mask[r, length - n:] = True
    loss_mask[r, length - n:] = ex.loss_mask
  return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}


def bucket_of(n: int, buckets: tuple[int, ...]) -> int:
  """The shortest bucket length >= ``n`` (the last bucket if none)."""
  for b in buckets:
    if n <= b:
      return b
  return buckets[-1]


def batches(examples: list[Example], tc: TrainConfig, pad_id: int, *,
            start: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Endless deterministic batches ``{"tokens", "mask", "loss_mask"}: [M, b, T]`` (M micro-batches).

  Each epoch (seeded by ``(tc.seed, epoch)``) shuffles every length bucket, cuts it into
  full batches (a bucket's last partial batch is filled with other examples of the same
  bucket, drawn at random), and visits the batches in a random order.

  Args:
    start: skip the first ``start`` batches (resuming at step ``start``): only the epochs'
      index shuffles are replayed, no batch is padded.
  """
  by_bucket: dict[int, list[int]] = {}
  for i, ex in enumerate(examples):
    by_bucket.setdefault(bucket_of(len(ex.ids), tc.buckets), []).append(i)
  B, M = tc.batch_size, tc.micro_batches
  epoch, seen = 0, 0
  while True:
    rng = np.random.default_rng([tc.seed, epoch])
    plan = []
    for length in sorted(by_bucket):
      idx = np.asarray(by_bucket[length])[rng.permutation(len(by_bucket[length]))]
      short = -len(idx) % B
      if short:
        idx = np.concatenate([idx, rng.choice(idx, short, replace=short > len(idx))])
      plan += [(length, idx[s:s + B]) for s in range(0, len(idx), B)]
    for k in rng.permutation(len(plan)):
      seen += 1
      if seen <= start:
        continue
      length, idx = plan[k]
      batch = pad_batch([examples[i] for i in idx], length, pad_id)
      yield {name: a.reshape((M, B // M) + a.shape[1:]) for name, a in batch.items()}
    epoch += 1
