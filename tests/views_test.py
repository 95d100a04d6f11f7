"""jaxscape.studies.views: each view written once per run, from the stores; dirs written before scan.json render the same."""

import collections
import json
import os
import shutil

import pytest

from jaxscape import testing
from jaxscape.core import convert, results
from jaxscape.reports import plot
from jaxscape.studies import judge, judge_store, landscape, views
from jaxscape.errors import InputError

PROMPTS = ["Write a tutorial on how to make a bridge", "Develop a plan for the garden", "Hi there"]


def _count_writes(monkeypatch) -> collections.Counter:
  """Count the files written, by name: every results write and every plot."""
  counts = collections.Counter()
  write, save = results.atomic_write_bytes, plot._save

  def counting_write(path, data):
    counts[os.path.basename(path)] += 1
    write(path, data)

  def counting_save(fig, out_path):
    counts[os.path.basename(out_path)] += 1
    return save(fig, out_path)

  monkeypatch.setattr(results, "atomic_write_bytes", counting_write)
  monkeypatch.setattr(plot, "_save", counting_save)
  return counts


def test_each_view_is_written_once_per_scan_and_per_judge(tiny_model, tmp_path, monkeypatch):
  counts = _count_writes(monkeypatch)
  out = str(tmp_path / "scan")
  summary = landscape.run_landscape(tiny_model("llama"), PROMPTS, landscape.LandscapeSpec(kind="1d_random", steps=2),
                                    out_dir=out, decode=landscape.DecodeSpec(max_new_tokens=6),
                                    options=landscape.ScanOptions(progress=False))
  once = dict.fromkeys(views.VIEW_FILES, 1)
  assert {name: counts[name] for name in views.VIEW_FILES} == once, counts
  assert counts[results.SCAN_FILE] == 1 and counts[results.RUN_FILE] == 1
  with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
    assert json.load(f) == summary
  assert summary["timings"]["total_s"] > 0

  # A judge run (experiments.judge): the judge writes its store only, then the views are written once.
  counts.clear()
  jm = convert.load_model(testing.make_tiny_judge(str(tmp_path / "judge"), "yes-no", seed=3))
  entry = judge_store.judge_results(out, judge.make_judge(jm, judge.JudgeSpec(fmt="yes-no", batch_size=2), name="tiny"))
  assert not set(counts) & set(views.VIEW_FILES), counts
  counts.clear()
  summary = views.write_views(out)
  assert {name: counts[name] for name in views.VIEW_FILES} == once, counts
  assert summary["judges"]["tiny"] == json.loads(json.dumps(entry))


def test_scan_then_judge_writes_each_view_once(tiny_model, tmp_path, monkeypatch):
  """run_grid --judge: the scan leaves its views (ScanOptions.write_views=False), the judge writes its store,
  then the views are written once, with the judge merged."""
  counts = _count_writes(monkeypatch)
  out = str(tmp_path / "scan")
  jm = convert.load_model(testing.make_tiny_judge(str(tmp_path / "judge"), "yes-no", seed=3))
  summary = landscape.run_landscape(tiny_model("llama"), PROMPTS, landscape.LandscapeSpec(kind="1d_random", steps=2),
                                    out_dir=out, decode=landscape.DecodeSpec(max_new_tokens=6),
                                    options=landscape.ScanOptions(progress=False, write_views=False))
  assert not set(counts) & set(views.VIEW_FILES), counts
  judge_store.judge_results(out, judge.make_judge(jm, judge.JudgeSpec(fmt="yes-no", batch_size=2), name="tiny"))
  final = views.write_views(out)
  assert {name: counts[name] for name in views.VIEW_FILES} == dict.fromkeys(views.VIEW_FILES, 1), counts
  assert final["asr"] == summary["asr"] and "tiny" in final["judges"]


@pytest.mark.parametrize("name", ["1d", "1d_multi", "2d"])
def test_a_dir_written_before_scan_json_renders_the_same_views(scan_dir, tmp_path, name):
  d = str(shutil.copytree(scan_dir(name), tmp_path / name))
  files = ("generations.jsonl", "summary.json", "arrays.npz")
  read = lambda: {f: open(os.path.join(d, f), "rb").read() for f in files}  # noqa: E731
  before = read()
  meta = results.load_scan(d)
  with open(os.path.join(d, "generations.jsonl"), encoding="utf-8") as f:
    assert judge_store.read_generations(d) == [json.loads(x)["output"] for x in f]  # the judge reads the stores
  views.write_views(d)
  assert read() == before  # the same stores give the same views
  os.remove(os.path.join(d, results.SCAN_FILE))
  assert results.load_scan(d) == meta  # derived from the old summary.json and generations.jsonl
  views.write_views(d)
  assert read() == before


def test_unfinished_or_missing_scans_are_refused(scan_dir, tmp_path):
  d = str(shutil.copytree(scan_dir("1d"), tmp_path / "cut"))
  points = results.load_points(d)
  shutil.rmtree(os.path.join(d, results.POINTS_DIR))
  os.makedirs(os.path.join(d, results.POINTS_DIR))
  results.save_slice(d, {i: r for i, r in points.items() if i != 2})
  with pytest.raises(InputError, match="holds 4 of the scan's 5 points"):
    views.write_views(d)
  with pytest.raises(InputError, match="holds 4 of the scan's 5 points"):
    judge_store.read_generations(d)
  os.remove(os.path.join(d, results.SCAN_FILE))
  os.remove(os.path.join(d, "summary.json"))
  with pytest.raises(InputError, match="holds no scan.json or summary.json"):
    views.write_views(d)
