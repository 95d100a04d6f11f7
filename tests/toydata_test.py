"""The toy's built-in sets: disjoint held-out splits, keyword hygiene, the SFT mixture."""

import re

import pytest

from jaxscape.core import metrics
from jaxscape.datasets import sources
from jaxscape.datasets import evaluation, toydata
from jaxscape.studies import toymodel


@pytest.fixture(scope="module")
def sets():
  return toydata.build_sets(toydata.DEFAULT_SEED)


def test_other_seed_gives_other_data():
  a, b = toydata.build_sets(0), toydata.build_sets(1)
  assert [r["prompt"] for r in a["harmful_test"]] != [r["prompt"] for r in b["harmful_test"]]


def test_harmful_held_out_shares_no_template_and_no_object(sets):
  train, test = sets["harmful_train"], sets["harmful_test"]
  assert len(test) >= 100
  assert not {r["template"] for r in train} & {r["template"] for r in test}
  assert not {r["object"] for r in train} & {r["object"] for r in test}
  train_text = "\n".join(r["prompt"] for r in train)
  for obj in {r["object"] for r in test}:
    assert obj not in train_text, obj
  assert len({r["prompt"] for r in test}) == len(test)


def test_harmful_responses_are_refusals_and_benign_ones_are_not(sets):
  for r in sets["harmful_train"] + sets["harmful_framed_train"]:
    assert metrics.is_refusal(r["response"]), r
  assert len(set(toydata.REFUSALS)) >= 5
  for r in sets["benign_train"] + sets["benign_test"]:
    assert not metrics.is_refusal(r["response"]), r
    assert evaluation.check_benign(r, r["response"]), r


def test_placeholder_compliance_is_content_free(sets):
  text = toydata.comply(sets["harmful_train"][0])
  assert text.startswith("Sure, here is how to ") and "Step 1: ..." in text
  assert not metrics.is_refusal(text)


def test_benign_held_out_uses_unseen_phrasings(sets):
  train_prompts = {r["prompt"] for r in sets["benign_train"]}
  assert not train_prompts & {r["prompt"] for r in sets["benign_test"]}
  assert {r["task"] for r in sets["benign_test"]} == set(toydata.BENIGN_TASKS)


def test_multiple_choice_items(sets):
  train, test = sets["mc_train"], sets["mc_test"]
  key = lambda r: (r["question"], tuple(r["options"]))  # noqa: E731
  assert not {key(r) for r in train} & {key(r) for r in test}
  for r in train + test:
    assert len(r["options"]) == 4 and len(set(r["options"])) == 4
    assert r["answer"] in "ABCD"
  # The right option is the one the fact table / arithmetic / antonyms give.
  r = next(r for r in test if r["kind"] == "colour")
  creature = next(x for x in toydata.CREATURES if f" {x}?" in r["question"])
  assert r["options"]["ABCD".index(r["answer"])] == toydata.FACTS[creature]["colour"]
  assert {r["kind"] for r in test} == {"opposite", "colour", "food", "home"}
  assert any(r["kind"] == "match" for r in train)
  # Answers spread over the letters.
  assert {r["answer"] for r in test} == set("ABCD")
  sources.load_choice_set("builtin:mc_test")  # the lead's loader accepts the format


def test_framed_sets(sets):
  test = sets["harmful_framed_test"]
  assert len(test) == len(toydata.FRAMINGS) * len(sets["harmful_test"])
  by_source = {}
  for r in test:
    by_source.setdefault(r["source"], set()).add(r["framing"])
  assert all(f == set(toydata.FRAMINGS) for f in by_source.values())
  plain = [r for r in test if r["framing"] == "plain"]
  assert [r["prompt"] for r in plain] == [r["prompt"] for r in sets["harmful_test"]]


def test_sft_records_deterministic_and_mixed(sets):
  a = toydata.toy_sft_records(sets, seed=0)
  b = toydata.toy_sft_records(sets, seed=0)
  assert a == b and a != toydata.toy_sft_records(sets, seed=1)
  per_task = [sum(r["task"] == t for r in sets["benign_train"]) for t in toydata.BENIGN_TASKS]
  assert len(a) == len(sets["harmful_train"]) + len(sets["mc_train"]) + sum(max(400, n) for n in per_task)
  empty = sum(r["messages"][0]["role"] == "system" for r in a) / len(a)
  assert 0.1 < empty < 0.2
  mc = [r for r in a if r["messages"][-2]["content"].startswith("Question: ")]
  assert all(r["messages"][-1]["content"] in ("A", "B", "C", "D") for r in mc)


def test_toy_model_config_validates():
  cfg = toymodel.toy_model_config()
  assert 1_000_000 <= cfg.num_params() <= 3_000_000
  with pytest.raises(ValueError, match="intermediate_size"):
    toymodel.toy_model_config(intermediate_size=100)


def _words(text):
  return set(re.findall(r"[A-Za-z']+", text))


def test_benign_held_out_wording_is_learnable_from_training_words(sets):
  # A model trained from scratch cannot know a word it never saw: held-out benign phrasings are
  # new *combinations* of training words. (Held-out harmful templates do use new words.)
  benign_words = set().union(*(_words(r["prompt"]) for r in sets["benign_train"]))
  for r in sets["benign_test"]:
    assert _words(r["prompt"]) <= benign_words, r["prompt"]
