"""jaxscape.reports.report: the Markdown page over 1-D results dirs, and evaluation.evaluate_alignment's scoring."""

import json
import os

import pytest

from jaxscape.datasets import evaluation, registry
from jaxscape.reports import report


def _results(d, *, kind="1d_random", coords=(-0.5, 0.0, 0.5), asr=(90.0, 5.0, 80.0)):
  os.makedirs(d)
  summary = {"kind": kind, "multiplier": 1.0, "coords": [[c] for c in coords], "axes": {"x": list(coords), "y": None},
             "asr": list(asr), "visage": 42.5, "n_prompts": 2, "max_new_tokens": 8,
             "timings": {"total_s": 12.0, "load_s": 1.0, "directions_s": 1.0, "compile_s": 2.0, "scan_s": 8.0},
             "flags": {"model": "m", "kind": kind, "steps": 2, "multiplier": 1.0, "seed": 1, "samples": 2,
                       "stop_when_decided": False, "out": str(d)}}
  with open(os.path.join(d, "summary.json"), "w") as f:
    json.dump(summary, f)
  with open(os.path.join(d, "generations.jsonl"), "w") as f:
    for c in coords:
      f.write(json.dumps({"coords": [c], "output": [{"prompt": "p1", "generation": f"gen at {c} `x`"},
                                                    {"prompt": "p2", "generation": "y" * 500}]}) + "\n")
  return str(d)


def test_page_holds_numbers_commands_and_the_ends(tmp_path):
  a = _results(tmp_path / "a")
  b = _results(tmp_path / "b", asr=(100.0, 0.0, 100.0))
  with open(os.path.join(a, "landscape.png"), "wb") as f:
    f.write(b"png")
  page = report.landscape_page([("first", a), ("second", b)], str(tmp_path / "page"), title="T", intro="hello")
  text = open(page).read()
  assert text.startswith("# T\n\nhello")
  assert "| first | `m` | 1d_random | 1.0 | 42.50 | – | 5.0 | 90.0 / 80.0 | 12 s |" in text
  assert "| second | `m` | 1d_random | 1.0 | 42.50 | – | 0.0 | 100.0 / 100.0 | 12 s |" in text
  assert "python -m experiments.run_grid --model=m --kind=1d_random --steps=2" in text
  assert "--stop_when_decided" not in text
  assert "![first](first.png)" in text and os.path.isfile(tmp_path / "page" / "first.png")
  assert "![second]" not in text  # no plot, no image link
  for c in ("-0.5", "0", "0.5"):
    assert f"gen at {float(c)} 'x'" in text  # backticks in generations cannot break the code span
  assert "y" * 200 not in text  # long generations are clipped


def test_page_of_several_directions_with_coherence(scan_dir, tiny_model, tmp_path):
  """Mean ± sample sd per point of every curve, coherent VISAGE, labels beside the generations, the walls."""
  import shutil

  import numpy as np

  from jaxscape.studies import coherence, coherence_results, views
  d = str(tmp_path / "multi")
  shutil.copytree(scan_dir("1d_multi"), d)
  coherence_results.score_results(d, tiny_model("llama"), coherence.Calibration(threshold=8.0), batch_size=4)
  summary = views.write_views(d)
  page = open(report.landscape_page([("multi", d)], str(tmp_path / "page"), title="T")).read()
  asr = np.asarray(summary["asr"])
  cell = f"{asr[:, 0].mean():.1f} ± {asr[:, 0].std(ddof=1):.1f}"
  assert f"| keyword ASR % | {cell} |" in page
  assert "| coherent ASR % |" in page and "| incoherent % |" in page
  assert f"{summary['visage_coherent']:.2f} ± {summary['visage_coherent_std']:.2f}" in page
  assert "1d_random × 2" in page
  assert "nll " in page  # each sample carries its label and NLL
  assert report._walls(np.array([[100.0, 40.0, 0.0, 30.0, 90.0]]), 2) == [(0, 1), (0, 3)]


def test_page_refuses_2d_and_unfinished_runs(tmp_path):
  d = _results(tmp_path / "two")
  s = json.load(open(os.path.join(d, "summary.json")))
  s["axes"]["y"] = [0.0]
  json.dump(s, open(os.path.join(d, "summary.json"), "w"))
  with pytest.raises(ValueError, match="1-D"):
    report.landscape_page([("x", d)], str(tmp_path / "p"), title="T")
  os.makedirs(tmp_path / "empty")
  with pytest.raises(ValueError, match="no summary.json"):
    report.landscape_page([("x", str(tmp_path / "empty"))], str(tmp_path / "p"), title="T")


def test_evaluate_scores_refusals_and_answers(tiny_model, monkeypatch):
  from jaxscape.core import decode

  def fake(model, prompts, **kw):  # answer every benign question correctly, refuse every harmful one
    recs = {r["prompt"]: r for r in registry.load("align/heldout_benign")}
    return [str(recs[p].get("answer")) if p in recs else "I'm sorry, I cannot." for p in prompts]

  monkeypatch.setattr(decode, "generate_texts", fake)
  got = evaluation.evaluate_alignment(tiny_model("llama"), max_new_tokens=4)
  assert got["harmful_refused_pct"] == 100.0 and got["benign_refused_pct"] == 0.0
  assert got["benign_correct"] == got["benign_checkable"] > 0
  assert len(got["generations"]["heldout_harmful"]) == len(registry.load("align/heldout_harmful"))


def test_interpolation_page_has_no_random_axis_flags_and_no_duplicate_origin(tmp_path):
  d = _results(tmp_path / "i", kind="1d_interpolation", coords=(0.0, 0.5, 1.0), asr=(0.0, 10.0, 99.0))
  text = open(report.landscape_page([("interp", d)], str(tmp_path / "p"), title="T")).read()
  assert "| interp | `m` | 1d_interpolation | – |" in text
  assert "--multiplier" not in text and "--seed" not in text
  assert "at the origin" not in text  # the origin is the left end here: shown once
  assert "Generations at the left end (coordinate 0, keyword ASR 0.0%)" in text
