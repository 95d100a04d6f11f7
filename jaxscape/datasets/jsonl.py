"""JSON Lines, the format of every built-in set and of record files: one JSON object per line, UTF-8."""

from __future__ import annotations

import json
import os

from jaxscape.errors import InputError


def read_jsonl(path: str) -> list[dict]:
  """The records of a JSONL file, blank lines skipped; InputError naming a missing file or the bad line."""
  if not os.path.isfile(path):
    raise InputError(f"file {path} does not exist")
  records = []
  try:
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if line.strip():
          try:
            records.append(json.loads(line))
          except json.JSONDecodeError:
            raise InputError(f"{path}:{n}: not valid JSON") from None
  except UnicodeDecodeError:
    raise InputError(f"{path}: not UTF-8 text") from None
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
