"""JSON Lines, the format of every built-in set and of record files: one JSON object per line, UTF-8."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from jaxscape.errors import InputError


def iter_jsonl(path: str) -> Iterator[tuple[str, Any]]:
  """``("PATH:LINE", object)`` for each non-blank line, read lazily; InputError naming a missing file or the bad line.

  Lazy, so a caller that checks each object raises at the first bad line, JSON or content.
  """
  if not os.path.isfile(path):
    raise InputError(f"file {path} does not exist")
  try:
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if line.strip():
          try:
            obj = json.loads(line)
          except json.JSONDecodeError as e:
            raise InputError(f"{path}:{n}: not valid JSON ({e.msg})") from None
          yield f"{path}:{n}", obj
  except UnicodeDecodeError:
    raise InputError(f"{path}: not UTF-8 text") from None


def read_jsonl(path: str) -> list[dict]:
  """The records of a JSONL file, blank lines skipped; InputError naming a missing file or the bad line."""
  records = [obj for _, obj in iter_jsonl(path)]
  if not records:
    raise InputError(f"{path} holds no records")
  return records


def write_jsonl(records: list[dict], path: str) -> None:
  """One JSON object per line (sorted keys, non-ASCII kept), written atomically: the bytes depend only on the
  records, so a seeded generator rebuilds a committed file bit-identically."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n")
  os.replace(tmp, path)
