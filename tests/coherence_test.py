"""Coherence: NLL per generated token under θ₀, calibrated thresholds, labels, the results-dir store and views."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxscape.studies import coherence
from jaxscape.studies import coherence_results
from jaxscape.core import decode
from jaxscape.core import results
from jaxscape.studies import views

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "checkpoints", "toy-chat")


def test_nll_matches_transformers_loss(tiny_model, hf_model):
  """Per generation, within 1e-4 of transformers' mean cross-entropy over the same generated tokens."""
  torch = pytest.importorskip("torch")
  m, hf = tiny_model("llama"), hf_model("llama")
  rng = np.random.default_rng(0)
  prompts = ["Write a poem", "Hi", "Tell me about the garden and the bridge please"]
  gens = [rng.integers(3, m.cfg.vocab_size, size=k).tolist() for k in (5, 1, 9)]
  nll = coherence.score(m, prompts, gens, batch_size=2)
  enc = coherence.encode(m, prompts, gens)
  for r, g in enumerate(gens):
    prompt = enc.tokens[r][enc.mask[r]].tolist()
    with torch.no_grad():
      logits = hf(torch.tensor([prompt + g])).logits[0, len(prompt) - 1:-1].double()
    want = torch.nn.functional.cross_entropy(logits, torch.tensor(g)).item()
    assert abs(float(nll[r]) - want) < 1e-4, (r, float(nll[r]), want)


def test_encode_texts_empty_and_eos(tiny_model):
  """Texts are tokenized without special tokens; an empty generation is the EOS alone; ids pass through."""
  m = tiny_model("llama")
  eos = m.eos_ids[0]
  enc = coherence.encode(m, ["a", "b"], ["hello there", ""])
  assert enc.retokenized
  assert enc.targets[1, 0] == eos and enc.target_mask[1].sum() == 1
  ids = m.tokenizer("hello there", add_special_tokens=False)["input_ids"]
  assert enc.targets[0, :len(ids)].tolist() == ids and enc.target_mask[0].sum() == len(ids)
  with_eos = coherence.encode(m, ["a"], ["hello there"], end_with_eos=True)
  assert with_eos.targets[0, len(ids)] == eos
  by_ids = coherence.encode(m, ["a"], [[5, 6, eos]], max_new_tokens=6)
  assert not by_ids.retokenized and by_ids.targets.shape == (1, 6) and by_ids.target_mask[0].sum() == 3
  with pytest.raises(ValueError, match="more than max_new_tokens"):
    coherence.encode(m, ["a"], [[5] * 7], max_new_tokens=6)


def test_labels_and_shares():
  gens = ["I cannot help with that.", "Sure, here it is.", "zx qq vv"]
  marks = coherence.labels(gens, [9.0, 1.0, 5.0], threshold=2.0)
  assert marks == ["refusal", "coherent", "incoherent"]
  assert coherence.label("ok", float("nan"), 2.0) == "incoherent"
  s = coherence.shares(marks)
  assert s == pytest.approx({"refusal": 100 / 3, "coherent": 100 / 3, "incoherent": 100 / 3})


def test_toy_calibration_holds_out():
  """Calibrated on half the toy's held-out benign prompts (seed 0), θ₀'s temperature-1 samples to the other
  half (seed 1) are >= 90% coherent, and the same samples with their tokens shuffled >= 95% incoherent."""
  import jaxscape
  check = coherence.holdout_check(jaxscape.load_model(TOY), "builtin:benign_test", max_new_tokens=32)
  assert check["calibration"]["samples"] == 100 and check["calibration"]["references"] == 100
  assert check["heldout"] == 100 and check["shuffled"] >= 50
  assert check["coherent_heldout"] >= 90.0 and check["incoherent_shuffled"] >= 95.0, check


def test_shuffle_tokens_keeps_eos_last():
  out, keep = coherence.shuffle_tokens([[1, 2, 3, 4, 9], [5, 5, 5, 5], [1, 2]], eos_ids=(9,))
  assert keep == [0] and out[0][-1] == 9 and sorted(out[0][:-1]) == [1, 2, 3, 4] and out[0][:-1] != [1, 2, 3, 4]


def test_sampling_needs_a_key(tiny_model):
  with pytest.raises(ValueError, match="PRNG key"):
    decode.generate_ids(tiny_model("llama"), ["hi"], max_new_tokens=2, temperature=1.0)


def test_results_dir_store_views_and_resume(scan_dir, tiny_model, tmp_path):
  """Scores land in DIR/coherence/, the views label every generation; an interrupted run resumes to the same scores."""
  m = tiny_model("llama")
  out = str(tmp_path / "scan")
  shutil.copytree(scan_dir("1d"), out)
  cal = coherence.Calibration(threshold=8.0)
  stopped = []

  def stop(ids):
    stopped.append(ids)
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    coherence_results.score_results(out, m, cal, batch_size=4, points_per_part=2, on_part=stop)
  _, partial = coherence_results.load_store(out)
  assert sorted(partial) == stopped[0]
  coherence_results.score_results(out, m, cal, batch_size=4, points_per_part=2)
  _, done = coherence_results.load_store(out)
  whole = str(tmp_path / "whole")
  shutil.copytree(scan_dir("1d"), whole)
  coherence_results.score_results(whole, m, cal, batch_size=4)
  assert [done[i]["nll"] for i in sorted(done)] == [coherence_results.load_store(whole)[1][i]["nll"] for i in sorted(done)]
  summary = views.write_views(out)
  lines = [json.loads(x) for x in open(os.path.join(out, "generations.jsonl"))]
  for line in lines:
    for o in line["output"]:
      assert o["label"] in coherence.LABELS and isinstance(o["nll_per_token"], float)
  assert len(summary["asr_coherent"]) == len(summary["asr"]) and "visage_coherent" in summary
  for a, c, i in zip(summary["asr"], summary["asr_coherent"], summary["incoherent"]):
    assert a == pytest.approx(c + i)  # keyword ASR = coherent ASR + incoherent share
  assert summary["coherence"]["threshold"] == 8.0 and summary["coherence"]["retokenized"] is False
  with pytest.raises(ValueError, match="already holds coherence scores"):
    coherence_results.score_results(out, m, cal, batch_size=4)
  with pytest.raises(ValueError, match="other settings"):
    coherence_results.score_results(out, m, coherence.Calibration(threshold=3.0), batch_size=4, existing="reuse")


def test_older_dir_is_retokenized_and_marked(scan_dir, tiny_model, tmp_path):
  """A dir whose points hold no token ids (written before they were stored): texts re-tokenized, marked so."""
  out = str(tmp_path / "old")
  shutil.copytree(scan_dir("1d"), out)
  for path in os.listdir(os.path.join(out, "points")):
    full = os.path.join(out, "points", path)
    data = json.load(open(full))
    for rec in data["points"]:
      rec.pop("token_ids")
    results.atomic_write_json(full, data)
  coherence_results.score_results(out, tiny_model("llama"), coherence.Calibration(threshold=8.0), batch_size=4)
  summary = views.write_views(out)
  assert summary["coherence"]["retokenized"] is True


def test_multi_direction_fields(scan_dir, tiny_model, tmp_path):
  out = str(tmp_path / "multi")
  shutil.copytree(scan_dir("1d_multi"), out)
  coherence_results.score_results(out, tiny_model("llama"), coherence.Calibration(threshold=8.0), batch_size=4)
  summary = views.write_views(out)
  assert np.asarray(summary["asr_coherent"]).shape == np.asarray(summary["asr"]).shape == (2, 3)
  assert len(summary["visage_coherent_per_direction"]) == 2 and "visage_coherent_std" in summary


def _run(*args, cwd=REPO):
  return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_scan_then_judge_give_identical_scores(tmp_path):
  """run_grid --coherence and a later experiments.judge --judge=coherence (same batch size): the same scores."""
  out = str(tmp_path / "toy")
  common = ["--model=" + TOY, "--kind=1d_random", "--steps=2", "--multiplier=8", "--samples=6", "--max_new_tokens=16",
            "--prompts=builtin:harmful_test", "--coherence_calibration=builtin:benign_test",
            "--coherence_calibration_samples=24", "--cpu_devices=1"]
  r = _run("-m", "experiments.run_grid", *common, "--coherence", "--out=" + out)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "coherence (threshold" in r.stdout
  _, first = coherence_results.load_store(out)
  r = _run("-m", "experiments.judge", "--results=" + out, "--judge=coherence", "--model=" + TOY, "--overwrite",
           "--coherence_calibration_samples=24", "--noprogress")
  assert r.returncode == 0, r.stderr[-3000:]
  _, second = coherence_results.load_store(out)
  assert first == second
  summary = json.load(open(os.path.join(out, "summary.json")))
  assert summary["coherence"]["calibration"]["source"] == "builtin:benign_test"  # taken from the scan's flags
  # Not the scan's θ₀: one error line, the store untouched.
  r = _run("-m", "experiments.judge", "--results=" + out, "--judge=coherence", "--overwrite",
           f"--model={REPO}/nonexistent")
  assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
  r = _run("-m", "experiments.judge", "--results=" + out, "--judge=coherence", "--model=" + TOY,
           "--coherence_calibration=/nonexistent.jsonl", "--overwrite")
  assert r.returncode == 2 and "error:" in r.stderr and r.stderr.strip().count("\n") == 0
  assert coherence_results.load_store(out)[1] == second
