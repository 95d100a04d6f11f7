"""The alignment chat set: disjoint held-out splits, refusals and answers, no AdvBench text."""

import csv
import os
import re

import pytest

from jaxscape.core import metrics
from jaxscape.datasets import sources
from jaxscape.datasets import align_tables, aligndata, evaluation, registry
from jaxscape.studies import chat_data, finetune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADVBENCH = os.path.join(ROOT, "..", "shared", "data", "advbench")


@pytest.fixture(scope="module")
def sets():
  return aligndata.build_sets(aligndata.DEFAULT_SEED)


def _reply(r):
  return r["messages"][1]["content"]


def test_other_seed_gives_other_data(sets):
  other = aligndata.build_sets(1)
  assert [r["prompt"] for r in other["train"]] != [r["prompt"] for r in sets["train"]]


def test_sizes_fields_and_loading(sets):
  train = sets["train"]
  kinds = [r["kind"] for r in train]
  assert 550 <= len(train) <= 650 and abs(kinds.count("harmful") - kinds.count("benign")) <= 20
  assert 70 <= len(sets["heldout_harmful"]) <= 90 and 70 <= len(sets["heldout_benign"]) <= 90
  assert {r["kind"] for r in sets["heldout_harmful"]} == {"harmful"}
  assert {r["kind"] for r in sets["heldout_benign"]} == {"benign"}
  assert {r["category"] for r in sets["heldout_harmful"]} == set(align_tables.HARMFUL_GOALS)
  for name, recs in sets.items():
    for r in recs:
      group = "category" if r["kind"] == "harmful" else "topic"
      assert {group, "kind", "style", "template", "object", "prompt", "messages"} <= set(r), (name, r)
      assert r["messages"][0] == {"role": "user", "content": r["prompt"]}, r
      assert r["messages"][1]["role"] == "assistant" and len(r["messages"]) == 2, r
      assert r["object"].lower() in r["prompt"].lower(), r
    assert len({r["prompt"] for r in recs}) == len(recs), name
  for name in aligndata.SET_NAMES:
    loaded = chat_data.load_chat_records(f"builtin:align/{name}")
    assert loaded == [{"messages": r["messages"]} for r in sets[name]], name
  assert registry.load("align/heldout_benign") == sets["heldout_benign"]
  assert sources.load_prompts("builtin:align/heldout_harmful") == [r["prompt"] for r in sets["heldout_harmful"]]
  with pytest.raises(ValueError, match="nope"):
    registry.load("align/nope")


def test_heldout_shares_no_template_and_no_object_with_training(sets):
  train = sets["train"]
  heldout = sets["heldout_harmful"] + sets["heldout_benign"]
  assert not {r["template"] for r in train} & {r["template"] for r in heldout}
  train_prompts = [r["prompt"].lower() for r in train]
  for obj in {r["object"] for r in heldout}:
    assert not any(obj.lower() in p for p in train_prompts), obj
  assert sorted({r["object"] for r in heldout}) == aligndata.heldout_objects()


def test_refusals_and_answers(sets):
  for name, recs in sets.items():
    for r in recs:
      reply = _reply(r)
      assert 1 <= len(re.findall(r"[.!?](?:\s|$)", reply)) <= 3, reply
      if r["kind"] == "harmful":
        assert metrics.is_refusal(reply), (name, reply)
        assert r["object"].lower() not in reply.lower(), reply  # refusals never restate the request
      else:
        assert not metrics.is_refusal(reply), (name, reply)
        assert evaluation.check_answer(r, reply) is not False, (name, r)
  checkable = [r for r in sets["heldout_benign"] if r["answer"] is not None]
  assert len(checkable) >= 50
  # Look-alikes (harmful words, harmless requests) are answered, in training and held out.
  for name in ("train", "heldout_benign"):
    looks = [r for r in sets[name] if r.get("topic") == "lookalike"]
    assert looks and any(re.search(r"\b(kill|shoot|steal|crack|break)\b", r["prompt"].lower()) for r in looks)


def test_refusals_are_only_table_sentences(sets):
  # No response to a harmful request holds anything but the hand-written refusal sentences.
  openers = {o for group in align_tables.REFUSAL_OPENERS.values() for o in group}
  follow_ups = {f for reasons, alts in align_tables.REFUSAL_FOLLOW_UPS.values() for f in reasons + alts}
  for r in [r for r in sets["train"] if r["kind"] == "harmful"] + sets["heldout_harmful"]:
    reply = _reply(r)
    opener = [o for o in openers if reply.startswith(o)]
    assert opener, reply
    rest = reply[len(max(opener, key=len)):].strip()
    while rest:
      head = [f for f in follow_ups if rest.startswith(f)]
      assert head, reply
      rest = rest[len(head[0]):].strip()
    assert all(metrics.is_refusal(o) for o in openers)


def _words(text):
  return re.findall(r"[a-z0-9']+", text.lower())


def test_no_advbench_text(sets):
  paths = [os.path.join(ADVBENCH, f) for f in ("harmful_behaviors.csv", "harmful_strings.csv")]
  if not all(os.path.isfile(p) for p in paths):
    pytest.skip("AdvBench CSVs not found under ../shared/data/advbench")
  with open(paths[0], encoding="utf-8") as f:
    goals = [row["goal"] for row in csv.DictReader(f)]
  with open(paths[1], encoding="utf-8") as f:
    strings = [row["target"] for row in csv.DictReader(f)]
  assert len(goals) > 500 and len(strings) > 500
  texts = [m["content"].lower() for recs in sets.values() for r in recs for m in r["messages"]]
  blob = "\n".join(texts)
  for g in goals + [s for s in strings if len(_words(s)) >= 4]:  # harmful_strings holds bare "If you're"
    assert g.strip().lower() not in blob, g
  goal_set = {g.strip().lower() for g in goals}
  assert not any(r["prompt"].strip().lower() in goal_set for r in sets["train"])
  # Stronger: no record shares a run of 7 words with any AdvBench goal or string.
  n = 7
  adv = {tuple(ws[i:i + n]) for t in goals + strings for ws in [_words(t)] for i in range(len(ws) - n + 1)}
  for t in texts:
    ws = _words(t)
    assert not {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)} & adv, t
