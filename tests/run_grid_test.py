"""experiments.run_grid end to end: results dir, clear errors on bad input, resume after SIGKILL, determinism."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxscape import testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["Write a tutorial on how to make a bridge", "Develop a plan for the garden", "Hi there",
           "Explain how a computer network works", "Create a list of ideas", "Please write a story"]
ENV = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("run_grid")
  model = testing.make_tiny_checkpoint(str(root / "tiny"), "llama", seed=1)
  prompts = root / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
  return {"root": root, "model": model, "prompts": str(prompts)}


def run_grid(setup, out, *extra, env=None, check=True, timeout=300):
  cmd = [sys.executable, "-m", "experiments.run_grid", f"--model={setup['model']}", f"--prompts={setup['prompts']}",
         "--steps=4", "--max_new_tokens=8", f"--out={out}", *extra]
  proc = subprocess.run(cmd, cwd=REPO, env=env or ENV, capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"run_grid failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


def dir_digest(path):
  """sha256 of every file (path + bytes) under ``path``; '' for a missing dir."""
  if not os.path.isdir(path):
    return ""
  h = hashlib.sha256()
  for root, _, files in sorted(os.walk(path)):
    for name in sorted(files):
      full = os.path.join(root, name)
      h.update(os.path.relpath(full, path).encode())
      with open(full, "rb") as f:
        h.update(f.read())
  return h.hexdigest()


def comparable_summary(out):
  with open(os.path.join(out, "summary.json")) as f:
    s = json.load(f)
  for key in ("timings", "host"):
    s.pop(key)
  s["flags"].pop("out", None)
  return s


def test_results_dir_and_determinism(setup):
  a, b = str(setup["root"] / "det_a"), str(setup["root"] / "det_b")
  run_grid(setup, a, "--slice_size=2")
  run_grid(setup, b, "--slice_size=2")
  s = comparable_summary(a)
  assert s["kind"] == "1d_random" and len(s["coords"]) == 5 and len(s["asr"]) == 5
  assert s["coords"][0] == [-0.5] and s["coords"][-1] == [0.5]
  assert isinstance(s["visage"], float)
  for key in ("total_s", "compile_s", "scan_s"):
    assert key in json.load(open(os.path.join(a, "summary.json")))["timings"]
  assert comparable_summary(a) == comparable_summary(b)
  for name in ("generations.jsonl", "arrays.npz", "run.json"):
    assert open(os.path.join(a, name), "rb").read() == open(os.path.join(b, name), "rb").read(), name
  lines = [json.loads(x) for x in open(os.path.join(a, "generations.jsonl"))]
  assert [x["step"] for x in lines] == list(range(5))
  assert all(len(x["output"]) == len(PROMPTS) for x in lines)
  assert os.path.getsize(os.path.join(a, "landscape.png")) > 0


def _one_line_error(proc):
  err = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
  assert len(err) == 1 and err[0].startswith("error: "), proc.stderr
  assert "Traceback" not in proc.stderr
  return err[0]


@pytest.fixture(scope="module")
def existing(setup):
  """A finished results dir that bad runs must leave untouched."""
  out = str(setup["root"] / "existing")
  run_grid(setup, out)
  return out


def _bad_inputs(setup, tmp):
  """(name, extra args or callable preparing them, expected message fragment)."""
  root = setup["root"]
  empty = root / "empty.jsonl"
  empty.write_text("")
  malformed = root / "malformed.jsonl"
  malformed.write_text('{"prompt": "ok"}\nnot json\n')
  flagfile = root / "bad.flags"
  flagfile.write_text("--steps=4\n--no_such_flag=1\n")
  flagfile2 = root / "bad2.flags"
  flagfile2.write_text("--steps=four\n")
  corrupt = root / "corrupt"
  testing.make_tiny_checkpoint(str(corrupt), "llama", seed=1)
  with open(corrupt / "model.safetensors", "r+b") as f:
    f.truncate(os.path.getsize(corrupt / "model.safetensors") // 2)
  bad_type = root / "bad_type"
  testing.make_tiny_checkpoint(str(bad_type), "llama", seed=1)
  cfg = json.loads((bad_type / "config.json").read_text())
  cfg["model_type"] = "gpt2"
  (bad_type / "config.json").write_text(json.dumps(cfg))
  other_arch = root / "other_arch"
  testing.make_tiny_checkpoint(str(other_arch), "llama", seed=1, num_layers=3)
  long_prompt = root / "long.jsonl"
  long_prompt.write_text(json.dumps({"prompt": "garden " * 1100}) + "\n")
  unreadable = root / "unreadable"
  unreadable.mkdir(exist_ok=True)
  (unreadable / "config.json").write_text("{not json")
  return [
      ("missing model dir", [f"--model={root}/nope"], "does not exist"),
      ("unreadable model dir", [f"--model={unreadable}"], "config"),
      ("truncated safetensors", [f"--model={corrupt}"], "safetensors"),
      ("unsupported model_type", [f"--model={bad_type}"], "gpt2"),
      ("interpolation across architectures", ["--kind=1d_interpolation", f"--model_b={other_arch}"], "architecture"),
      ("unknown flag in flagfile", [f"--flagfile={flagfile}"], "no_such_flag"),
      ("malformed flag in flagfile", [f"--flagfile={flagfile2}"], "steps"),
      ("empty prompt file", [f"--prompts={empty}"], "no prompts"),
      ("malformed prompt file", [f"--prompts={malformed}"], "malformed.jsonl:2"),
      ("prompt longer than the context", [f"--prompts={long_prompt}"], "context window"),
      ("steps <= 0", ["--steps=0"], "steps"),
      ("zero multiplier", ["--multiplier=0"], "multiplier"),
      ("negative cpu_devices", ["--cpu_devices=-1"], "cpu_devices"),
      ("mismatched directions", [f"--directions={tmp}/dirs_other"], "do not match"),
  ]


def test_bad_inputs_exit_2_with_one_line_and_leave_results_untouched(setup, existing, tmp_path):
  cases = _bad_inputs(setup, tmp_path)
  # Directions saved (with orbax) for another architecture: an interpolation direction of a 3-layer model.
  other_arch = f"{setup['root']}/other_arch"
  run_grid(setup, str(tmp_path / "other_run"), f"--model={other_arch}", "--kind=1d_interpolation",
           f"--model_b={other_arch}", "--save_directions", "--steps=1")
  os.rename(str(tmp_path / "other_run" / "directions"), str(tmp_path / "dirs_other"))
  before = dir_digest(existing)
  for name, extra, fragment in cases:
    proc = run_grid(setup, existing, *extra, check=False)
    line = _one_line_error(proc)
    assert fragment in line, f"{name}: {line}"
    assert dir_digest(existing) == before, f"{name} modified the existing results dir"


def test_prompt_truncation_flag_warns_and_runs(setup, tmp_path):
  long_prompt = tmp_path / "long.jsonl"
  long_prompt.write_text(json.dumps({"prompt": "garden " * 1100}) + "\n" + json.dumps({"prompt": "hi"}) + "\n")
  proc = run_grid(setup, str(tmp_path / "out"), f"--prompts={long_prompt}", "--truncate_prompts", "--steps=1")
  assert "truncat" in proc.stderr.lower()


def test_unwritable_output_dir(setup, tmp_path):
  """An injected OSError on write: one line, exit 2."""
  code = ("import sys, jaxscape.core.results as r\n"
          "def boom(*a, **k): raise OSError(28, 'No space left on device')\n"
          "r.atomic_write_bytes = boom\n"
          "from experiments import common, run_grid\n"
          "common.run(run_grid.main)\n")
  out = str(tmp_path / "out")
  proc = subprocess.run([sys.executable, "-c", code, f"--model={setup['model']}", f"--prompts={setup['prompts']}",
                         "--steps=2", "--max_new_tokens=4", f"--out={out}"], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=300)
  assert "No space left" in _one_line_error(proc)


def test_incompatible_run_is_refused_naming_the_difference(setup, existing):
  before = dir_digest(existing)
  proc = run_grid(setup, existing, "--max_new_tokens=9", check=False)
  assert "decoding" in _one_line_error(proc)
  proc = run_grid(setup, existing, "--seed=7", check=False)
  assert "directions" in _one_line_error(proc)
  assert dir_digest(existing) == before


def _slice_files(out):
  pts = os.path.join(out, "points")
  return sorted(n for n in os.listdir(pts) if n.startswith("slice-")) if os.path.isdir(pts) else []


def test_resume_after_sigkill_matches_uninterrupted_run(setup, tmp_path):
  extra = ("--steps=299", "--slice_size=1", "--max_new_tokens=24")
  ref = str(tmp_path / "ref")
  run_grid(setup, ref, *extra)
  out = str(tmp_path / "killed")
  cmd = [sys.executable, "-m", "experiments.run_grid", f"--model={setup['model']}", f"--prompts={setup['prompts']}",
         f"--out={out}", *extra]
  rng = random.Random(0)
  kills, seen = 0, {}
  while kills < 6:
    start = len(_slice_files(out))
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kills % 2:  # a random moment while scanning (after this run wrote a new slice)
      while proc.poll() is None and len(_slice_files(out)) == start:
        time.sleep(0.01)
      time.sleep(rng.uniform(0.0, 0.1))
    else:  # a random moment of start-up, loading, compiling or scanning, at most 20 slices in
      # (a warm compilation cache makes a run fast enough to finish all 300 points within the wait)
      deadline = time.monotonic() + rng.uniform(0.3, 4.0)
      while proc.poll() is None and time.monotonic() < deadline and len(_slice_files(out)) < start + 20:
        time.sleep(0.01)
    if proc.poll() is not None:
      break  # finished before the kill
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kills += 1
    # Slices written before a kill are never rewritten: no point is computed twice after its slice was written.
    for name in _slice_files(out):
      st = os.stat(os.path.join(out, "points", name))
      assert seen.setdefault(name, (st.st_ino, st.st_mtime_ns)) == (st.st_ino, st.st_mtime_ns), name
  assert kills >= 6, f"only {kills} kills before the scan finished"
  run_grid(setup, out, *extra)
  ids = [i for name in _slice_files(out) for i in json.load(open(os.path.join(out, "points", name)))["point_ids"]]
  assert sorted(ids) == list(range(300)), "every point written exactly once"
  assert comparable_summary(out)["asr"] == comparable_summary(ref)["asr"]
  assert (open(os.path.join(out, "generations.jsonl"), "rb").read()
          == open(os.path.join(ref, "generations.jsonl"), "rb").read())


def test_nan_direction_is_flagged_not_fatal(tmp_path):
  import jax
  import jax.numpy as jnp
  from jaxscape.core import convert
  from jaxscape.studies import landscape
  d = testing.make_tiny_checkpoint(str(tmp_path / "tiny"), "llama", seed=1)
  model = convert.load_model(d)
  # A direction that drives the output head's logits to inf/NaN away from the origin.
  huge = jax.tree.map(jnp.zeros_like, model.params)
  huge["lm_head"]["kernel"] = jnp.full(huge["lm_head"]["kernel"].shape, 1e38, jnp.float32)
  spec = landscape.LandscapeSpec(kind="1d_random", steps=2)
  summary = landscape.run_landscape(model, PROMPTS[:3], spec, out_dir=str(tmp_path / "out"),
                                    decode=landscape.DecodeSpec(max_new_tokens=4), directions=([huge], [None]),
                                    options=landscape.ScanOptions(progress=False))
  assert summary["nonfinite"] == [True, False, True]
  assert summary["nonfinite_points"] == [0, 2]
  assert len(summary["asr"]) == 3
  lines = [json.loads(x) for x in open(tmp_path / "out" / "generations.jsonl")]
  assert [x["nonfinite"] for x in lines] == [True, False, True]
