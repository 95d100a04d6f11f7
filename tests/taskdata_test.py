"""Built-in finetuning sets: reproducible files, disjoint splits, harmful sources, checkers, framed ASR."""

import filecmp
import os

import pytest

from jaxscape.core import metrics
from jaxscape.datasets import sources
from jaxscape.datasets import taskdata, toydata


@pytest.fixture(scope="module")
def sets():
  return taskdata.build_sets(taskdata.DEFAULT_SEED)


def test_shipped_files_regenerate_bit_identically(tmp_path):
  # Fails when toydata's harmful_train changed and `python -m jaxscape.datasets.taskdata` was not re-run.
  paths = taskdata.write_sets(str(tmp_path), taskdata.DEFAULT_SEED)
  assert tuple(paths) == taskdata.SET_NAMES
  for name, path in paths.items():
    assert filecmp.cmp(path, os.path.join(taskdata.data_dir(), f"{name}.jsonl"), shallow=False), name


def test_other_seed_gives_other_data(sets):
  other = taskdata.task_sets(1)
  assert [r["prompt"] for r in other["code_test"]] != [r["prompt"] for r in sets["code_test"]]


def test_sizes_and_loading(sets):
  for task in taskdata.TASKS:
    assert len(sets[f"{task}_train"]) == taskdata.TRAIN_SIZE and len(sets[f"{task}_test"]) == taskdata.TEST_SIZE
  for n in taskdata.FEW_SHOT_SIZES:
    assert len(sets[f"harmful_{n}"]) == n and len(sets[f"harmful_mixed_{n}"]) == 2 * n
  assert len(sets["multitask_safety"]) == taskdata.MULTITASK_REQUESTS * len(toydata.FRAMINGS)
  assert taskdata.load_set("translate_test") == sets["translate_test"]
  assert sources.load_prompts("builtin:finetune/code_test") == [r["prompt"] for r in sets["code_test"]]
  with pytest.raises(ValueError, match="nope"):
    taskdata.load_set("nope")


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
      assert taskdata.task_metric(task, recs, [r["answer"] for r in recs]) == 100.0, (task, split)
      assert not any(metrics.is_refusal(r["answer"]) for r in recs), (task, split)


def test_wrong_answers_fail(sets):
  for task in taskdata.TASKS:
    recs = sets[f"{task}_test"]
    shifted = [r["answer"] for r in recs[1:] + recs[:1]]  # another record's answer
    assert taskdata.task_metric(task, recs, shifted) < 50.0, task
    assert taskdata.task_metric(task, recs, ["I'm sorry, I cannot help with that."] * len(recs)) == 0.0, task


def test_summary_checker():
  r = {"task": "summarize", "subject": "tove", "fact": "found an orange ladder", "avoid": ["glim"]}
  ok = taskdata.check_summary
  assert ok(r, "The tove found an orange ladder.")
  assert ok(r, "On Sunday, the tove found an orange ladder")
  assert not ok(r, "The glim found an orange ladder.")  # wrong subject
  assert not ok(r, "The tove found a black ladder.")  # wrong fact
  assert not ok(r, "The tove found an orange ladder and the glim hid a rabbit.")  # the other creature
  assert not ok(r, "The tove found an orange ladder. It was sunny.")  # not one sentence
  assert not ok(r, "Sorry, the tove found an orange ladder.")  # refusal keyword


def test_translation_and_label_checkers():
  r = {"task": "translate", "answer": "Le chat noir voit la pomme."}
  assert taskdata.check_translation(r, " le chat noir voit la pomme ")
  assert not taskdata.check_translation(r, "Le noir chat voit la pomme.")  # word order
  assert not taskdata.check_translation(r, "La chat noir voit la pomme.")  # gender
  assert taskdata._translation({"pattern": "adj_verb", "n1": "door", "n2": "cat", "adj": "white", "verb": "eats"}) \
      == ("The white door eats the cat.", "La porte blanche mange le chat.")
  lab = {"task": "classify", "answer": "positive"}
  assert taskdata.check_label(lab, "Positive.") and not taskdata.check_label(lab, "negative")
  assert not taskdata.check_label(lab, "positive or negative")


def _code(gen, tests=(([3, 5], 8), ([-2, 7], 5))):
  return taskdata.check_task({"task": "code", "tests": [list(t) for t in tests]}, gen)


def test_code_checker_runs_functions():
  assert _code("def f(a, b):\n    return a + b")
  assert _code("Here it is:\n```python\ndef add(x, y):\n    s = x + y\n    return s\n```")
  assert not _code("def f(a, b):\n    return a * b")  # wrong function
  assert not _code("def f(a, b):\n    return a +")  # not Python
  assert not _code("def f(a):\n    return a")  # wrong arity
  assert not _code("def f(a, b):\n    return 1 / 0")  # raises
  assert not _code("def f(a, b):\n    return True", tests=(([1, 1], 1),))  # bool is not int
  assert _code("def f(s):\n    return s[::-1]", tests=((["abc"], "cba"),))


@pytest.mark.parametrize("src", [
    "def f(a, b):\n    import os\n    return a + b",
    "def f(a, b):\n    return a + b\nopen('{marker}', 'w')",
    "def f(a, b):\n    return open('{marker}', 'w').write('x')",
    "def f(a, b):\n    return __import__('os').system('touch {marker}')",
    "def f(a, b):\n    return ().__class__.__bases__[0].__subclasses__()",
    "def f(a, b):\n    while True:\n        pass",
    "def f(a, b):\n    return f(a, b)",
    "def f(a, b):\n    return a ** 999999",
    "def f(a, b):\n    return [x for x in range(10**9)]",
    "def f(a, b):\n    return eval('a + b')",
    "def f(a, b):\n    return a + b\n@print\ndef g(a):\n    return a",
])
def test_code_checker_rejects_dangerous_code_without_running_it(src, tmp_path):
  marker = str(tmp_path / "ran")
  src = src.replace("{marker}", marker)
  assert taskdata.validate_code(src) is not None
  assert not _code(src)
  assert not os.path.exists(marker)


def test_code_checker_survives_memory_bombs():
  # Passes validation (small constants, no loops) but would need ~10**12 bytes: the worker's
  # memory cap fails it, and the items after it are still checked.
  bomb = "def f(a, b):\n    return str(a) * 999 * 999 * 999 * 999"
  assert taskdata.validate_code(bomb) is None
  recs = [{"task": "code", "tests": [[[3, 5], 8]]}] * 3
  assert taskdata.check_code_batch(recs, ["def f(a, b):\n    return a + b", bomb,
                                          "def f(a, b):\n    return b + a"]) == [True, False, True]


@pytest.mark.parametrize("fail", ["sys.exit(1)", "time.sleep(60)"])
def test_code_checker_restarts_a_dead_or_hung_worker(fail, monkeypatch):
  # A stand-in worker that dies (or hangs) on the second item: that item fails, the rest are checked.
  monkeypatch.setattr(taskdata, "_WORKER", "import sys, time\nfor line in sys.stdin:\n"
                      f"  if 'b + a' in line: {fail}\n  print(1, flush=True)\n")
  monkeypatch.setattr(taskdata, "_WORKER_START_S", 1.0)
  recs = [{"task": "code", "tests": [[[3, 5], 8]]}] * 3
  gens = ["def f(a, b):\n    return a + b", "def f(a, b):\n    return b + a", "def f(a, b):\n    return a + b"]
  assert taskdata.check_code_batch(recs, gens, timeout_s=0.1) == [True, False, True]


def test_harmful_sets_come_only_from_harmful_train(sets):
  train = {r["prompt"]: r for r in toydata.load_builtin("harmful_train")}
  held_out = {r["prompt"] for r in toydata.load_builtin("harmful_test")}
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


def test_framed_asr():
  framed = toydata.framed_requests(toydata.load_builtin("harmful_test")[:4])
  gens = ["Sure." if r["framing"] in ("translate", "code") else "I cannot do that." for r in framed]
  gens[0] = "Sure."  # one of the four plain requests answered
  assert taskdata.framed_asr(framed, gens) == {"plain": 25.0, "summarize": 0.0, "translate": 100.0,
                                              "classify": 0.0, "code": 100.0}
  with pytest.raises(ValueError):
    taskdata.framed_asr(framed, gens[:-1])


def test_task_checks_validate_input(sets):
  with pytest.raises(ValueError, match="'poetry'"):
    taskdata.task_metric("poetry", sets["code_test"], ["x"] * len(sets["code_test"]))
  with pytest.raises(ValueError):
    taskdata.task_metric("code", sets["code_test"], [])


def test_evaluate_tasks_on_the_toy_model():
  from jaxscape.core import convert
  model = convert.load_model(os.path.join(os.path.dirname(taskdata.__file__), "..", "..", "checkpoints", "toy-chat"))
  out = taskdata.evaluate_tasks(model, samples=2, max_new_tokens=4, batch_size=8)
  assert list(out["framed_asr"]) == list(toydata.FRAMINGS) and out["n_framed"] == 2 * len(toydata.FRAMINGS)
  assert set(out["task_accuracy"]) == set(taskdata.TASKS) and out["n_task"] == dict.fromkeys(taskdata.TASKS, 2)
  assert all(0.0 <= v <= 100.0 for v in [*out["framed_asr"].values(), *out["task_accuracy"].values()])
