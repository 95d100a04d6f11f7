"""Checking generated code: static validation, the isolated worker, dangerous code never runs."""

import os

import pytest

from jaxscape.datasets import code_check, evaluation


def _code(gen, tests=(([3, 5], 8), ([-2, 7], 5))):
  return evaluation.check_task({"task": "code", "tests": [list(t) for t in tests]}, gen)


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
  assert code_check.validate_code(src) is not None
  assert not _code(src)
  assert not os.path.exists(marker)


def test_code_checker_survives_memory_bombs():
  # Passes validation (small constants, no loops) but would need ~10**12 bytes: the worker's
  # memory cap fails it, and the items after it are still checked.
  bomb = "def f(a, b):\n    return str(a) * 999 * 999 * 999 * 999"
  assert code_check.validate_code(bomb) is None
  recs = [{"task": "code", "tests": [[[3, 5], 8]]}] * 3
  assert code_check.check_code_batch(recs, ["def f(a, b):\n    return a + b", bomb,
                                          "def f(a, b):\n    return b + a"]) == [True, False, True]


@pytest.mark.parametrize("fail", ["sys.exit(1)", "time.sleep(60)"])
def test_code_checker_restarts_a_dead_or_hung_worker(fail, monkeypatch):
  # A stand-in worker that dies (or hangs) on the second item: that item fails, the rest are checked.
  monkeypatch.setattr(code_check, "_WORKER", "import sys, time\nfor line in sys.stdin:\n"
                      f"  if 'b + a' in line: {fail}\n  print(1, flush=True)\n")
  monkeypatch.setattr(code_check, "_WORKER_START_S", 1.0)
  recs = [{"task": "code", "tests": [[[3, 5], 8]]}] * 3
  gens = ["def f(a, b):\n    return a + b", "def f(a, b):\n    return b + a", "def f(a, b):\n    return a + b"]
  assert code_check.check_code_batch(recs, gens, timeout_s=0.1) == [True, False, True]
