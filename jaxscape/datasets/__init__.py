"""Prompt sets and their evaluation: the toy, alignment and task sets (built-in under jaxscape/data/, loaded as
``builtin:NAME``), files of prompts, capability sets. Imports the core only."""

import importlib


def __getattr__(name):  # ``jaxscape.PKG.MODULE`` loads MODULE on first use, so importing PKG costs nothing
  try:
    return importlib.import_module(f"{__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{name}":
      raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
