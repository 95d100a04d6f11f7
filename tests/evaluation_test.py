"""Scoring generations on the built-in sets: the toy's answer checks, the alignment check, the task checkers, ASR per
framing, and the evaluations of a model."""

import os

import pytest

from jaxscape.datasets import evaluation, registry, taskdata, toydata


@pytest.mark.parametrize("task,answer,generation,ok", [
    ("add", "8", "3 + 5 = 8.", True),
    ("add", "3", "3 + 5 = 9.", False),  # the operand is not the answer
    ("add", "8", "I'm sorry, 8.", False),  # refusals never count
    ("larger", "9", "9 is larger.", True),
    ("larger", "9", "1 is larger than 9.", False),
    ("next", "39", "After 38 comes 39.", True),
    ("repeat", "apple", "apple", True),
    ("repeat", "apple", "applesauce", False),
    ("upper", "APPLE", "APPLE", True),
    ("upper", "APPLE", "apple", False),
    ("first_letter", "b", "The first letter of banana is b.", True),
    ("first_letter", "b", "The first letter of banana is a.", False),
    ("first_letter", "a", "The first letter of apple is a.", True),
    ("colour", "blue", "The zorp is blue.", True),
    ("colour", "blue", "The zorp is blue and red.", False),
    ("colour", "blue", "The zorp is green.", False),
    ("opposite", "cold", "The opposite of hot is cold.", True),
    ("opposite", "cold", "The opposite of hot is hot.", False),
])
def test_check_benign(task, answer, generation, ok):
  prompt = "What is the opposite of hot?" if task == "opposite" else "q"
  assert evaluation.check_benign({"task": task, "answer": answer, "prompt": prompt}, generation) is ok


def test_check_benign_rejects_unknown_task():
  with pytest.raises(ValueError, match="'nope'"):
    evaluation.check_benign({"task": "nope", "answer": "1", "prompt": "q"}, "1")


def test_accuracy_helpers():
  recs = registry.load("benign_test")[:4]
  gens = [r["response"] for r in recs[:3]] + ["I cannot do that."]
  assert evaluation.benign_accuracy(recs, gens) == 75.0
  assert evaluation.refusal_rate(gens) == 25.0
  with pytest.raises(ValueError):
    evaluation.benign_accuracy(recs, gens[:2])


def test_check_answer():
  rec = {"answer": "Paris"}
  assert evaluation.check_answer(rec, "The capital is paris.") is True
  assert evaluation.check_answer(rec, "It is Lyon.") is False
  assert evaluation.check_answer(rec, "I'm sorry, Paris is not something I can discuss.") is False
  assert evaluation.check_answer({"answer": None}, "Boil it for 9 minutes.") is None


def test_summary_checker():
  r = {"task": "summarize", "subject": "tove", "fact": "found an orange ladder", "avoid": ["glim"]}
  ok = evaluation.check_summary
  assert ok(r, "The tove found an orange ladder.")
  assert ok(r, "On Sunday, the tove found an orange ladder")
  assert not ok(r, "The glim found an orange ladder.")  # wrong subject
  assert not ok(r, "The tove found a black ladder.")  # wrong fact
  assert not ok(r, "The tove found an orange ladder and the glim hid a rabbit.")  # the other creature
  assert not ok(r, "The tove found an orange ladder. It was sunny.")  # not one sentence
  assert not ok(r, "Sorry, the tove found an orange ladder.")  # refusal keyword


def test_translation_and_label_checkers():
  r = {"task": "translate", "answer": "Le chat noir voit la pomme."}
  assert evaluation.check_translation(r, " le chat noir voit la pomme ")
  assert not evaluation.check_translation(r, "Le noir chat voit la pomme.")  # word order
  assert not evaluation.check_translation(r, "La chat noir voit la pomme.")  # gender
  assert taskdata._translation({"pattern": "adj_verb", "n1": "door", "n2": "cat", "adj": "white", "verb": "eats"}) \
      == ("The white door eats the cat.", "La porte blanche mange le chat.")
  lab = {"task": "classify", "answer": "positive"}
  assert evaluation.check_label(lab, "Positive.") and not evaluation.check_label(lab, "negative")
  assert not evaluation.check_label(lab, "positive or negative")


def test_framed_asr():
  framed = toydata.framed_requests(registry.load("harmful_test")[:4])
  gens = ["Sure." if r["framing"] in ("translate", "code") else "I cannot do that." for r in framed]
  gens[0] = "Sure."  # one of the four plain requests answered
  assert evaluation.framed_asr(framed, gens) == {"plain": 25.0, "summarize": 0.0, "translate": 100.0,
                                              "classify": 0.0, "code": 100.0}
  with pytest.raises(ValueError):
    evaluation.framed_asr(framed, gens[:-1])


def test_task_checks_validate_input():
  code_test = registry.load("finetune/code_test")
  with pytest.raises(ValueError, match="'poetry'"):
    evaluation.task_metric("poetry", code_test, ["x"] * len(code_test))
  with pytest.raises(ValueError):
    evaluation.task_metric("code", code_test, [])


def test_evaluate_tasks_on_the_toy_model():
  from jaxscape.core import convert
  model = convert.load_model(os.path.join(os.path.dirname(taskdata.__file__), "..", "..", "checkpoints", "toy-chat"))
  out = evaluation.evaluate_tasks(model, samples=2, max_new_tokens=4, batch_size=8)
  assert list(out["framed_asr"]) == list(toydata.FRAMINGS) and out["n_framed"] == 2 * len(toydata.FRAMINGS)
  assert set(out["task_accuracy"]) == set(taskdata.TASKS) and out["n_task"] == dict.fromkeys(taskdata.TASKS, 2)
  assert all(0.0 <= v <= 100.0 for v in [*out["framed_asr"].values(), *out["task_accuracy"].values()])
