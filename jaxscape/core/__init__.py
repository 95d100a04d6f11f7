"""The core: the model, its weights and their I/O, directions and perturbation, decoding, scoring, metrics,
the grid scan and the results-dir stores. Imports nothing from datasets, studies or reports."""

import importlib


def __getattr__(name):  # ``jaxscape.PKG.MODULE`` loads MODULE on first use, so importing PKG costs nothing
  try:
    return importlib.import_module(f"{__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{name}":
      raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
