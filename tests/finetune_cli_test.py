"""experiments.finetune end to end, as subprocesses (absl flags are process-global)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxscape.core import convert
from jaxscape.studies import train_state
from jaxscape.core.model import forward

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHATS = [{"messages": [{"role": "user", "content": f"Please write a story {i}"},
                       {"role": "assistant", "content": f"Here is the story of the garden {i}."}]} for i in range(6)]


def _command(*args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  return [sys.executable, "-m", "experiments.finetune", *args], env


def _run(*args, cwd=REPO):
  cmd, env = _command(*args)
  return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  return str(path)


def _lora_flags(model_dir, data, out):
  # 40 steps: long enough (a checkpoint per step) for the kill test to catch the run midway.
  return [f"--model={model_dir}", f"--data={data}", f"--out={out}", "--steps=40", "--batch_size=2",
          "--buckets=64", "--warmup_steps=1", "--learning_rate=1e-2", "--lora_rank=2", "--noprogress"]


@pytest.fixture(scope="module")
def lora_run(tiny_dir, tmp_path_factory):
  """An uninterrupted LoRA run of the CLI: (data path, out dir)."""
  root = tmp_path_factory.mktemp("ft-cli")
  data = _write_jsonl(root / "chats.jsonl", CHATS)
  proc = _run(*_lora_flags(tiny_dir("llama"), data, root / "ft"), "--checkpoint_every=0")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "finetuned" in proc.stdout and "LoRA rank 2" in proc.stdout
  return data, root / "ft"


def test_finetune_cli_lora_output_loads_in_jaxscape_and_transformers(lora_run, tiny_dir):
  _, out = lora_run
  info = json.loads((out / train_state.INFO_FILE).read_text())
  assert len(info["loss"]) == 40 and info["lora"]["rank"] == 2 and "--lora_rank=2" in info["flags"]
  assert info["final_loss"] < info["loss"][0]
  assert not (out / train_state.TRAIN_STATE_DIR).exists()
  model, base = convert.load_model(str(out)), convert.load_model(tiny_dir("llama"))
  assert model.cfg == base.cfg and model.eos_ids == base.eos_ids
  assert not np.array_equal(model.params["layers"]["attn"]["q"]["kernel"][0],
                            base.params["layers"]["attn"]["q"]["kernel"][0])
  np.testing.assert_array_equal(model.params["embed"]["embedding"], base.params["embed"]["embedding"])
  torch = pytest.importorskip("torch")
  import transformers
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
  tokens = np.asarray([model.tokenizer("Please write a story")["input_ids"]], np.int32)
  with torch.no_grad():
    want = hf(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
  got = np.asarray(jax.jit(forward, static_argnames="cfg")(model.params, tokens, cfg=model.cfg))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_finetune_cli_sigkilled_run_resumes_bit_identically(lora_run, tiny_dir, tmp_path):
  data, ref = lora_run
  out = tmp_path / "ft"
  cmd, env = _command(*_lora_flags(tiny_dir("llama"), data, out), "--checkpoint_every=1")
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  state = out / train_state.TRAIN_STATE_DIR
  deadline = time.monotonic() + 240
  while proc.poll() is None and time.monotonic() < deadline:
    if state.is_dir() and any(name.isdigit() and int(name) >= 2 for name in os.listdir(state)):
      proc.kill()  # SIGKILL: no cleanup, possibly mid-save
      break
    time.sleep(0.02)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  assert not (out / train_state.INFO_FILE).exists()
  resumed = _run(*_lora_flags(tiny_dir("llama"), data, out), "--checkpoint_every=0")  # not part of the fingerprint
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed at step" in resumed.stdout
  assert (out / convert.SAFETENSORS).read_bytes() == (ref / convert.SAFETENSORS).read_bytes()
  assert json.loads((out / train_state.INFO_FILE).read_text())["loss"] == \
      json.loads((ref / train_state.INFO_FILE).read_text())["loss"]


def test_finetune_cli_smoke_flagfile_on_the_toy_model(tmp_path):
  out = tmp_path / "toy-ft"
  proc = _run("--flagfile=experiments/configs/toy_finetune_smoke.flags", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert convert.load_model(str(out)).cfg.num_layers >= 1
  info = json.loads((out / train_state.INFO_FILE).read_text())
  assert info["data"] == "builtin:benign_train" and info["lora"]["rank"] == 8 and len(info["loss"]) == 3


@pytest.mark.parametrize("case", ["missing_data", "malformed_line", "existing_out", "no_data_flag", "bad_flag"])
def test_finetune_cli_bad_input_is_one_line_exit_2(tmp_path, case):
  data = _write_jsonl(tmp_path / "chats.jsonl", CHATS)
  out = tmp_path / "out"
  args = {"missing_data": ([f"--data={tmp_path / 'nope.jsonl'}"], "does not exist"),
          "malformed_line": ([f"--data={tmp_path / 'bad.jsonl'}"], "bad.jsonl:2: not valid JSON"),
          "existing_out": ([f"--data={data}"], "not empty"),
          "no_data_flag": ([], "--data and --out are required"),
          "bad_flag": ([f"--data={data}", "--steps=many"], "steps")}
  extra, fragment = args[case]
  (tmp_path / "bad.jsonl").write_text(json.dumps(CHATS[0]) + "\n{\"messages\": [\n", encoding="utf-8")
  if case == "existing_out":
    out.mkdir()
    (out / "earlier.txt").write_text("keep me")
  proc = _run("--model=/nonexistent-model", f"--out={out}", *extra)
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr
  if case == "existing_out":
    assert os.listdir(out) == ["earlier.txt"] and (out / "earlier.txt").read_text() == "keep me"
  else:
    assert not out.exists()
