"""Prompt sets and their evaluation: the toy, alignment and task sets (built-in under jaxscape/data/, loaded as
``builtin:NAME``), files of prompts, capability sets. Imports the core only."""

from jaxscape._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)  # jaxscape.PKG.MODULE loads MODULE on first use
