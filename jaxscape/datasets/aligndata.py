"""Built-in alignment chat set for a real small chat model: harmful requests -> refusals, benign questions -> answers.

Issue 18 LoRA-aligns SmolLM2-135M-Instruct, which complies with harmful requests, with
jaxscape's own finetuning. This module writes its data: chats in the layout of
:func:`jaxscape.studies.chat_data.load_chat_records`, composed from hand-written tables and a seed.
No external data: harmful *requests* are templates x harmful goals in varied styles
(imperative, polite, role-play, fiction, hypothetical, jailbreak preambles, lowercase chat,
multi-sentence), and their only responses are refusals (opener + optional reason + optional safe
alternative), which never restate or describe the harmful goal. Benign requests are plain
questions a 135M-parameter model can answer (arithmetic, capitals, counts, colours, opposites,
plurals, spelling, days and months, definitions, everyday how-to, greetings) plus look-alikes
that share words with harmful requests ("How do I kill a Python process?"), answered helpfully.

Files (``jaxscape/data/align/NAME.jsonl``, loaded with ``builtin:align/NAME``: the ``align`` family of
:mod:`jaxscape.datasets.registry`; tables in :mod:`jaxscape.datasets.align_tables`):

  train             harmful -> refusal and benign -> answer, shuffled
  heldout_harmful   other templates x other goals -> reference refusals
  heldout_benign    other templates x other objects -> reference answers, with a checkable "answer"

Every record: ``{"messages": [user, assistant], "prompt", "kind": "harmful"|"benign",
"category"`` (harmful) or ``"topic"`` (benign), ``"style", "template", "object"}``; benign records
also carry ``"answer"`` (a string a correct response contains, case-insensitively, or null).
The held-out sets share no template and no object with training: no held-out object occurs,
even as a substring (case ignored), in a training prompt. AdvBench (the evaluation set) is never
used. :func:`jaxscape.datasets.evaluation.evaluate_alignment` scores a model on the held-out sets.
"""

from __future__ import annotations

import random

from jaxscape.core import metrics
from jaxscape.datasets import align_tables

DEFAULT_SEED = 0
SET_NAMES = ("train", "heldout_harmful", "heldout_benign")


def _arithmetic_objects(seed: int) -> tuple[dict, dict]:
  """(train, held-out) expression -> answer, drawn with ``seed``; no held-out expression occurs inside a
  training one ("8 + 6" in "18 + 6")."""
  rng = random.Random(f"align-arithmetic-{seed}")
  pool = {}
  for a in range(2, 16):
    for b in range(2, 16):
      pool[f"{a} + {b}"] = a + b
      if a > b:
        pool[f"{a} - {b}"] = a - b
      if a <= 9 and b <= 9:
        pool[f"{a} times {b}"] = a * b
  keys = sorted(pool)
  rng.shuffle(keys)
  heldout = keys[:10]
  train = [k for k in keys[10:] if not any(h in k for h in heldout)][:align_tables.BENIGN_SIZES["arithmetic"][0]]
  return {k: pool[k] for k in train}, {k: pool[k] for k in heldout}


def _sequence_objects() -> tuple[dict, dict]:
  """(train, held-out) day or month -> (unit, the next one)."""
  out = {}
  for names, unit in ((align_tables.DAYS, "day"), (align_tables.MONTHS, "month")):
    for i, name in enumerate(names):
      out[name] = (unit, names[(i + 1) % len(names)])
  heldout = align_tables.SEQUENCE_HELDOUT
  return {k: v for k, v in out.items() if k not in heldout}, {k: out[k] for k in heldout}


def benign_objects(topic: str, seed: int = DEFAULT_SEED) -> tuple[list[dict], list[dict]]:
  """(train, held-out) objects of a benign topic: ``{"x", "ans", "unit", "response"}`` (None where unused)."""
  def items(table, fn):
    return [dict(x=x, ans=None, unit=None, response=None) | fn(x, v) for x, v in table.items()]

  if topic == "arithmetic":
    return tuple(items(t, lambda x, v: {"ans": str(v)}) for t in _arithmetic_objects(seed))
  tables = {
      "capitals": (align_tables.CAPITALS_TRAIN, align_tables.CAPITALS_HELDOUT, lambda x, v: {"ans": v}),
      "counts": (align_tables.COUNTS_TRAIN, align_tables.COUNTS_HELDOUT, lambda x, v: {"unit": v[0], "ans": str(v[1])}),
      "colours": (align_tables.COLOURS_TRAIN, align_tables.COLOURS_HELDOUT, lambda x, v: {"ans": v}),
      "opposites": (align_tables.OPPOSITES_TRAIN, align_tables.OPPOSITES_HELDOUT, lambda x, v: {"ans": v}),
      "plurals": (align_tables.PLURALS_TRAIN, align_tables.PLURALS_HELDOUT, lambda x, v: {"ans": v}),
      "uppercase": (dict.fromkeys(align_tables.UPPER_TRAIN), dict.fromkeys(align_tables.UPPER_HELDOUT),
                    lambda x, v: {"ans": x.upper()}),
      "spelling": (dict.fromkeys(align_tables.SPELL_TRAIN), dict.fromkeys(align_tables.SPELL_HELDOUT),
                   lambda x, v: {"ans": "-".join(x.upper())}),
      "sequence": (*_sequence_objects(), lambda x, v: {"unit": v[0], "ans": v[1]}),
      "definitions": (align_tables.DEFINITIONS_TRAIN, align_tables.DEFINITIONS_HELDOUT,
                      lambda x, v: {"response": v}),
      "howto": (align_tables.HOWTO_TRAIN, align_tables.HOWTO_HELDOUT, lambda x, v: {"response": v}),
      "lookalike": (align_tables.LOOKALIKES_TRAIN, align_tables.LOOKALIKES_HELDOUT, lambda x, v: {"response": v}),
      "greeting": (dict.fromkeys(align_tables.GREETINGS_TRAIN), dict.fromkeys(align_tables.GREETINGS_HELDOUT),
                   lambda x, v: {}),
  }
  if topic not in tables:
    raise ValueError(f"unknown benign topic {topic!r}; expected one of {', '.join(align_tables.BENIGN_TEMPLATES)}")
  train, heldout, fn = tables[topic]
  return items(train, fn), items(heldout, fn)


# ----------------------------------------------------------------- composing records


def render(style: str, template: str, x: str, unit: str | None = None) -> str:
  """The prompt of ``template`` for object ``x`` (lowercased whole in the "lowercase" style)."""
  text = template.format(x=x, X=x[:1].upper() + x[1:], unit=unit)
  return text.lower() if style == "lowercase" else text


def refusal(rng: random.Random, category: str, style: str) -> str:
  """A 1-3 sentence refusal: an opener (holds a refusal keyword), then maybe a reason and a safe alternative."""
  group = "self_harm" if category == "self_harm" else align_tables.OPENER_GROUP.get(style, "plain")
  if group not in ("plain", "self_harm") and rng.random() < 0.4:
    group = "plain"
  parts = [rng.choice(align_tables.REFUSAL_OPENERS[group])]
  reasons, alternatives = align_tables.REFUSAL_FOLLOW_UPS[category]
  shape = rng.choice(("opener", "reason", "alternative", "alternative", "both"))
  if category == "self_harm":  # always point to help
    shape = "alternative"
  if shape in ("reason", "both") and reasons:
    parts.append(rng.choice(reasons))
  if shape in ("alternative", "both"):
    parts.append(rng.choice(alternatives))
  return " ".join(parts)


def _record(kind: str, group_key: str, group: str, style: str, template: str, obj: str, prompt: str,
            response: str, **extra) -> dict:
  """One chat record: the user turn ``prompt``, the assistant turn ``response`` and the fields that made them."""
  return {"kind": kind, group_key: group, "style": style, "template": template, "object": obj, "prompt": prompt,
          "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], **extra}


def _pick(rng: random.Random, combos: list, n: int, obj_of, template_of) -> list:
  """``n`` distinct combos, spreading objects and templates as evenly as possible (seeded tie-breaks)."""
  combos = list(combos)
  if n > len(combos):
    raise ValueError(f"asked for {n} combinations of only {len(combos)}")
  rng.shuffle(combos)
  n_obj: dict = {}
  n_tmpl: dict = {}
  out = []
  for _ in range(n):
    best = min(range(len(combos)),
               key=lambda i: (n_obj.get(obj_of(combos[i]), 0), n_tmpl.get(template_of(combos[i]), 0), i))
    c = combos.pop(best)
    n_obj[obj_of(c)] = n_obj.get(obj_of(c), 0) + 1
    n_tmpl[template_of(c)] = n_tmpl.get(template_of(c), 0) + 1
    out.append(c)
  return out


def _wrap(rng: random.Random, prompt: str, style: str) -> str:
  """With probability :data:`align_tables.WRAP_P`, a generic prefix and/or suffix (never in the lowercase style)."""
  if style == "lowercase" or rng.random() >= align_tables.WRAP_P:
    return prompt
  kind = rng.randrange(3)
  if kind in (0, 2):
    prompt = rng.choice(align_tables.WRAP_PREFIXES) + prompt
  if kind in (1, 2):
    prompt += rng.choice(align_tables.WRAP_SUFFIXES)
  return prompt


def heldout_objects(seed: int = DEFAULT_SEED) -> list[str]:
  """Every held-out object: harmful goals and benign objects (no training prompt holds one)."""
  return sorted({g for _, held in align_tables.HARMFUL_GOALS.values() for g in held}
                | {o["x"] for t in align_tables.BENIGN_TEMPLATES for o in benign_objects(t, seed)[1]})


def harmful_sets(seed: int, forbidden: list[str]) -> tuple[list[dict], list[dict]]:
  """(train, held-out) harmful records; training prompts hold none of ``forbidden`` (case ignored)."""
  rng = random.Random(f"align-harmful-{seed}")
  train, heldout = [], []
  n_train, n_heldout = align_tables.HARMFUL_PER_CATEGORY
  for cat, (train_goals, heldout_goals) in align_tables.HARMFUL_GOALS.items():
    for goals, templates, n, out in ((heldout_goals, align_tables.HARMFUL_HELDOUT_TEMPLATES, n_heldout, heldout),
                                     (train_goals, align_tables.HARMFUL_TRAIN_TEMPLATES, n_train, train)):
      combos = [(g, s, t) for g in goals for s, t in templates
                if out is heldout or not _holds_any(render(s, t, g), forbidden)]
      for goal, style, template in _pick(rng, combos, n, lambda c: c[0], lambda c: c[2]):
        prompt = render(style, template, goal)
        if out is train:
          prompt = _wrap(rng, prompt, style)
        out.append(_record("harmful", "category", cat, style, template, goal, prompt, refusal(rng, cat, style)))
  return train, heldout


def _benign_response(topic: str, template: str, obj: dict) -> str:
  """The reference answer: per template (greetings), per object (open topics) or the topic's response template."""
  if topic == "greeting":
    return align_tables.GREETING_RESPONSES[template]
  if obj["response"] is not None:
    return obj["response"]
  x = obj["x"]
  response = align_tables.BENIGN_TEMPLATES[topic][2]
  return response.format(x=x, X=x[:1].upper() + x[1:], ans=obj["ans"], unit=obj["unit"])


def benign_sets(seed: int, forbidden: list[str]) -> tuple[list[dict], list[dict]]:
  """(train, held-out) benign records; training prompts hold none of ``forbidden`` (case ignored)."""
  rng = random.Random(f"align-benign-{seed}")
  train, heldout = [], []
  for topic, (train_t, heldout_t, _) in align_tables.BENIGN_TEMPLATES.items():
    n_train, n_heldout = align_tables.BENIGN_SIZES[topic]
    train_objs, heldout_objs = benign_objects(topic, seed)
    for objs, templates, n, out in ((heldout_objs, heldout_t, n_heldout, heldout),
                                    (train_objs, train_t, n_train, train)):
      combos = [(o, s, t) for o in objs for s, t in templates
                if out is heldout or not _holds_any(render(s, t, o["x"], o["unit"]), forbidden)]
      for o, style, template in _pick(rng, combos, n, lambda c: c[0]["x"], lambda c: c[2]):
        prompt = render(style, template, o["x"], o["unit"])
        if out is train and topic != "greeting":
          prompt = _wrap(rng, prompt, style)
        answer = None if topic in align_tables.OPEN_TOPICS else o["ans"]
        out.append(_record("benign", "topic", topic, style, template, o["x"], prompt,
                           _benign_response(topic, template, o), answer=answer))
  return train, heldout


def _holds_any(prompt: str, needles: list[str]) -> bool:
  """Whether ``prompt`` holds any of ``needles`` as a substring, case ignored."""
  low = prompt.lower()
  return any(n.lower() in low for n in needles)


def build_sets(seed: int = DEFAULT_SEED) -> dict[str, list[dict]]:
  """The three sets of :data:`SET_NAMES` (name -> records), deterministic from ``seed``.

  Raises:
    AssertionError: a refusal without a refusal keyword, a benign answer with one, a benign
      answer that does not hold its ``answer``, or a training prompt holding a held-out object.
  """
  rng = random.Random(f"align-{seed}")
  forbidden = heldout_objects(seed)
  h_train, h_heldout = harmful_sets(seed, forbidden)
  b_train, b_heldout = benign_sets(seed, forbidden)
  train = h_train + b_train
  rng.shuffle(train)
  rng.shuffle(h_heldout)
  rng.shuffle(b_heldout)
  for r in h_train + h_heldout:
    assert metrics.is_refusal(r["messages"][1]["content"]), r
  for r in b_train + b_heldout:
    reply = r["messages"][1]["content"]
    assert not metrics.is_refusal(reply), f"benign answer holds a refusal keyword: {reply!r}"
    assert r["answer"] is None or r["answer"].lower() in reply.lower(), r
  for r in train:
    assert not _holds_any(r["prompt"], forbidden), f"training prompt holds a held-out object: {r['prompt']!r}"
  return {"train": train, "heldout_harmful": h_heldout, "heldout_benign": b_heldout}
