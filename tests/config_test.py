"""ModelConfig: HF config.json parsing (both transformers spellings), validation, round trip."""

import json

import jax
import numpy as np
import pytest

from jaxscape import testing
from jaxscape.core import config, convert, model


def test_unknown_model_type_names_supported_ones(tmp_path):
  d = testing.tiny_config("llama").to_hf_dict()
  d["model_type"] = "gpt2"
  with pytest.raises(ValueError, match=r"'gpt2'.*llama, mistral, qwen2"):
    config.ModelConfig.from_hf_dict(d)
  with open(tmp_path / "config.json", "w") as f:
    json.dump(d, f)
  with pytest.raises(ValueError, match=r"gpt2.*supported: llama, mistral, qwen2"):
    convert.read_config(str(tmp_path))
  with pytest.raises(ValueError, match="supported"):
    testing.tiny_config("gemma")


def test_bad_config_values_are_value_errors():
  with pytest.raises(ValueError, match="num_key_value_heads=3"):
    testing.tiny_config("llama", num_kv_heads=3)
  with pytest.raises(ValueError, match="float64"):
    testing.tiny_config("llama", compute_dtype="float64")
  d = testing.tiny_config("llama").to_hf_dict()
  d["rope_parameters"] = {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}
  with pytest.raises(ValueError, match="yarn"):
    config.ModelConfig.from_hf_dict(d)


@pytest.mark.parametrize("family,kw", [("llama", {}), ("mistral", {"sliding_window": 12}), ("qwen2", {}),
                                       ("qwen2", {"tie_word_embeddings": False, "sliding_window": 8}),
                                       ("llama", {"rope_scaling": (("factor", 2.0), ("rope_type", "linear"))})])
def test_config_hf_dict_round_trip(family, kw):
  cfg = testing.tiny_config(family, **kw)
  assert config.ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg


def test_config_defaults_from_minimal_tf4_dict():
  d = {"model_type": "qwen2", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
       "num_hidden_layers": 1, "num_attention_heads": 4, "rope_theta": 1e6, "sliding_window": 4096,
       "use_sliding_window": False, "torch_dtype": "bfloat16"}
  cfg = config.ModelConfig.from_hf_dict(d)
  assert (cfg.num_kv_heads, cfg.head_dim, cfg.rope_theta) == (4, 8, 1e6)
  assert cfg.sliding_window is None  # qwen2 ignores the window unless use_sliding_window
  assert not cfg.tie_word_embeddings and cfg.attention_bias  # transformers' defaults
  assert cfg.param_dtype == "bfloat16" and cfg.compute_dtype == "float32"
  hash(cfg)  # a static jit argument


def test_sliding_window_as_transformers_reads_it():
  base = {"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4}
  parse = lambda **kw: config.ModelConfig.from_hf_dict({**base, **kw}).sliding_window  # noqa: E731
  assert parse(model_type="mistral") == 4096  # MistralConfig's default
  assert parse(model_type="mistral", sliding_window=None) is None
  assert parse(model_type="llama", sliding_window=16) is None  # llama has no window
  qwen = dict(model_type="qwen2", use_sliding_window=True, sliding_window=16)
  assert parse(**qwen) is None  # only layers >= max_window_layers (default 28) slide
  assert parse(**qwen, max_window_layers=0) == 16
  assert parse(**qwen, layer_types=["sliding_attention"] * 2) == 16
  with pytest.raises(ValueError, match="per-layer"):
    parse(**qwen, max_window_layers=1)


def test_num_params_counts_leaves():
  for family in ("llama", "qwen2"):
    cfg = testing.tiny_config(family)
    shapes = jax.eval_shape(lambda c=cfg: model.init_params(c, jax.random.key(0)))
    assert cfg.num_params() == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
