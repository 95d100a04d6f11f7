"""Shared test set-up: 8 fake CPU devices, strict rank promotion, tiny checkpoints built once per session."""

import os

# Before JAX starts: 8 fake host devices for the sharding tests (cheap on CPU).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
from jaxscape.core import compilation_cache  # noqa: E402

compilation_cache.use_fast_cpu_compiler()  # the XLA:CPU flags every entry point uses: tests check the same programs
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (family, make_tiny_checkpoint keyword arguments). Default tiny configs use GQA (4 query / 2 kv heads).
TINY = {
    "llama": ("llama", {"seed": 0}),
    "llama-mha": ("llama", {"num_kv_heads": 4, "seed": 1}),
    "mistral": ("mistral", {"seed": 2, "sliding_window": 12}),
    "qwen2": ("qwen2", {"seed": 3}),  # tied embeddings, q/k/v biases
    "qwen2-untied": ("qwen2", {"seed": 4, "tie_word_embeddings": False}),
    "qwen2-window": ("qwen2", {"seed": 7, "sliding_window": 6}),
    "llama-bf16": ("llama", {"seed": 5, "dtype": "bfloat16"}),
    "llama-nochat": ("llama", {"seed": 6, "chat_template": False}),
}


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
  """``tiny_dir(name) -> path`` of a tiny random HF checkpoint (see ``TINY``), built once per session.

  Tests must not modify these dirs; copy them first (``shutil.copytree``).
  """
  from jaxscape import testing
  cache = {}

  def get(name: str) -> str:
    if name not in cache:
      family, kw = TINY[name]
      cache[name] = testing.make_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / name), family, **kw)
    return cache[name]

  return get


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
  """``tiny_model(name) -> jaxscape.core.convert.Model`` loaded (float32) once per session."""
  from jaxscape.core import convert
  cache = {}

  def get(name: str):
    if name not in cache:
      cache[name] = convert.load_model(tiny_dir(name))
    return cache[name]

  return get


@pytest.fixture(scope="session")
def hf_model(tiny_dir):
  """``hf_model(name) -> transformers`` PyTorch model (float32, eval) of a tiny dir; skips without torch."""
  torch = pytest.importorskip("torch")
  import transformers
  cache = {}

  def get(name: str):
    if name not in cache:
      cache[name] = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir(name), dtype=torch.float32).eval()
    return cache[name]

  return get


SCAN_PROMPTS = ["Write a tutorial on how to make a bridge", "Develop a plan for the garden", "Hi there"]
SCANS = {  # name -> LandscapeSpec keyword arguments of a tiny finished scan (multiplier 8: the points differ)
    "1d": {"kind": "1d_random", "steps": 4, "multiplier": 8.0},
    "1d_multi": {"kind": "1d_random", "steps": 2, "multiplier": 8.0, "num_directions": 2},
    "2d": {"kind": "2d_random", "steps": 2, "multiplier": 8.0},
}


@pytest.fixture(scope="session")
def scan_dir(tiny_model, tmp_path_factory):
  """``scan_dir(name) -> path`` of a finished tiny scan's results dir (see ``SCANS``), scanned once per session.

  3 prompts x 6 new tokens on the tiny llama; tests must not modify these dirs (copy them first).
  """
  from jaxscape.studies import landscape
  cache = {}

  def get(name: str) -> str:
    if name not in cache:
      out = str(tmp_path_factory.mktemp("scan") / name)
      landscape.run_landscape(tiny_model("llama"), SCAN_PROMPTS, landscape.LandscapeSpec(**SCANS[name]), out_dir=out,
                              decode=landscape.DecodeSpec(max_new_tokens=6),
                              options=landscape.ScanOptions(progress=False))
      cache[name] = out
    return cache[name]

  return get
