"""Entry points end to end, as subprocesses: experiments.convert and experiments.generate."""

import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROMPTS = ["Write a tutorial on how to make a bridge", "Hi",
           "Please create a plan for the river garden, and the network of computers"]
NEW = 24


def _run(module, *args, cwd=REPO):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=300)


def _assert_one_line_error(proc, *fragments):
  assert proc.returncode == 2, (proc.returncode, proc.stderr)
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert "Traceback" not in proc.stderr
  for f in fragments:
    assert f in lines[0], lines[0]


def _transformers_generations(model_dir, texts, prompt_format):
  """Reference: transformers' greedy generate, new tokens up to the first EOS, skip_special_tokens=True."""
  import torch
  import transformers
  from jaxscape.core import convert, prompts
  tok = convert.load_tokenizer(model_dir)
  hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  rendered, add = prompts.render(texts, tok, prompt_format=prompt_format)
  enc = tok(rendered, add_special_tokens=add, padding=True, return_tensors="pt")
  with torch.no_grad():
    new = hf.generate(**enc, do_sample=False, max_new_tokens=NEW)[:, enc["input_ids"].shape[1]:]
  eos = set(convert.eos_ids_of(model_dir))
  out = []
  for row in new.tolist():
    cut = next((k for k, t in enumerate(row) if t in eos), len(row))
    out.append(tok.decode(row[:cut], skip_special_tokens=True))
  return out


def _read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


# ------------------------------------------------------------------------ convert


@pytest.fixture(scope="module")
def converted(tiny_dir, tmp_path_factory):
  """experiments.convert run from a temp cwd with a relative --out."""
  cwd = tmp_path_factory.mktemp("cli-convert")
  proc = _run("experiments.convert", f"--hf_dir={tiny_dir('llama')}", "--out=checkpoints/tiny", cwd=str(cwd))
  assert proc.returncode == 0, proc.stderr
  return str(cwd), str(cwd / "checkpoints" / "tiny")


def test_convert_cli_writes_loadable_dir(converted, tiny_model):
  from jaxscape.core import convert
  _, out = converted
  assert convert.is_converted_dir(out)
  m, ref = convert.load_model(out), tiny_model("llama")
  assert m.cfg == ref.cfg and m.eos_ids == ref.eos_ids
  for a, b in zip(jax.tree.leaves(m.params), jax.tree.leaves(ref.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_convert_cli_refuses_existing_unless_overwrite(converted, tiny_dir):
  cwd, out = converted
  marker = os.path.join(out, "config.json")
  mtime = os.stat(marker).st_mtime_ns
  proc = _run("experiments.convert", f"--hf_dir={tiny_dir('llama')}", "--out=checkpoints/tiny", cwd=cwd)
  _assert_one_line_error(proc, "already exists", "--overwrite")
  assert os.stat(marker).st_mtime_ns == mtime
  proc = _run("experiments.convert", f"--hf_dir={tiny_dir('llama')}", "--out=checkpoints/tiny", "--overwrite",
              cwd=cwd)
  assert proc.returncode == 0, proc.stderr
  assert os.path.isdir(os.path.join(out, "params"))


def test_convert_cli_bad_flags():
  _assert_one_line_error(_run("experiments.convert", "--out=x"), "--hf_dir")
  _assert_one_line_error(_run("experiments.convert", "--hf_dir=x", "--out=y", "--bogus=1"), "bogus")


# ------------------------------------------------------------------------ generate


def test_generate_cli_matches_transformers_jsonl(tiny_dir, tmp_path, hf_model):
  del hf_model  # torch skip
  d = tiny_dir("llama")
  prompt_file = tmp_path / "p.jsonl"
  prompt_file.write_text("".join(json.dumps({"prompt": p, "i": i}) + "\n" for i, p in enumerate(PROMPTS)))
  out = tmp_path / "out.jsonl"
  proc = _run("experiments.generate", f"--model={d}", f"--prompts={prompt_file}", f"--max_new_tokens={NEW}",
              f"--out={out}", "--batch_size=2")  # two batches, the last one padded
  assert proc.returncode == 0, proc.stderr
  rows = _read_jsonl(out)
  assert [r["prompt"] for r in rows] == PROMPTS
  assert [r["generation"] for r in rows] == _transformers_generations(d, PROMPTS, "chat")
  assert any(r["generation"] for r in rows)


def test_generate_cli_csv_raw_on_converted_dir(converted, tiny_dir, tmp_path, hf_model):
  del hf_model  # torch skip
  _, conv = converted
  prompt_file = tmp_path / "p.csv"
  with open(prompt_file, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["goal", "target"])
    w.writerows([[p, "Sure"] for p in PROMPTS])
  out = tmp_path / "out.jsonl"
  proc = _run("experiments.generate", f"--model={conv}", f"--prompts={prompt_file}", f"--max_new_tokens={NEW}",
              f"--out={out}", "--prompt_format=raw")
  assert proc.returncode == 0, proc.stderr
  rows = _read_jsonl(out)
  assert [r["prompt"] for r in rows] == PROMPTS
  assert [r["generation"] for r in rows] == _transformers_generations(tiny_dir("llama"), PROMPTS, "raw")


@pytest.mark.parametrize("args,fragment", [
    (["--bogus=1"], "bogus"),
    (["--max_new_tokens=abc"], "max_new_tokens"),
    (["--prompts=p.jsonl"], "--out"),
    (["--prompts=/nonexistent/p.jsonl", "--out=o.jsonl"], "does not exist"),
    (["--prompts=p.jsonl", "--out=o.jsonl", "extra"], "extra"),
])
def test_generate_cli_bad_input_is_one_line(args, fragment):
  _assert_one_line_error(_run("experiments.generate", *args), fragment)


def test_generate_cli_bad_prompt_format(tiny_dir, tmp_path):
  prompt_file = tmp_path / "p.jsonl"
  prompt_file.write_text(json.dumps({"prompt": "Hi"}) + "\n")
  proc = _run("experiments.generate", f"--model={tiny_dir('llama-nochat')}", f"--prompts={prompt_file}",
              f"--out={tmp_path / 'o.jsonl'}", "--max_new_tokens=2")
  _assert_one_line_error(proc, "chat template")
  assert not (tmp_path / "o.jsonl").exists()


def _assert_flagfiles_parse(module: str, files: list[str], check: str) -> None:
  """Parse each flagfile with ``module``'s flags in a subprocess (absl flags are global); ``check`` must hold."""
  assert files
  code = ("import sys\n"
          "from absl import flags\n"
          f"import {module}\n"
          "for path in sys.argv[1:]:\n"
          "  flags.FLAGS.unparse_flags()\n"
          "  flags.FLAGS(['prog', '--flagfile=' + path])\n"
          f"  assert {check}, path\n"
          "print('parsed', len(sys.argv) - 1)\n")
  proc = subprocess.run([sys.executable, "-c", code, *files], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"parsed {len(files)}" in proc.stdout


def test_every_flagfile_parses():
  """Each run_grid flagfile in experiments/configs parses."""
  import glob
  files = [os.path.relpath(p, REPO) for p in sorted(glob.glob(os.path.join(REPO, "experiments", "configs", "*.flags")))
           if not os.path.basename(p).startswith(("train_", "toy_multitask", "toy_finetune", "smollm2_align."))]
  _assert_flagfiles_parse("experiments.run_grid", files,
                          "flags.FLAGS.kind and flags.FLAGS.steps > 0 and flags.FLAGS.multiplier != 0")


@pytest.mark.parametrize("module,patterns", [("experiments.multitask_study", ("toy_multitask*.flags",)),
                                             ("experiments.finetune", ("toy_finetune*.flags", "smollm2_align.flags"))])
def test_other_entry_points_flagfiles_parse(module, patterns):
  """The study's and finetune's flagfiles parse with their own entry point."""
  import glob
  files = sorted(p for pattern in patterns for p in glob.glob(os.path.join(REPO, "experiments", "configs", pattern)))
  _assert_flagfiles_parse(module, files, "flags.FLAGS.steps > 0 and flags.FLAGS.model")
