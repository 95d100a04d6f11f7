"""jaxscape: LLM safety landscapes in JAX.

Weights are plain pytrees; whole slices of grid points are decoded greedily under one
``jit``; refusals are scored on the host.

    import jaxscape
    model = jaxscape.load_model("checkpoints/toy-chat")
    summary = jaxscape.run_landscape(model, jaxscape.toydata.load_prompts("builtin:harmful_test"),
                                     jaxscape.LandscapeSpec(kind="1d_random", multiplier=...),
                                     out_dir="results/toy_1d")
"""

from jaxscape.convert import Model, load_hf, load_model, save_hf
from jaxscape.decode import Generation, generate_texts, greedy_generate
from jaxscape.finetune import TrainConfig, load_chat_records, run_finetune
from jaxscape.landscape import DecodeSpec, LandscapeSpec, make_grid, run_landscape
from jaxscape.model import ModelConfig, forward, init_params
from jaxscape.scan import decode_slice, plan_scan

__version__ = "0.1.0"


def __getattr__(name):
  # The study pulls in the built-in data modules; load it on first use, so that
  # ``python -m jaxscape.toydata`` / ``jaxscape.taskdata`` do not import themselves twice.
  if name in ("StudySpec", "run_study"):
    from jaxscape import study
    return getattr(study, name)
  raise AttributeError(f"module 'jaxscape' has no attribute {name!r}")
