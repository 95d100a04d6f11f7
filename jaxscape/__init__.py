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
from jaxscape.study import StudySpec, run_study

__version__ = "0.1.0"
