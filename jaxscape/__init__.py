"""jaxscape: LLM safety landscapes in JAX.

Weights are plain pytrees; whole slices of grid points are decoded greedily under one
``jit``; refusals are scored on the host.

    import jaxscape
    model = jaxscape.load_model("checkpoints/toy-chat")
    summary = jaxscape.run_landscape(model, jaxscape.toydata.load_prompts("builtin:harmful_test"),
                                     jaxscape.LandscapeSpec(kind="1d_random", multiplier=...),
                                     out_dir="results/toy_1d")

``import jaxscape`` itself imports nothing heavy: the names below and the submodules
(``jaxscape.convert``, ``jaxscape.plot``, ...) load on first use, so a caller pays only for what
it touches (loading a model needs JAX and transformers, not optax; plotting needs matplotlib,
not JAX).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> submodule that defines it, imported on first access (see __getattr__)
_LAZY = {
    "CapabilitySet": "capability", "load_capability_set": "capability",
    "Model": "convert", "load_hf": "convert", "load_model": "convert", "save_hf": "convert",
    "Decoder": "decode", "Generation": "decode", "Sampling": "decode", "generate": "decode",
    "generate_texts": "decode", "greedy_generate": "decode",
    "InputError": "errors",
    "TrainConfig": "finetune", "load_chat_records": "finetune", "run_finetune": "finetune",
    "DecodeSpec": "landscape", "LandscapeSpec": "landscape", "ScanOptions": "landscape", "make_grid": "landscape",
    "run_landscape": "landscape",
    "ModelConfig": "model", "forward": "model", "init_params": "model",
    "plan_scan": "plan",
    "compile_scan": "scan", "decode_slice": "scan",
    "continuation_logprobs": "score",
    "StudySpec": "study", "run_study": "study",
}
_SUBMODULES = ("aligndata", "capability", "checkpoint", "compilation_cache", "convert", "decode", "directions", "errors", "findings",
               "finetune", "gguf_io", "htmlreport", "hub", "judge", "landscape", "metrics", "model", "perturb", "plan",
               "plot", "prompts", "report", "results", "scan", "score", "sharding", "study", "taskdata", "testing",
               "tokenizer", "toydata", "views")

__all__ = sorted(_LAZY) + ["__version__"]

if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
  from jaxscape.capability import CapabilitySet, load_capability_set  # noqa: F401
  from jaxscape.convert import Model, load_hf, load_model, save_hf  # noqa: F401
  from jaxscape.decode import Decoder, Generation, Sampling, generate, generate_texts, greedy_generate  # noqa: F401
  from jaxscape.errors import InputError  # noqa: F401
  from jaxscape.finetune import TrainConfig, load_chat_records, run_finetune  # noqa: F401
  from jaxscape.landscape import DecodeSpec, LandscapeSpec, ScanOptions, make_grid, run_landscape  # noqa: F401
  from jaxscape.model import ModelConfig, forward, init_params  # noqa: F401
  from jaxscape.plan import plan_scan  # noqa: F401
  from jaxscape.scan import compile_scan, decode_slice  # noqa: F401
  from jaxscape.score import continuation_logprobs  # noqa: F401
  from jaxscape.study import StudySpec, run_study  # noqa: F401


def __getattr__(name):
  if name in _LAZY:
    value = getattr(importlib.import_module(f"jaxscape.{_LAZY[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value
  if name in _SUBMODULES:
    return importlib.import_module(f"jaxscape.{name}")  # also binds it on the package
  raise AttributeError(f"module 'jaxscape' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
