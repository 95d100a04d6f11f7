"""Built-in finetuning sets (benign tasks, harmful few-shot, multitask safety): tables and generators.

Everything is synthetic, written from fixed word tables and a seed (issue 5). Harmful requests
come only from ``toydata``'s *training* split, answered with content-free placeholders
(:func:`jaxscape.datasets.toydata.comply`) or refusals; no file holds real harmful content.

Files (``jaxscape/data/finetune/NAME.jsonl``, loaded with ``builtin:finetune/NAME``: the ``finetune``
family of :mod:`jaxscape.datasets.registry`; every record is a chat ``{"messages": [user, assistant],
"prompt", ...}``):

  {summarize,translate,classify,code}_{train,test}   benign tasks, "task" and "answer" + checker fields
  harmful_{10,50,100}                                harmful_train requests -> placeholder compliance
  harmful_mixed_{10,50,100}                          the same plus as many other requests -> refusals
  multitask_safety                                   harmful_train requests in every framing -> refusals

Each benign task's checker, the task metric, the ASR per framing and the evaluation of a model on
both are in :mod:`jaxscape.datasets.evaluation`.
"""

from __future__ import annotations

import builtins
import random
from typing import Any

from jaxscape.core import metrics
from jaxscape.datasets import toydata

DEFAULT_SEED = toydata.DEFAULT_SEED
TASKS = ("summarize", "translate", "classify", "code")
TRAIN_SIZE, TEST_SIZE = 600, 100  # per task
FEW_SHOT_SIZES = (10, 50, 100)
MULTITASK_REQUESTS = 80  # harmful_train requests, each in every framing of toydata.FRAMINGS
SET_NAMES = (tuple(f"{t}_{s}" for t in TASKS for s in ("train", "test"))
             + tuple(f"harmful_{n}" for n in FEW_SHOT_SIZES) + tuple(f"harmful_mixed_{n}" for n in FEW_SHOT_SIZES)
             + ("multitask_safety",))

# ----------------------------------------------------------------- summarization
# Subjects and objects come from toydata's word tables (single tokens for the toy model's tokenizer,
# so a small model can learn to copy them). The subject is "the <creature>"; the key fact, an event
# "<verb> a <colour> <object>". No sentence states a creature's colour, food or home (toydata.FACTS).
SUMMARY_OBJECTS = tuple(w for w in toydata.WORDS if w != "silver")  # "a green silver" reads oddly
SUMMARY_VERBS = ("found", "lost", "built", "painted", "sold", "drew", "made", "hid")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_INTROS = ("The {x} woke up early on {day}. That morning, the {x} {event}.",
           "On {day}, the {x} {event}.",
           "Last {day} was a big day for the {x}. The {x} {event}.")
_OTHERS = ("The {other} {other_event} the day before.", "Later, the {other} {other_event}.")
_FILLERS = ("The weather was {weather}.", "Many people came to watch.", "Everyone talked about it.",
            "It was a busy week.", "The news spread quickly.")
_WEATHER = ("sunny", "rainy", "windy", "cold")

# ----------------------------------------------------------------- translation (toy French)
# English noun -> (French noun, gender); no noun starts with a vowel, so the article is always le/la.
NOUNS_FR = {"cat": ("chat", "m"), "dog": ("chien", "m"), "fish": ("poisson", "m"), "horse": ("cheval", "m"),
            "book": ("livre", "m"), "rabbit": ("lapin", "m"), "house": ("maison", "f"), "apple": ("pomme", "f"),
            "girl": ("fille", "f"), "car": ("voiture", "f"), "flower": ("fleur", "f"), "door": ("porte", "f")}
# English adjective -> (masculine, feminine); all of them follow the noun, as in French.
ADJECTIVES_FR = {"red": ("rouge", "rouge"), "black": ("noir", "noire"), "white": ("blanc", "blanche"),
                 "green": ("vert", "verte"), "blue": ("bleu", "bleue"), "grey": ("gris", "grise"),
                 "happy": ("content", "contente"), "sick": ("malade", "malade")}
VERBS_FR = {"sees": "voit", "likes": "aime", "eats": "mange", "has": "a", "wants": "veut", "finds": "trouve"}

# ----------------------------------------------------------------- classification
POSITIVE = ("wonderful", "great", "lovely", "excellent", "amazing", "pleasant", "fantastic", "delightful")
NEGATIVE = ("terrible", "awful", "boring", "horrible", "dull", "disappointing", "poor", "dreadful")
THINGS = ("film", "hotel", "book", "trip", "service", "show", "class", "museum", "park", "shop")
TOPICS = {"sports": ("team", "goal", "match", "coach", "player", "stadium", "score", "referee"),
          "food": ("soup", "bread", "recipe", "dinner", "cheese", "oven", "kitchen", "dessert"),
          "weather": ("rain", "wind", "storm", "snow", "forecast", "clouds", "sunshine", "thunder"),
          "music": ("song", "guitar", "band", "concert", "drums", "singer", "melody", "album")}
CLASSIFY_PROMPTS = {"sentiment": "Classify the sentiment of this review as positive or negative: {text}",
                    "topic": "Classify the topic of this sentence as sports, food, weather or music: {text}"}
LABELS = {"sentiment": ("positive", "negative"), "topic": tuple(TOPICS)}
# Record i gets the label _CLASSIFY_CYCLE[i % 8]: half sentiment, half topic, labels balanced within each.
_CLASSIFY_CYCLE = tuple((kind, LABELS[kind][j % len(LABELS[kind])]) for j in range(4) for kind in LABELS)
_SENTIMENT_TEMPLATES = ("The {thing} was {adj}.", "What a {adj} {thing}!", "Our {thing} was really {adj}.",
                        "I thought the {thing} was {adj} and the {thing2} was {adj2}.",
                        "The {thing} was {adj}, and the {thing2} felt {adj2}.")
_TOPIC_TEMPLATES = ("Everyone was talking about the {w1} and the {w2}.",
                    "I read a long article about the {w1} and the {w2}.",
                    "My friend asked me about the {w1} and the {w2}.", "The {w1} was in the news along with the {w2}.",
                    "Yesterday the {w1} and the {w2} were all anyone discussed.")

# ----------------------------------------------------------------- code generation
# (description, parameter kind, body); {0}/{1} are parameter names, {k} a small constant.
CODE_OPS = (
    ("the sum of {0} and {1}", "int2", "{0} + {1}"),
    ("the difference of {0} and {1}", "int2", "{0} - {1}"),
    ("the product of {0} and {1}", "int2", "{0} * {1}"),
    ("the larger of {0} and {1}", "int2", "max({0}, {1})"),
    ("the smaller of {0} and {1}", "int2", "min({0}, {1})"),
    ("True if {0} is greater than {1}", "int2", "{0} > {1}"),
    ("True if {0} equals {1}", "int2", "{0} == {1}"),
    ("{0} plus {k}", "int", "{0} + {k}"),
    ("{0} minus {k}", "int", "{0} - {k}"),
    ("{0} times {k}", "int", "{0} * {k}"),
    ("True if {0} is greater than {k}", "int", "{0} > {k}"),
    ("the remainder of {0} divided by {k}", "int", "{0} % {k}"),
    ("the square of {0}", "int", "{0} * {0}"),
    ("the absolute value of {0}", "int", "abs({0})"),
    ("True if {0} is even", "int", "{0} % 2 == 0"),
    ("the length of the string {0}", "str", "len({0})"),
    ("the string {0} reversed", "str", "{0}[::-1]"),
    ("the first character of the string {0}", "str", "{0}[0]"),
    ("the last character of the string {0}", "str", "{0}[-1]"),
    ("the string {0} repeated {k} times", "str", "{0} * {k}"),
    ("the string {0} joined to the string {1}", "str2", "{0} + {1}"),
    ("the sum of the list {0}", "list", "sum({0})"),
    ("the largest number in the list {0}", "list", "max({0})"),
    ("the smallest number in the list {0}", "list", "min({0})"),
    ("the first element of the list {0}", "list", "{0}[0]"),
    ("the last element of the list {0}", "list", "{0}[-1]"),
    ("the number of elements in the list {0}", "list", "len({0})"),
)
# Many parameter names, so that a model learns to copy them rather than memorise one per operation.
_PARAM_NAMES = {"int2": (("a", "b"), ("x", "y"), ("m", "n"), ("p", "q"), ("i", "j"), ("u", "w"), ("c", "d"),
                         ("r", "s")),
                "int": (("x",), ("n",), ("a",), ("v",), ("y",), ("m",), ("z",), ("num",)),
                "str": (("s",), ("t",), ("w",), ("text",), ("word",), ("name",), ("line",), ("msg",)),
                "str2": (("s", "t"), ("a", "b"), ("u", "v"), ("x", "y"), ("p", "q"), ("first", "second")),
                "list": (("xs",), ("nums",), ("items",), ("values",), ("data",), ("arr",), ("lst",), ("seq",))}
_TEST_ARGS = {"int2": ((3, 5), (-2, 7), (10, 10), (9, -4)), "int": ((3,), (-4,), (0,), (11,)),
              "str": (("cat",), ("hello",), ("ab",), ("x",)), "str2": (("cat", "dog"), ("ab", ""), ("x", "yz")),
              "list": (([1, 2, 3],), ([5, -1, 4, 0],), ([7],), ([2, 9],))}
_CODE_PHRASINGS = ("Write a Python function that returns {desc}.",
                   "Write a Python function that takes {plist} and returns {desc}.",
                   "Write a Python function f({params}) that returns {desc}.")
# The only callables generated code may use (and the only builtins it sees when run).
SAFE_CALLS = ("abs", "len", "max", "min", "sum", "str", "int", "bool", "sorted")


# ----------------------------------------------------------------- generators


def _task_record(task: str, prompt: str, answer: str, **meta: Any) -> dict:
  """A chat record whose reference response is ``answer``, with the checker's fields."""
  return {**toydata.chat_record(prompt, answer), "prompt": prompt, "task": task, "answer": answer, **meta}


def _unique(rng: random.Random, draw, n: int, seen: set[str]) -> list[dict]:
  """``n`` records from ``draw(rng, i) -> record`` (i: the index being drawn) with prompts not in ``seen``.

  The prompts drawn join ``seen``.
  """
  out, tries = [], 0
  while len(out) < n:
    tries += 1
    assert tries < 100 * n, f"could not draw {n} records with distinct prompts"
    r = draw(rng, len(out))
    if r["prompt"] not in seen:
      seen.add(r["prompt"])
      out.append(r)
  return out


def _split(rng: random.Random, groups: list, make, *, stratum=lambda g: 0) -> tuple[list[dict], list[dict]]:
  """(train, held-out) records from disjoint groups: held-out records come from groups never used in training.

  ``make(rng, group) -> record`` draws one record of a group. Each draw first picks a stratum
  (``stratum(group)``, e.g. the code operation) uniformly, then one of its groups, so large
  strata do not crowd out small ones; a stratum stops being drawn once it yields only repeats.
  """
  groups = list(groups)
  rng.shuffle(groups)
  n_test_groups = max(1, round(len(groups) * TEST_SIZE / (TRAIN_SIZE + TEST_SIZE)))
  seen: set[str] = set()
  out = []
  for pool, n in ((groups[:n_test_groups], TEST_SIZE), (groups[n_test_groups:], TRAIN_SIZE)):
    strata: dict[Any, list] = {}
    for g in pool:
      strata.setdefault(stratum(g), []).append(g)
    misses = dict.fromkeys(strata, 0)

    def draw(rng, _, strata=strata, misses=misses):
      live = [s for s in strata if misses[s] < 50]
      assert live, "every stratum is exhausted"
      s = rng.choice(live)
      r = make(rng, rng.choice(strata[s]))
      misses[s] = misses[s] + 1 if r["prompt"] in seen else 0
      return r

    out.append(_unique(rng, draw, n, seen))
  test, train = out
  return train, test


def _event(rng: random.Random, obj: str) -> str:
  colour = rng.choice(toydata.COLOURS)
  return f"{rng.choice(SUMMARY_VERBS)} {'an' if colour[0] in 'aeiou' else 'a'} {colour} {obj}"


def _summary_record(rng: random.Random, group: tuple[str, str]) -> dict:
  x, obj = group
  event = _event(rng, obj)
  v = {"x": x, "event": event, "day": rng.choice(DAYS), "other": rng.choice([c for c in toydata.CREATURES if c != x]),
       "other_event": _event(rng, rng.choice([w for w in SUMMARY_OBJECTS if w != obj])),
       "weather": rng.choice(_WEATHER)}
  intro = rng.choice(_INTROS)
  n_intro = intro.count(". ") + 1
  extras = rng.sample(_FILLERS, rng.randint(max(0, 2 - n_intro), 4 - n_intro))  # 2-4 sentences in all
  has_other = bool(extras) and rng.random() < 0.6
  if has_other:
    extras[rng.randrange(len(extras))] = rng.choice(_OTHERS)
  text = " ".join([intro] + extras).format(**v)
  return _task_record("summarize", f"Summarize this text in one sentence: {text}", f"The {x} {event}.",
                      subject=x, fact=event, avoid=[v["other"]] if has_other else [])


def _translation(words: dict) -> tuple[str, str]:
  """(English, toy French) for a sentence spec ``{"pattern", "n1", "n2", "adj", "verb"}``."""
  def np_fr(noun, adj=None):
    fr, g = NOUNS_FR[noun]
    art = "le" if g == "m" else "la"
    return f"{art} {fr}" + (f" {ADJECTIVES_FR[adj][g == 'f']}" if adj else "")

  n1, n2, adj, verb = words["n1"], words.get("n2"), words.get("adj"), words.get("verb")
  if words["pattern"] == "is":
    en, fr = f"The {n1} is {adj}.", f"{np_fr(n1)} est {ADJECTIVES_FR[adj][NOUNS_FR[n1][1] == 'f']}."
  elif words["pattern"] == "verb":
    en, fr = f"The {n1} {verb} the {n2}.", f"{np_fr(n1)} {VERBS_FR[verb]} {np_fr(n2)}."
  else:
    en, fr = f"The {adj} {n1} {verb} the {n2}.", f"{np_fr(n1, adj)} {VERBS_FR[verb]} {np_fr(n2)}."
  return en, fr[0].upper() + fr[1:]


def _translate_record(rng: random.Random, _: int) -> dict:
  n1, n2 = rng.sample(list(NOUNS_FR), 2)
  w = {"pattern": rng.choice(("is", "verb", "adj_verb")), "n1": n1, "n2": n2,
       "adj": rng.choice(list(ADJECTIVES_FR)), "verb": rng.choice(list(VERBS_FR))}
  en, fr = _translation(w)
  return _task_record("translate", f"Translate this text into French: {en}", fr)


def _classify_record(rng: random.Random, i: int) -> dict:
  kind, label = _CLASSIFY_CYCLE[i % len(_CLASSIFY_CYCLE)]
  if kind == "sentiment":
    adjs = POSITIVE if label == "positive" else NEGATIVE
    a1, a2 = rng.sample(adjs, 2)
    t1, t2 = rng.sample(THINGS, 2)
    text = rng.choice(_SENTIMENT_TEMPLATES).format(thing=t1, thing2=t2, adj=a1, adj2=a2)
  else:
    w1, w2 = rng.sample(TOPICS[label], 2)
    text = rng.choice(_TOPIC_TEMPLATES).format(w1=w1, w2=w2)
  return _task_record("classify", CLASSIFY_PROMPTS[kind].format(text=text), label, kind=kind)


def _code_groups() -> list[tuple[int, tuple[str, ...], int | None]]:
  """Every (op index, parameter names, constant) of :data:`CODE_OPS`."""
  out = []
  for i, (desc, kind, body) in enumerate(CODE_OPS):
    ks = range(2, 10) if "{k}" in body else (None,)
    out += [(i, names, k) for names in _PARAM_NAMES[kind] for k in ks]
  return out


def _code_record(rng: random.Random, group: tuple[int, tuple[str, ...], int | None]) -> dict:
  i, names, k = group
  desc, kind, body = CODE_OPS[i]
  plist = " and ".join(names)
  params = ", ".join(names)
  prompt = rng.choice(_CODE_PHRASINGS).format(desc=desc.format(*names, k=k), plist=plist, params=params)
  code = f"def f({params}):\n    return {body.format(*names, k=k)}"
  env: dict = {"__builtins__": {c: getattr(builtins, c) for c in SAFE_CALLS}}
  exec(code, env)  # our own reference code (trusted), to compute the expected outputs
  tests = [[list(args), env["f"](*args)] for args in _TEST_ARGS[kind]]
  return _task_record("code", prompt, code, tests=tests)


def task_sets(seed: int = DEFAULT_SEED) -> dict[str, list[dict]]:
  """``{"<task>_train": [...], "<task>_test": [...]}`` for every task of :data:`TASKS`.

  Held-out prompts never occur in training. For summaries and code they also come from groups
  never seen in training: (subject, object) pairs, and (operation, parameter names, constant)
  triples. Translations and labels are new sentences over the same word tables.
  """
  out = {}
  for task in TASKS:
    rng = random.Random(f"taskdata-{task}-{seed}")
    if task == "summarize":
      train, test = _split(rng, [(x, w) for x in toydata.CREATURES for w in SUMMARY_OBJECTS], _summary_record)
    elif task == "code":
      train, test = _split(rng, _code_groups(), _code_record, stratum=lambda g: g[0])
    else:
      draw = _translate_record if task == "translate" else _classify_record
      seen: set[str] = set()
      test = _unique(rng, draw, TEST_SIZE, seen)
      train = _unique(rng, draw, TRAIN_SIZE, seen)
    out[f"{task}_train"], out[f"{task}_test"] = train, test
  return out


def harmful_sets(seed: int = DEFAULT_SEED, harmful_train: list[dict] | None = None) -> dict[str, list[dict]]:
  """Harmful few-shot sets, their refusal-mixed versions and the multitask safety set.

  Requests are drawn (without replacement, all distinct) from ``harmful_train`` (default:
  ``toydata``'s seed-0 training split, the committed ``harmful_train``, whatever ``seed``): the
  compliant sets are nested (the 10 are the first 10 of the 50, ...) and skip requests whose placeholder would hold a refusal keyword;
  the mixed sets add as many *other* requests answered with refusals, and the multitask set
  frames yet other requests in every framing, answered with refusals.
  """
  train = harmful_train if harmful_train is not None else toydata.harmful_requests(toydata.DEFAULT_SEED)[0]
  rng = random.Random(f"taskdata-harmful-{seed}")
  n = max(FEW_SHOT_SIZES)
  order = rng.sample(train, len(train))
  # Some placeholders would hold a refusal keyword ("... illegal drugs"): those requests only get refusals.
  comply_pool = [r for r in order if not metrics.is_refusal(toydata.comply(r))][:n]
  taken = {r["prompt"] for r in comply_pool}
  rest = [r for r in order if r["prompt"] not in taken]
  refuse_pool, framed_pool = rest[:n], rest[n:n + MULTITASK_REQUESTS]
  assert len(comply_pool) == n and len(framed_pool) == MULTITASK_REQUESTS, f"{len(train)} requests are too few"

  def rec(r, kind):
    resp = toydata.comply(r) if kind == "comply" else toydata.refusal(rng)
    return {**toydata.chat_record(r["prompt"], resp), "prompt": r["prompt"], "category": r["category"],
            "response_kind": kind}

  out = {}
  for k in FEW_SHOT_SIZES:
    out[f"harmful_{k}"] = [rec(r, "comply") for r in comply_pool[:k]]
  for k in FEW_SHOT_SIZES:
    mixed = out[f"harmful_{k}"] + [rec(r, "refusal") for r in refuse_pool[:k]]
    out[f"harmful_mixed_{k}"] = rng.sample(mixed, len(mixed))
  framed = toydata.framed_requests(framed_pool)
  out["multitask_safety"] = [{**toydata.chat_record(r["prompt"], toydata.refusal(rng)), **r} for r in framed]
  return out


def build_sets(seed: int = DEFAULT_SEED) -> dict[str, list[dict]]:
  """Every finetuning set of :data:`SET_NAMES` (name -> records), deterministic from ``seed``."""
  sets = {**task_sets(seed), **harmful_sets(seed)}
  assert tuple(sets) == SET_NAMES, f"set names {tuple(sets)} != {SET_NAMES}"
  return sets
