"""Prompt sets and their evaluation: the toy, alignment and task sets (seeded generators, committed under
jaxscape/data/ and loaded as ``builtin:NAME`` through ``registry``), files of prompts, capability sets. Imports the
core only."""

from jaxscape._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)  # jaxscape.PKG.MODULE loads MODULE on first use
