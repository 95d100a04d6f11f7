"""jaxscape.reports.htmlreport: report.html of scans, studies and findings dirs; experiments.plot writes it."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from jaxscape.core import metrics
from jaxscape.reports import htmlreport

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVIL = "</script><b>x</b>"


def _page(d):
  with open(os.path.join(d, "report.html"), encoding="utf-8") as f:
    return f.read()


def _data(page):
  scripts = re.findall(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
  assert len(scripts) == 1
  return json.loads(scripts[0])


def _lines(d):
  with open(os.path.join(d, "generations.jsonl"), encoding="utf-8") as f:
    return [json.loads(x) for x in f]


def _assert_self_contained(page):
  refs = re.findall(r'\b(src|href)\s*=\s*"([^"]*)"', page)
  assert all(v.startswith("data:image/png;base64,") for k, v in refs if k == "src"), refs
  assert all(not re.match(r"[a-z]+:|//", v) for k, v in refs if k == "href"), refs  # relative links only
  assert not re.search(r"(src|href)\s*=\s*['\"]?\s*(https?:)?//", page)
  assert "url(http" not in page and "<link" not in page and "@import" not in page


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def test_scan_page_1d(scan_dir):
  d = scan_dir("1d")
  page = _page(d)  # run_landscape wrote it
  _assert_self_contained(page)
  summary = json.load(open(os.path.join(d, "summary.json")))
  lines, data = _lines(d), _data(page)
  assert len(data["points"]) == len(lines) == 5
  for i, (line, p) in enumerate(zip(lines, data["points"])):
    assert f'id="point-{i}" data-point="{i}"' in page
    assert p["coords"] == line["coords"] and p["asr"] == line["asr"]
    assert p["gen"] == [o["generation"] for o in line["output"]]
    assert [data["prompts"][j] for j in p.get("prompt", range(len(p["gen"])))] == [o["prompt"] for o in line["output"]]
    assert p["refused"] == [int(metrics.is_refusal(o["generation"])) for o in line["output"]]
  assert len(data["prompts"]) == 3  # stored once, not per point
  assert 'id="generations"' in page and "<svg" in page and "<polyline" in page
  assert f"{summary['visage']:.2f}" in page and summary["fingerprints"]["model"] in page
  assert "<summary>versions</summary>" in page and summary["versions"]["jax"] in page
  assert "Timings" in page and "total_s" in page and "Flags" in page


def test_scan_page_multi_direction_and_2d(scan_dir):
  page = _page(scan_dir("1d_multi"))
  data = _data(page)
  assert [p["direction"] for p in data["points"]] == [0, 0, 0, 1, 1, 1]
  assert page.count("<circle id=\"point-") == 6 and "direction 1" in page
  page = _page(scan_dir("2d"))
  _assert_self_contained(page)
  data = _data(page)
  assert len(data["points"]) == 9 and page.count('<rect id="point-') == 9
  for i, (line, p) in enumerate(zip(_lines(scan_dir("2d")), data["points"])):
    assert p["coords"] == line["coords"] and p["gen"] == [o["generation"] for o in line["output"]]


def test_text_is_escaped_and_judges_shown(scan_dir, tmp_path):
  d = _copy(scan_dir("1d"), tmp_path / "evil")
  lines, summary = _lines(d), json.load(open(os.path.join(d, "summary.json")))
  lines[1]["output"][0]["generation"] = EVIL
  lines[2]["output"][1]["prompt"] = "<img src=x onerror=alert(1)> & co"
  for line in lines:
    for k, o in enumerate(line["output"]):
      o["judges"] = {"tiny": {"p_unsafe": 0.25 * k, "unsafe": k > 1}}
  summary["judges"] = {"tiny": {"asr": [0.0] * 5, "visage": 100.0, "format": "yes-no", "threshold": 0.5}}
  with open(os.path.join(d, "generations.jsonl"), "w") as f:
    f.write("".join(json.dumps(x) + "\n" for x in lines))
  json.dump(summary, open(os.path.join(d, "summary.json"), "w"))
  assert htmlreport.write_report(d) == os.path.join(d, "report.html")
  page = _page(d)
  assert EVIL not in page and "<b>x</b>" not in page and "<img src=x" not in page
  assert page.count("</script>") == 2  # the data block and the page's script, nothing in between
  data = _data(page)
  assert data["points"][1]["gen"][0] == EVIL
  assert "<img src=x onerror=alert(1)> & co" in data["prompts"]
  assert data["points"][1]["judges"]["tiny"] == {"p": [0.0, 0.25, 0.5], "unsafe": [0, 0, 1]}
  assert data["points"][1]["judged_asr"] == {"tiny": 0.0}
  assert "judge tiny" in page and "VISAGE 100" in page


def _study(root, scan_dir):
  """A study dir by hand: two rows, per-seed ASR, each landscape a copy of a real tiny scan."""
  root = str(root)
  for sub in ("runs/aligned/random_1d", "runs/harmful_10/random_1d", "runs/harmful_10/interp_1d"):
    _copy(scan_dir("1d"), os.path.join(root, sub))
    os.remove(os.path.join(root, sub, "report.html"))
  _copy(scan_dir("2d"), os.path.join(root, "surface_2d"))
  row = lambda run, asr: {"run": run, "framed_asr": {"plain": asr, "code": asr / 2},  # noqa: E731
                          "task_accuracy": {"summarize": 90.0}, "visage": 55.5}
  rows = [row("aligned", 1.0), row("harmful:10", 40.0)]
  rows[1].update(finetune={"records": 10, "steps": 5, "final_loss": 0.1, "seconds": 3.0},
                 framed_asr_per_seed={"0": {"plain": 30.0, "code": 20.0}, "1": {"plain": 50.0, "code": 20.0}},
                 interp_1d={"coords": [[0.0], [0.5], [1.0]], "asr": [1.0, 20.0, 38.0], "visage": 9.0})
  table = {"model": "checkpoints/toy-chat", "spec": {"steps": 5}, "rows": rows, "seconds": 12.0,
           "surface": {"run": "harmful:10", "dir": "surface_2d", "visage": 33.0},
           "findings": {"harmful": {"10": {"asr": 40.0, "rise": 39.0, "mixing_halves_rise": False}}}, "judge": None}
  json.dump(table, open(os.path.join(root, "table.json"), "w"))
  return root


def test_study_page_links_every_landscape(scan_dir, tmp_path):
  d = _study(tmp_path / "study", scan_dir)
  page = _page(os.path.dirname(htmlreport.write_report(d)))
  _assert_self_contained(page)
  for sub in ("runs/aligned/random_1d", "runs/harmful_10/random_1d", "runs/harmful_10/interp_1d", "surface_2d"):
    assert f'href="{sub}/report.html"' in page
    assert os.path.getsize(os.path.join(d, sub, "report.html")) > 0  # written where missing
  assert "<code>harmful:10</code>" in page and "(30 / 50)" in page  # per-seed values beside the mean
  assert ">40.0" in page and ">38.0<" in page  # plain ASR, interpolation ASR at b
  assert "mixing_halves_rise" in page and "VISAGE 33" in page


def _png(path):
  # a 1x1 PNG
  data = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
  with open(path, "wb") as f:
    f.write(data)
  return data


def _findings(root, scan_dir):
  root = str(root)
  _study(os.path.join(root, "study"), scan_dir)
  _copy(scan_dir("1d"), os.path.join(root, "scans", "toy"))
  os.remove(os.path.join(root, "scans", "toy", "report.html"))
  os.makedirs(os.path.join(root, "plots"))
  png = _png(os.path.join(root, "plots", "a.png"))
  doc = {"title": "Replication <1>", "intro": "What we checked & how.",
         "findings": [{"id": "basin", "title": "A basin", "claim": "ASR is low near 0", "verdict": "reproduced",
                       "criterion": "ASR(0) <= 5", "why": "measured 0 < 5", "numbers": {"asr0": 0.0, "ends": [90, 95],
                                                                                         "note": "fine"},
                       "plots": ["plots/a.png"], "results": {"toy scan": "scans/toy", "nothing": "missing/dir"}},
                      {"id": "fewshot", "title": "Few-shot", "claim": "c", "verdict": "not reproduced",
                       "criterion": "k", "why": "w", "numbers": {}, "plots": [], "results": {"the study": "study"}},
                      {"id": "half", "title": "Half", "claim": "c", "verdict": "partly", "criterion": "k",
                       "why": "w", "numbers": {}, "plots": [], "results": {}}],
         "seconds": {"basin": 1.5}, "commands": ["python -m experiments.findings --out=x"]}
  json.dump(doc, open(os.path.join(root, "findings.json"), "w"))
  return root, png


def test_findings_page(scan_dir, tmp_path):
  d, png = _findings(tmp_path / "findings", scan_dir)
  page = _page(os.path.dirname(htmlreport.write_report(d)))
  _assert_self_contained(page)
  assert "Replication &lt;1&gt;" in page and "What we checked &amp; how." in page
  for verdict, cls in (("reproduced", "ok"), ("not reproduced", "bad"), ("partly", "partly")):
    assert f'<span class="badge verdict {cls}">{verdict}</span>' in page
  assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page
  assert 'href="scans/toy/report.html">toy scan</a>' in page and 'href="study/report.html">the study</a>' in page
  assert os.path.isfile(os.path.join(d, "scans", "toy", "report.html"))
  assert os.path.isfile(os.path.join(d, "study", "runs", "aligned", "random_1d", "report.html"))  # the study's own
  assert "nothing <code>missing/dir</code> (no results there)" in page
  assert "90, 95" in page and "ASR(0) &lt;= 5" in page and "python -m experiments.findings --out=x" in page


def test_bad_dir(tmp_path):
  with pytest.raises(ValueError, match="holds no summary.json"):
    htmlreport.write_report(str(tmp_path))
  assert htmlreport.kind_of(str(tmp_path)) is None


def _plot_cli(d):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run([sys.executable, "-m", "experiments.plot", f"--results={d}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)


def test_plot_cli_writes_reports(scan_dir, tmp_path):
  scan = _copy(scan_dir("1d"), tmp_path / "scan")
  os.remove(os.path.join(scan, "report.html"))
  os.remove(os.path.join(scan, "landscape.png"))
  os.remove(os.path.join(scan, "scan.json"))  # a dir written before scan.json: read from its old summary.json
  study = _study(tmp_path / "study", scan_dir)
  findings, _ = _findings(tmp_path / "findings", scan_dir)
  every_view = ["generations.jsonl", "arrays.npz", "summary.json", "landscape.png", "report.html"]
  for d, wrote in ((scan, every_view), (study, ["report.html"]), (findings, ["report.html"])):
    proc = _plot_cli(d)
    assert proc.returncode == 0, proc.stderr
    assert [os.path.basename(x.split(" ", 1)[1]) for x in proc.stdout.splitlines()] == wrote, proc.stdout
    assert os.path.getsize(os.path.join(d, "report.html")) > 0
  os.makedirs(tmp_path / "empty")
  proc = _plot_cli(tmp_path / "empty")
  assert proc.returncode == 2, (proc.returncode, proc.stderr)
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "holds no summary.json" in lines[0], proc.stderr


def test_reports_render_without_jax(scan_dir, tmp_path):
  """The renderers need no JAX: a findings page (with its study and scan pages) and a scan's plot, in a fresh process."""
  d, _ = _findings(tmp_path / "findings", scan_dir)
  scan = os.path.join(d, "scans", "toy")
  code = f"""
import os, sys
from jaxscape.reports import htmlreport, plot, report
htmlreport.write_report({d!r})
os.remove(os.path.join({scan!r}, "landscape.png"))
plot.plot_results({scan!r})
loaded = sorted(m for m in sys.modules if m == "jax" or m.startswith(("jax.", "jaxlib", "flax", "optax")))
assert not loaded, loaded
print("ok")
"""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
  assert os.path.isfile(os.path.join(d, "study", "report.html")) and os.path.isfile(os.path.join(scan, "report.html"))
  assert os.path.getsize(os.path.join(scan, "landscape.png")) > 0
