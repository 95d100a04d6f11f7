"""The ``builtin:`` registry: which built-in prompt sets exist, where their files live, and how they are rebuilt.

A *family* is a generator module with a seeded ``build_sets(seed) -> {name: records}``; its sets are
``jaxscape/data/{prefix}NAME.jsonl`` and load as ``builtin:{prefix}NAME`` (big_vision and
lm-evaluation-harness keep data sets and tasks in one registry the same way):

  family     prefix      generator                       sets
  toy        (none)      jaxscape.datasets.toydata       the toy model's harmful, benign, multiple-choice, framed
  align      align/      jaxscape.datasets.aligndata     alignment chats for a real small chat model
  finetune   finetune/   jaxscape.datasets.taskdata      benign tasks, harmful few-shot, multitask safety

The files are committed and shipped in the wheel rather than generated on first use, because that is
the simpler install: loading is a plain file read that needs no writable cache folder (site-packages
may be read-only, and several processes may start at once), a ``builtin:`` name resolves to a path any
reader takes (the finetuning chat loader, the CLIs' ``--prompts``), and a change to the data shows as a
diff. ``tests/registry_test.py`` rebuilds every committed file bit-identically through
:func:`write_family`; ``python -m experiments.build_data`` rewrites them after a generator changes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from importlib import resources

from jaxscape.datasets import jsonl
from jaxscape.errors import InputError


@dataclasses.dataclass(frozen=True)
class Family:
  """One family of built-in sets.

  Attributes:
    name: what the family is called (``--family`` of ``experiments.build_data``).
    prefix: the folder under ``jaxscape/data/``, with its slash ("" for the toy's sets at the top).
    set_names: the sets ``build_sets`` returns, in that order, without the prefix.
    build_sets: ``seed -> {set name: records}``, deterministic in the seed.
    default_seed: the seed of the committed files.
  """
  name: str
  prefix: str
  set_names: tuple[str, ...]
  build_sets: Callable[[int], dict[str, list[dict]]]
  default_seed: int


@functools.cache
def families() -> tuple[Family, ...]:
  """Every registered family: toy, align, finetune."""
  # Deferred: the generators' tables (and numpy, through core.metrics) load only to build or list sets,
  # so reading a committed set (``load_prompts("builtin:...")``) stays a plain file read.
  from jaxscape.datasets import aligndata, taskdata, toydata  # noqa: PLC0415
  return (Family("toy", "", toydata.SET_NAMES, toydata.build_sets, toydata.DEFAULT_SEED),
          Family("align", "align/", aligndata.SET_NAMES, aligndata.build_sets, aligndata.DEFAULT_SEED),
          Family("finetune", "finetune/", taskdata.SET_NAMES, taskdata.build_sets, taskdata.DEFAULT_SEED))


def family(name: str) -> Family:
  """The family called ``name``; InputError listing the families otherwise."""
  for f in families():
    if f.name == name:
      return f
  raise InputError(f"no built-in family {name!r}; expected one of {', '.join(f.name for f in families())}")


def names() -> tuple[str, ...]:
  """Every built-in set's name as ``builtin:`` takes it (``harmful_test``, ``align/train``, ...)."""
  return tuple(f.prefix + s for f in families() for s in f.set_names)


def data_dir() -> str:
  """The package's folder of committed sets, ``jaxscape/data``."""
  return str(resources.files("jaxscape") / "data")


def builtin_path(name: str) -> str:
  """Path of the built-in set ``name`` (as :func:`names` spells it); InputError listing every name otherwise.

  A committed file is found without importing the generators (``tests/registry_test.py`` checks that the
  committed files are exactly the registered sets).
  """
  path = os.path.join(data_dir(), f"{name}.jsonl")
  if os.path.isabs(name) or ".." in name.split("/") or not os.path.isfile(path):
    raise InputError(f"no built-in set {name!r}; available: {', '.join(names())}")
  return path


def load(name: str) -> list[dict]:
  """The records of the built-in set ``name`` (``builtin:NAME`` without ``builtin:``)."""
  return jsonl.read_jsonl(builtin_path(name))


def write_family(fam: Family, out_dir: str | None = None, seed: int | None = None) -> dict[str, str]:
  """Build every set of ``fam`` and write it to ``out_dir/NAME.jsonl``; set name -> path.

  Args:
    out_dir: default: the family's folder in the package (rewrites the committed files).
    seed: default: the family's ``default_seed``, that of the committed files.
  """
  sets = fam.build_sets(fam.default_seed if seed is None else seed)
  assert tuple(sets) == fam.set_names, f"{fam.name} built {tuple(sets)}, registered {fam.set_names}"
  out_dir = out_dir or os.path.join(data_dir(), fam.prefix)
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  for name, records in sets.items():
    paths[name] = os.path.join(out_dir, f"{name}.jsonl")
    jsonl.write_jsonl(records, paths[name])
  return paths
