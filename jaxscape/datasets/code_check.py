"""Checking generated Python code: static validation, then a run in an isolated, resource-capped interpreter.

The ``code`` task of :mod:`jaxscape.datasets.taskdata` asks for small functions; a generation passes
when its function returns the expected value for every test input. Generated code is untrusted,
so it must first pass :func:`validate_code` (a whitelist of syntax and calls) and then runs in a
separate ``python -I -S`` process with no builtins beyond :data:`~jaxscape.datasets.taskdata.SAFE_CALLS`.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

from jaxscape.core import metrics
from jaxscape.datasets.taskdata import SAFE_CALLS

CODE_TIMEOUT_S = 2.0  # per function checked
_WORKER_START_S = 5.0  # allowance for starting the checker process


def extract_code(generation: str) -> str:
  """The Python source in a generation: a fenced block if there is one, else from the first ``def``."""
  fenced = re.search(r"```[\w+-]*\n(.*?)(?:```|$)", generation, re.S)
  if fenced:
    generation = fenced.group(1)
  i = generation.find("def ")
  return generation[i:] if i >= 0 else generation


_ALLOWED_NODES = (ast.Module, ast.FunctionDef, ast.arguments, ast.arg, ast.Return, ast.Name, ast.Load, ast.Store,
                  ast.Constant, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Mod, ast.FloorDiv, ast.Div, ast.UnaryOp,
                  ast.USub, ast.UAdd, ast.Not, ast.Compare, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE,
                  ast.BoolOp, ast.And, ast.Or, ast.IfExp, ast.If, ast.Assign, ast.Call, ast.Subscript, ast.Slice,
                  ast.List, ast.Tuple)


def validate_code(source: str) -> str | None:
  """Why ``source`` may not run (None: it may).

  Allowed: top-level ``def`` statements without decorators or defaults, whose bodies use
  assignments, ``if``, ``return`` and expressions over names, small constants, arithmetic
  (no ``**``), comparisons, subscripts and calls of :data:`SAFE_CALLS`. No loops, imports,
  attributes, lambdas, comprehensions or recursion, so every call ends after a few operations.
  """
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError) as e:
    return f"not valid Python ({e.__class__.__name__})"
  if not tree.body or not all(isinstance(s, ast.FunctionDef) for s in tree.body):
    return "only function definitions are allowed at top level"
  for node in ast.walk(tree):
    if not isinstance(node, _ALLOWED_NODES):
      return f"{type(node).__name__} is not allowed"
    if isinstance(node, ast.FunctionDef) and (node.decorator_list or node.args.defaults or node not in tree.body):
      return "decorators, defaults and nested functions are not allowed"
    if isinstance(node, ast.Name) and node.id.startswith("_"):
      return f"name {node.id!r} is not allowed"
    if isinstance(node, ast.Call) and (not isinstance(node.func, ast.Name) or node.func.id not in SAFE_CALLS
                                       or node.keywords):
      return "only calls of " + ", ".join(SAFE_CALLS) + " (without keywords) are allowed"
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, str)) and abs(
        node.value if isinstance(node.value, int) else len(node.value)) > 1000:
      return "constants above 1000 (or strings longer) are not allowed"
  return None


# Runs in a separate, isolated interpreter (python -I -S) with capped memory and CPU time: each
# input line {"code", "tests"} -> one output line "1" (every test passes) or "0".
_WORKER = r"""
import json, resource, signal, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 28, 1 << 28))
resource.setrlimit(resource.RLIMIT_CPU, (60, 60))
SAFE = {name: __builtins__.__dict__[name] for name in json.loads(sys.argv[1])}
def alarm(*_):
  raise TimeoutError
signal.signal(signal.SIGALRM, alarm)
for line in sys.stdin:
  item, ok = json.loads(line), False
  signal.setitimer(signal.ITIMER_REAL, float(sys.argv[2]))
  try:
    env = {"__builtins__": dict(SAFE)}
    exec(compile(item["code"], "<generation>", "exec"), env)
    fn = env[item["name"]]
    ok = True
    for args, want in item["tests"]:
      got = fn(*json.loads(json.dumps(args)))
      ok = ok and type(got) is type(want) and got == want
  except BaseException:
    ok = False
  signal.setitimer(signal.ITIMER_REAL, 0)
  print(int(ok), flush=True)
"""


def check_code_batch(records: list[dict], generations: list[str], *, timeout_s: float = CODE_TIMEOUT_S) -> list[bool]:
  """Whether each generation defines a function that passes its record's ``tests``.

  Code is first checked statically (:func:`validate_code`); only code that passes runs, in a
  separate isolated Python process with no builtins beyond :data:`SAFE_CALLS`, 256 MiB of memory,
  and ``timeout_s`` per function. A worker that dies or hangs fails its current item and is
  restarted for the rest.
  """
  if len(records) != len(generations):
    raise ValueError(f"need as many generations as records, got {len(generations)} and {len(records)}")
  results = [False] * len(records)
  todo = []
  for i, (r, g) in enumerate(zip(records, generations)):
    src = extract_code(g)
    if not metrics.is_refusal(g) and validate_code(src) is None:
      todo.append((i, json.dumps({"code": src, "name": ast.parse(src).body[0].name, "tests": r["tests"]})))
  while todo:
    cmd = [sys.executable, "-I", "-S", "-c", _WORKER, json.dumps(SAFE_CALLS), str(timeout_s)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
      out, _ = proc.communicate("\n".join(line for _, line in todo) + "\n",
                                timeout=_WORKER_START_S + timeout_s * len(todo))
    except subprocess.TimeoutExpired:
      proc.kill()
      out, _ = proc.communicate()
    done = [ln == "1" for ln in out.split()][:len(todo)]
    for (i, _), ok in zip(todo, done):
      results[i] = ok
    todo = todo[len(done) + 1:]  # the item the worker died on stays False
  return results
