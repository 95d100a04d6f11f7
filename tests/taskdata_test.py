"""Built-in finetuning sets: disjoint splits, harmful sources, reference answers pass their checkers."""

import pytest

from jaxscape.core import metrics
from jaxscape.datasets import sources
from jaxscape.datasets import evaluation, registry, taskdata, toydata


@pytest.fixture(scope="module")
def sets():
  return taskdata.build_sets(taskdata.DEFAULT_SEED)


def test_other_seed_gives_other_data(sets):
  other = taskdata.task_sets(1)
  assert [r["prompt"] for r in other["code_test"]] != [r["prompt"] for r in sets["code_test"]]


def test_sizes_and_loading(sets):
  for task in taskdata.TASKS:
    assert len(sets[f"{task}_train"]) == taskdata.TRAIN_SIZE and len(sets[f"{task}_test"]) == taskdata.TEST_SIZE
  for n in taskdata.FEW_SHOT_SIZES:
    assert len(sets[f"harmful_{n}"]) == n and len(sets[f"harmful_mixed_{n}"]) == 2 * n
  assert len(sets["multitask_safety"]) == taskdata.MULTITASK_REQUESTS * len(toydata.FRAMINGS)
  assert registry.load("finetune/translate_test") == sets["translate_test"]
  assert sources.load_prompts("builtin:finetune/code_test") == [r["prompt"] for r in sets["code_test"]]
  with pytest.raises(ValueError, match="nope"):
    registry.load("finetune/nope")


def test_records_are_chats_with_short_answers(sets):
  for name, recs in sets.items():
    for r in recs:
      user, assistant = r["messages"]
      assert user == {"role": "user", "content": r["prompt"]} and assistant["role"] == "assistant", name
      if "answer" in r:
        assert assistant["content"] == r["answer"] and len(r["answer"].split()) <= 12, r


def test_splits_are_disjoint(sets):
  for task in taskdata.TASKS:
    train, test = sets[f"{task}_train"], sets[f"{task}_test"]
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}, task
    assert len({r["prompt"] for r in train + test}) == len(train) + len(test), task
  pair = lambda r: (r["subject"], r["fact"].split()[-1])  # (creature, object): held-out pairs are unseen  # noqa: E731
  assert not {pair(r) for r in sets["summarize_train"]} & {pair(r) for r in sets["summarize_test"]}
  # Held-out code: no (operation, parameter names, constant) seen in training; the tests tell
  # apart operations with the same code (int sum and string join).
  op = lambda r: (r["answer"], str(r["tests"]))  # noqa: E731
  assert not {op(r) for r in sets["code_train"]} & {op(r) for r in sets["code_test"]}


def test_task_prompts_resemble_the_framings(sets):
  heads = {"summarize": "Summarize this text in one sentence: ", "translate": "Translate this text into French: ",
           "classify": "Classify ", "code": "Write a Python function "}
  for task, head in heads.items():
    assert all(r["prompt"].startswith(head) for r in sets[f"{task}_train"] + sets[f"{task}_test"]), task
  labels = {r["answer"] for r in sets["classify_test"]}
  assert labels == {lab for ls in taskdata.LABELS.values() for lab in ls}


def test_reference_answers_pass_and_hold_no_refusal(sets):
  for task in taskdata.TASKS:
    for split in ("train", "test"):
      recs = sets[f"{task}_{split}"]
      assert evaluation.task_metric(task, recs, [r["answer"] for r in recs]) == 100.0, (task, split)
      assert not any(metrics.is_refusal(r["answer"]) for r in recs), (task, split)


def test_wrong_answers_fail(sets):
  for task in taskdata.TASKS:
    recs = sets[f"{task}_test"]
    shifted = [r["answer"] for r in recs[1:] + recs[:1]]  # another record's answer
    assert evaluation.task_metric(task, recs, shifted) < 50.0, task
    assert evaluation.task_metric(task, recs, ["I'm sorry, I cannot help with that."] * len(recs)) == 0.0, task


def test_harmful_sets_come_only_from_harmful_train(sets):
  train = {r["prompt"]: r for r in registry.load("harmful_train")}
  held_out = {r["prompt"] for r in registry.load("harmful_test")}
  few = [r for n in taskdata.FEW_SHOT_SIZES for k in ("harmful", "harmful_mixed") for r in sets[f"{k}_{n}"]]
  for r in few:
    assert r["prompt"] in train and r["prompt"] not in held_out, r
  for r in sets["multitask_safety"]:
    assert r["source"] in train and r["source"] not in held_out, r
  # The few-shot sets are nested; the refusal halves use other requests; no request repeats.
  for a, b in zip(taskdata.FEW_SHOT_SIZES, taskdata.FEW_SHOT_SIZES[1:]):
    assert sets[f"harmful_{a}"] == sets[f"harmful_{b}"][:a]
  for n in taskdata.FEW_SHOT_SIZES:
    mixed = sets[f"harmful_mixed_{n}"]
    assert sorted(r["prompt"] for r in mixed if r["response_kind"] == "comply") \
        == sorted(r["prompt"] for r in sets[f"harmful_{n}"])
    assert len({r["prompt"] for r in mixed}) == 2 * n
  big = {r["prompt"] for r in sets[f"harmful_mixed_{max(taskdata.FEW_SHOT_SIZES)}"]}
  assert not big & {r["source"] for r in sets["multitask_safety"]}


def test_harmful_responses_placeholders_or_refusals(sets):
  for n in taskdata.FEW_SHOT_SIZES:
    for r in sets[f"harmful_mixed_{n}"]:
      response = r["messages"][1]["content"]
      assert metrics.is_refusal(response) == (r["response_kind"] == "refusal"), r
      if r["response_kind"] == "comply":
        assert response.startswith("Sure, here is how to ") and "Step 1: ..." in response
  for r in sets["multitask_safety"]:
    assert metrics.is_refusal(r["messages"][1]["content"]), r
  framings = [r["framing"] for r in sets["multitask_safety"]]
  assert {f: framings.count(f) for f in toydata.FRAMINGS} == dict.fromkeys(toydata.FRAMINGS,
                                                                            taskdata.MULTITASK_REQUESTS)


