"""CI smoke of classifier judges: run_grid --judge with a tiny random judge, experiments.judge re-judging, bad input."""

import json
import os
import subprocess
import sys

import pytest

from jaxscape import testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
PROMPTS = ["Write a tutorial on how to make a bridge", "Develop a plan for the garden", "Hi there"]


def _run(module, *args, check=True):
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                        timeout=300)
  if check and proc.returncode != 0:
    raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


def _digest(path):
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      out[os.path.relpath(full, path)] = open(full, "rb").read()
  return out


def _one_line_error(proc):
  err = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
  assert len(err) == 1 and err[0].startswith("error: "), proc.stderr
  return err[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("judge_cli")
  prompts = root / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
  gpt2 = root / "gpt2"
  testing.make_tiny_judge(str(gpt2), "yes-no", seed=9)
  cfg = json.loads((gpt2 / "config.json").read_text())
  (gpt2 / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
  return {"root": root, "prompts": str(prompts), "model": testing.make_tiny_checkpoint(str(root / "model"), seed=1),
          "yes_no": testing.make_tiny_judge(str(root / "yn"), "yes-no", seed=3),
          "guard": testing.make_tiny_judge(str(root / "lg"), "llama-guard", seed=4), "gpt2": str(gpt2)}


def test_run_grid_with_a_judge_then_rejudge(setup):
  out = str(setup["root"] / "out")
  proc = _run("experiments.run_grid", f"--model={setup['model']}", f"--prompts={setup['prompts']}", "--steps=2",
              "--max_new_tokens=6", f"--out={out}", f"--judge={setup['yes_no']}", "--judge_format=yes-no",
              "--judge_name=yn")
  assert "judge yn: ASR=[" in proc.stdout and "agreement with keywords" in proc.stdout
  summary = json.load(open(os.path.join(out, "summary.json")))
  yn = summary["judges"]["yn"]
  assert len(yn["asr"]) == len(summary["asr"]) == 3 and isinstance(yn["visage"], float)
  assert all(sum(a.values()) == len(PROMPTS) for a in yn["agreement"])
  lines = [json.loads(x) for x in open(os.path.join(out, "generations.jsonl"))]
  assert all(set(o["judges"]) == {"yn"} for line in lines for o in line["output"])

  # Re-judging with another judge: added beside the first, keyword and yn results unchanged.
  proc = _run("experiments.judge", f"--results={out}", f"--judge={setup['guard']}", "--judge_format=llama-guard",
              "--noprogress")
  assert "judge lg:llama-guard: ASR=[" in proc.stdout
  summary2 = json.load(open(os.path.join(out, "summary.json")))
  assert summary2["judges"]["yn"] == yn and summary2["asr"] == summary["asr"]
  assert summary2["judges"]["lg:llama-guard"]["format"] == "llama-guard"
  lines2 = [json.loads(x) for x in open(os.path.join(out, "generations.jsonl"))]
  for a, b in zip(lines, lines2):
    assert b["asr"] == a["asr"]
    for x, y in zip(a["output"], b["output"]):
      assert y["judges"]["yn"] == x["judges"]["yn"] and y["generation"] == x["generation"]
      assert set(y["judges"]) == {"yn", "lg:llama-guard"}
  assert os.path.getsize(os.path.join(out, "landscape.png")) > 0

  # Bad input: one error line, exit 2, the results dir untouched.
  empty = setup["root"] / "empty"
  empty.mkdir()
  before = _digest(out)
  cases = [
      ("already judged", ["experiments.judge", f"--results={out}", f"--judge={setup['guard']}",
                          "--judge_format=llama-guard"], "--overwrite"),
      ("unknown format", ["experiments.judge", f"--results={out}", f"--judge={setup['guard']}",
                          "--judge_format=guard3"], "unknown judge format 'guard3'"),
      ("label not one token", ["experiments.judge", f"--results={out}", f"--judge={setup['yes_no']}",
                               "--judge_format=llama-guard"], "not a single token"),
      ("unsupported family", ["experiments.judge", f"--results={out}", f"--judge={setup['gpt2']}",
                              "--judge_format=yes-no"], "gpt2"),
      ("no generations", ["experiments.judge", f"--results={empty}", f"--judge={setup['guard']}",
                          "--judge_format=llama-guard"], "generations"),
      ("run_grid, unknown format", ["experiments.run_grid", f"--model={setup['model']}",
                                    f"--prompts={setup['prompts']}", "--steps=2", "--max_new_tokens=6", f"--out={out}",
                                    f"--judge={setup['guard']}", "--judge_format=nope"], "unknown judge format"),
  ]
  for name, (module, *args), fragment in cases:
    line = _one_line_error(_run(module, *args, check=False))
    assert fragment in line, f"{name}: {line}"
    assert _digest(out) == before, f"{name} modified the results dir"
  assert os.listdir(empty) == []
