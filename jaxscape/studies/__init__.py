"""What runs on models: landscapes, finetuning, the toy model's build, judges, coherence, studies and the papers'
findings, and the views that assemble a results dir. Imports core, datasets and reports."""

import importlib


def __getattr__(name):  # ``jaxscape.PKG.MODULE`` loads MODULE on first use, so importing PKG costs nothing
  try:
    return importlib.import_module(f"{__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{name}":
      raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
