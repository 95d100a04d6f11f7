"""jaxscape: LLM safety landscapes in JAX.

Weights are plain pytrees; whole slices of grid points are decoded greedily under one
``jit``; refusals are scored on the host.

    import jaxscape
    model = jaxscape.load_model("checkpoints/toy-chat")
    summary = jaxscape.run_landscape(model, jaxscape.load_prompts("builtin:harmful_test"),
                                     jaxscape.LandscapeSpec(kind="1d_random", multiplier=...),
                                     out_dir="results/toy_1d")

``import jaxscape`` itself imports nothing heavy: the names below and the submodules
(``jaxscape.core.convert``, ``jaxscape.reports.plot``, ...) load on first use, so a caller pays only for what
it touches (loading a model needs JAX and transformers, not optax; plotting needs matplotlib,
not JAX).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> submodule that defines it, imported on first access (see __getattr__)
_LAZY = {
    "CapabilitySet": "datasets.capability", "load_capability_set": "datasets.capability",
    "Model": "core.convert", "load_hf": "core.convert", "load_model": "core.convert", "save_hf": "core.convert",
    "Decoder": "core.decode", "Generation": "core.decode", "Sampling": "core.decode", "generate": "core.decode",
    "generate_texts": "core.decode", "greedy_generate": "core.decode",
    "InputError": "errors",
    "load_prompts": "datasets.sources",
    "TrainConfig": "studies.train_step", "load_chat_records": "studies.chat_data", "run_finetune": "studies.finetune",
    "DecodeSpec": "studies.landscape", "LandscapeSpec": "studies.landscape", "ScanOptions": "studies.landscape", "make_grid": "studies.landscape",
    "run_landscape": "studies.landscape",
    "ModelConfig": "core.config", "forward": "core.model", "init_params": "core.model",
    "plan_scan": "core.plan",
    "compile_scan": "core.scan", "decode_slice": "core.slices",
    "continuation_logprobs": "core.score", "logprobs": "core.score",
    "StudySpec": "studies.study_spec", "run_study": "studies.study",
}
# short module name -> its place in the subpackages: ``jaxscape.decode`` is ``jaxscape.core.decode``, loaded on first use
_SUBMODULES = {**{m: f"core.{m}" for m in ("checkpoint", "compilation_cache", "config", "convert", "decode",
                                          "direction_store", "directions", "fused_draw", "gguf_io", "grid",
                                          "hf_params", "hub", "metrics", "model", "paths", "perturb", "plan",
                                          "prompts", "results", "scan", "score", "sharding", "slices", "tokenizer")},
               **{m: f"datasets.{m}" for m in ("align_tables", "aligndata", "capability", "code_check", "evaluation",
                                              "jsonl", "registry", "sources", "taskdata", "toydata")},
               **{m: f"studies.{m}" for m in ("chat_data", "coherence", "coherence_results", "findings", "findings_page",
                                             "finetune", "judge", "judge_inputs", "judge_store", "landscape", "lora",
                                             "study", "study_claims", "study_runs", "study_spec", "toymodel",
                                             "train_state", "train_step", "views")},
               **{m: f"reports.{m}" for m in ("htmlpage", "htmlreport", "plot", "report", "scanpage", "study_table")},
               **{m: m for m in ("core", "datasets", "errors", "reports", "studies", "testing")}}

__all__ = sorted(_LAZY) + ["__version__"]

if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
  from jaxscape.datasets.capability import CapabilitySet, load_capability_set  # noqa: F401
  from jaxscape.core.convert import Model, load_hf, load_model, save_hf  # noqa: F401
  from jaxscape.core.decode import Decoder, Generation, Sampling, generate, generate_texts, greedy_generate  # noqa: F401
  from jaxscape.errors import InputError  # noqa: F401
  from jaxscape.datasets.sources import load_prompts  # noqa: F401
  from jaxscape.studies.chat_data import load_chat_records  # noqa: F401
  from jaxscape.studies.finetune import run_finetune  # noqa: F401
  from jaxscape.studies.train_step import TrainConfig  # noqa: F401
  from jaxscape.studies.landscape import DecodeSpec, LandscapeSpec, ScanOptions, make_grid, run_landscape  # noqa: F401
  from jaxscape.core.config import ModelConfig  # noqa: F401
  from jaxscape.core.model import forward, init_params  # noqa: F401
  from jaxscape.core.plan import plan_scan  # noqa: F401
  from jaxscape.core.scan import compile_scan  # noqa: F401
  from jaxscape.core.slices import decode_slice  # noqa: F401
  from jaxscape.core.score import continuation_logprobs, logprobs  # noqa: F401
  from jaxscape.studies.study import run_study  # noqa: F401
  from jaxscape.studies.study_spec import StudySpec  # noqa: F401


def __getattr__(name):
  if name in _LAZY:
    value = getattr(importlib.import_module(f"jaxscape.{_LAZY[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value
  if name in _SUBMODULES:
    return importlib.import_module(f"jaxscape.{_SUBMODULES[name]}")
  raise AttributeError(f"module 'jaxscape' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
