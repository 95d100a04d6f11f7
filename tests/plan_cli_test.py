"""experiments.plan: a scan's plan proven on abstract shapes, with XLA's bytes, and one-line errors."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plan(*args, env=None):
  return subprocess.run([sys.executable, "-m", "experiments.plan", *args], cwd=REPO, capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, timeout=300)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  from jaxscape import testing
  path = tmp_path_factory.mktemp("plan") / "config.json"
  path.write_text(json.dumps(testing.tiny_config("llama").to_hf_dict()))
  return str(path)


def test_a_plan_that_fits_prints_xla_bytes_beside_the_estimate(config):
  out = _plan(f"--model={config}", "--steps=4", "--samples=8", "--prompt_tokens=12", "--max_new_tokens=8",
              "--device_memory=1GiB", "--target=cpu", "--compute_dtype=bfloat16")
  assert out.returncode == 0, out.stderr
  assert "budget: 1.00 GiB x 1 (memory fraction) x 0.9" in out.stdout
  assert "XLA: arguments" in out.stdout and "plan's estimate" in out.stdout and "fits:" in out.stdout


def test_gpu_target_on_cpu_is_labelled_a_proxy_and_uses_the_default_fraction(config):
  out = _plan(f"--model={config}", "--steps=2", "--samples=4", "--prompt_tokens=8", "--max_new_tokens=4",
              "--device_memory=1GiB", "--target=gpu", "--compute_dtype=bfloat16")
  assert out.returncode == 0, out.stderr
  assert "x 0.75 (memory fraction)" in out.stdout and "a proxy" in out.stdout


@pytest.mark.parametrize("args,words", [
    (["--device_memory=1MiB"], "no scan plan fits"),
    (["--device_memory=lots"], "--device_memory='lots' is not a size"),
    (["--memory_fraction=1.5", "--device_memory=1GiB"], "memory fraction must be in (0, 1]"),
    (["--prompt_tokens=0", "--device_memory=1GiB"], "--prompt_tokens=N is needed"),
])
def test_bad_input_is_one_line(config, args, words):
  out = _plan(f"--model={config}", "--steps=2", "--samples=4", "--prompt_tokens=8", "--max_new_tokens=4",
              "--target=cpu", *args)
  assert out.returncode == 2, (out.stdout, out.stderr)
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], out.stderr


def test_not_a_config_is_one_line(tmp_path):
  bad = tmp_path / "config.json"
  bad.write_text("{not json")
  out = _plan(f"--model={bad}", "--prompt_tokens=8", "--target=cpu", "--device_memory=1GiB")
  assert out.returncode == 2 and out.stderr.startswith("error:") and "not a model config.json" in out.stderr
