"""Where prompt sets come from: ``builtin:NAME`` (a set of :mod:`jaxscape.datasets.registry`) or a file; CSV and
JSONL files of prompts, JSONL records and multiple-choice sets."""

from __future__ import annotations

import csv
import json
import os

from jaxscape.datasets import jsonl
from jaxscape.datasets import registry
from jaxscape.errors import InputError


def load_prompt_file(path: str, samples: int | None = None) -> list[str]:
  """Prompts from a CSV (header row, prompt in the first column) or a JSONL with a "prompt" field.

  Args:
    samples: keep the first N prompts in file order (None or 0: all).
  """
  if not os.path.isfile(path):
    raise InputError(f"prompt file {path} does not exist")
  try:
    with open(path, encoding="utf-8", newline="") as f:
      if path.endswith(".jsonl"):
        prompts = []
        for n, line in enumerate(f, 1):
          if not line.strip():
            continue
          try:
            record = json.loads(line)
            prompts.append(record["prompt"])
          except (json.JSONDecodeError, KeyError, TypeError):
            raise InputError(f"{path}:{n}: expected a JSON object with a \"prompt\" field") from None
          if not isinstance(prompts[-1], str):
            raise InputError(f"{path}:{n}: \"prompt\" must be a string")
      else:
        rows = list(csv.reader(f))[1:]
        prompts = [r[0] for r in rows if r and r[0].strip()]
  except UnicodeDecodeError:
    raise InputError(f"{path}: not UTF-8 text") from None
  except csv.Error as e:
    raise InputError(f"{path}: malformed CSV ({e})") from None
  if not prompts:
    raise InputError(f"prompt file {path} holds no prompts")
  if samples is not None and samples < 0:
    raise InputError(f"samples must be >= 0, got {samples}")
  return prompts[:samples] if samples else prompts


def resolve(source: str) -> str:
  """``builtin:NAME`` -> its package path; any other string is a file path."""
  return registry.builtin_path(source[len("builtin:"):]) if source.startswith("builtin:") else source


def load_prompts(source: str, samples: int | None = None) -> list[str]:
  """Prompts from ``builtin:NAME`` or a CSV/JSONL file (see :func:`load_prompt_file`)."""
  if not source:
    raise InputError("no prompt file given (--prompts)")
  return load_prompt_file(resolve(source), samples)


def load_jsonl(source: str) -> list[dict]:
  """Records of a JSONL file or ``builtin:NAME``; InputError naming the bad line."""
  return jsonl.read_jsonl(resolve(source))


def load_choice_set(source: str, samples: int | None = None) -> list[dict]:
  """Multiple-choice items ``{"question", "options": [4 str], "answer": "A".."D"}``."""
  items = load_jsonl(source)
  for n, item in enumerate(items, 1):
    ok = (isinstance(item, dict) and isinstance(item.get("question"), str)
          and isinstance(item.get("options"), list) and len(item["options"]) == 4
          and item.get("answer") in ("A", "B", "C", "D"))
    if not ok:
      raise InputError(f"{source}: item {n} must have question, 4 options and answer A-D")
  return items[:samples] if samples else items

