"""Lazy submodules for the subpackages: ``jaxscape.PKG.MODULE`` loads MODULE on first use, so importing
PKG (e.g. the jax-free reports) imports none of its siblings."""

import importlib


def submodule_getattr(package: str):
  """A module ``__getattr__`` for ``package`` that imports ``package.NAME`` when NAME is first read."""

  def __getattr__(name):
    try:
      return importlib.import_module(f"{package}.{name}")
    except ModuleNotFoundError as e:
      if e.name != f"{package}.{name}":
        raise
      raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

  return __getattr__
