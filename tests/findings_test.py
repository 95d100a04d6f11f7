"""The findings: their jobs, their criteria on hand-made results, and the runner end to end at smoke size."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from jaxscape.datasets import taskdata, toydata
from experiments import findings_runner as runner
from jaxscape.reports import study_table
from jaxscape.studies import findings, study_claims

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "experiments/configs/findings/smoke"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
  monkeypatch.chdir(REPO)  # flagfile paths are relative to the repository root


def test_step_sharpness_tells_a_step_from_a_ramp():
  ramp = np.linspace(0, 100, 11)
  rise, frac = findings.step_sharpness(ramp, 0, 10)
  assert rise == 100 and frac == pytest.approx(0.5)
  step = np.array([0, 0, 90, 95, 100, 100, 100, 100, 100, 100, 100.0])
  assert findings.step_sharpness(step, 1, 10)[1] == 1.0
  assert findings.step_sharpness(step[::-1], 9, 0)[1] == 1.0  # the left side, walking down the indices
  assert findings.step_sharpness(np.zeros(5), 2, 4) == (0.0, 0.0)


def test_jobs_are_shared_where_the_flags_agree():
  names = [j.name for j in runner.jobs()]
  assert names == ["basin", "study", "system_prompt_default", "system_prompt_empty", "system_prompt_aoa"]
  assert sorted(f.number for f in findings.FINDINGS) == list(range(1, 10))
  full = sorted(os.listdir(findings.CONFIG_DIR))
  smoke = sorted(os.listdir(SMOKE))
  assert [f for f in full if f.endswith(".flags")] == [f for f in smoke if f != "study.flags"]
  assert [j.name for j in runner.jobs(config_dir=SMOKE)] == names
  # The study job of the full set is README's study.
  assert runner.expand_flagfile(f"{findings.CONFIG_DIR}/7_task_ranking.flags") == runner.expand_flagfile(
      "experiments/configs/toy_multitask.flags")


def test_jobs_of_one_name_with_other_flags_are_refused(tmp_path):
  (tmp_path / "a.flags").write_text("--steps=2\n")
  (tmp_path / "b.flags").write_text("# other\n--steps=3\n")
  fs = (findings.Finding(1, "a", "A", "a.", (findings.Job("x", "m", "a.flags"),)),
        findings.Finding(2, "b", "B", "b.", (findings.Job("x", "m", "b.flags"),)))
  with pytest.raises(ValueError, match="job 'x'"):
    runner.jobs(fs, config_dir=str(tmp_path))
  (tmp_path / "c.flags").write_text("--flagfile=" + str(tmp_path / "c.flags") + "\n")
  with pytest.raises(ValueError, match="includes itself"):
    runner.expand_flagfile(str(tmp_path / "c.flags"))


def _scan(d, asr, capability=None, visage=50.0):
  os.makedirs(d, exist_ok=True)
  n = len(asr)
  x = np.linspace(-1, 1, n)
  s = {"kind": "1d_random", "coords": [[float(v)] for v in x], "asr": list(map(float, asr)), "visage": visage}
  if capability is not None:
    s["capability"] = list(map(float, capability))
  with open(os.path.join(d, "summary.json"), "w") as f:
    json.dump(s, f)


def _row(run, framed, tasks=None, visage=30.0, interp=None, per_seed=None):
  r = {"run": run, "framed_asr": {f: float(framed.get(f, framed.get("*", 0.0))) for f in toydata.FRAMINGS},
       "task_accuracy": {t: float((tasks or {}).get(t, 80.0)) for t in taskdata.TASKS}, "visage": visage,
       "finetune": None if run == study_table.BASE else {"records": 1, "seconds": 1.0}}
  if interp is not None:
    r["interp_1d"] = {"coords": [[0.0], [0.5], [1.0]], "asr": interp}
  if per_seed:
    r["framed_asr_per_seed"] = {s: {f: float(v) for f in toydata.FRAMINGS} for s, v in per_seed.items()}
  return r


def _results(root, *, basin, capability, prompts, task_means, visages_after):
  """A hand-made findings dir: the basin scan, three system-prompt scans and a study table."""
  _scan(os.path.join(root, "basin"), basin, capability)
  for k, a in prompts.items():
    _scan(os.path.join(root, f"system_prompt_{k}"), a)
  rows = [_row("aligned", {"*": 1.0}, visage=12.0),
          _row("harmful:100", {"*": 95.0}, visage=10.0, interp=[1.0, 50.0, 95.0], per_seed={"0": 90, "1": 100}),
          _row("harmful_mixed:100", {"*": 30.0}, visage=25.0, interp=[1.0, 10.0, 20.0], per_seed={"0": 20, "1": 40})]
  for t, (lo, hi) in task_means.items():
    rows.append(_row(f"task:{t}", {"*": (lo + hi) / 2}, per_seed={"0": lo, "1": hi}))
    rows.append(_row(f"task:{t}+safety", {"*": lo / 4}, per_seed={"0": lo / 5, "1": lo / 3}, visage=visages_after[t][0]))
  by = {r["run"]: r for r in rows}
  attacks = [{"start": "aligned", "run": "harmful:100", "framed_asr_per_seed": by["harmful:100"]["framed_asr_per_seed"],
              "framed_asr": by["harmful:100"]["framed_asr"]}]
  attacks += [{"start": f"task:{t}+safety", "run": "harmful:100",
               "framed_asr_per_seed": {"0": {f: v[1] for f in toydata.FRAMINGS}},
               "framed_asr": {f: v[1] for f in toydata.FRAMINGS}} for t, v in visages_after.items()]
  table = {"rows": rows, "findings": study_claims.findings(by, attacks), "spec": {"task_seeds": 2, "steps": 5}}
  os.makedirs(os.path.join(root, "study"), exist_ok=True)
  with open(os.path.join(root, "study", "table.json"), "w") as f:
    json.dump(table, f)


def test_criteria_on_hand_made_results(tmp_path):
  basin = [100, 100, 100, 100, 95, 80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 60, 95, 100, 100, 100, 100]  # a step both sides
  cap = [20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 90, 90, 85, 80, 75, 70, 60, 50, 40, 30, 20]  # a gradual decline
  prompts = {"default": basin, "empty": [min(100, a + 20) for a in basin], "aoa": [min(100, a + 2) for a in basin]}
  tasks = {"code": (80, 90), "translate": (60, 70), "summarize": (30, 40), "classify": (20, 30)}
  after = {"code": (35.0, 50.0), "translate": (30.0, 60.0), "summarize": (20.0, 70.0), "classify": (15.0, 80.0)}
  _results(str(tmp_path), basin=basin, capability=cap, prompts=prompts, task_means=tasks, visages_after=after)
  got = {f["number"]: f for f in findings.evaluate(str(tmp_path))}
  assert got[1]["verdict"] == findings.REPRODUCED, got[1]
  assert got[2]["verdict"] == findings.REPRODUCED, got[2]
  assert got[3]["verdict"] == findings.REPRODUCED and got[4]["verdict"] == findings.REPRODUCED
  assert got[5]["verdict"] == findings.PARTLY and "not against aoa" in got[5]["why"]  # AOA only 2 points worse
  assert got[6]["verdict"] == findings.REPRODUCED  # VISAGE 12, 35, 30, 20, 15 vs ASR 95, 50, 60, 70, 80
  assert got[6]["numbers"]["n"] == 5 and got[6]["numbers"]["Spearman's rho"] == -1.0
  assert got[7]["verdict"] == findings.REPRODUCED  # code > translate, apart from summarize's seeds
  assert got[8]["verdict"] == findings.NOT  # every framing equal here: ties keep the framings' order
  assert got[9]["verdict"] == findings.REPRODUCED
  for f in got.values():
    assert f["criterion"] and all(os.path.isfile(tmp_path / p) for p in f["plots"]), f
  # A ramp instead of a step, a flat capability, code behind summarize: the verdicts follow.
  ramp = [100 - 10 * i for i in range(10)] + [0] + [10 * i for i in range(1, 11)]
  tasks["summarize"] = (85, 95)
  _results(str(tmp_path), basin=ramp, capability=[80] * 21, prompts=prompts, task_means=tasks, visages_after=after)
  got = {f["number"]: f for f in findings.evaluate(str(tmp_path))}
  assert got[1]["verdict"] == findings.NOT and "1 point" in got[1]["why"]
  assert got[2]["verdict"] == findings.NOT and "declines by 0.0" in got[2]["why"]
  assert got[7]["verdict"] == findings.NOT and "summarize > code" in got[7]["why"]


def _cli(*args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run([sys.executable, "-m", "experiments.findings", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)


def test_findings_cli_smoke_end_to_end_resumes_and_publishes(tmp_path):
  out = tmp_path / "findings"
  proc = _cli(f"--config_dir={SMOKE}", f"--out={out}", f"--publish={tmp_path / 'docs'}")
  assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
  md = (out / "FINDINGS.md").read_text()
  for n in range(1, 10):
    assert re.search(rf"^## {n}\. .+: (reproduced|partly|not reproduced)$", md, re.M), n
  data = json.loads((out / "findings.json").read_text())
  assert [f["number"] for f in data["findings"]] == list(range(1, 10))
  assert set(data["seconds"]) >= {"total", "study", "rest"} and data["calibration"]["seeds"] == 2
  assert (out / "report.html").is_file() and (out / "study" / "report.html").is_file()
  assert (out / "basin" / "report.html").is_file() and "capability" in json.loads((out / "basin/summary.json").read_text())
  aoa = json.loads((out / "system_prompt_aoa" / "summary.json").read_text())
  assert "AOA" in aoa["flags"]["system_prompt"]
  docs = tmp_path / "docs"
  page = (docs / "FINDINGS.md").read_text()
  for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", page):
    assert (docs / link).is_file(), link
  # Rerun: every job reused, the same verdicts.
  proc = _cli(f"--config_dir={SMOKE}", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count(": reused") == 5
  assert [f["verdict"] for f in json.loads((out / "findings.json").read_text())["findings"]] == [
      f["verdict"] for f in data["findings"]]
  proc = _cli(f"--config_dir={SMOKE}", f"--out={out}", "--evaluate_only")
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_findings_cli_bad_input_is_one_line(tmp_path):
  proc = _cli(f"--config_dir={tmp_path}/none", f"--out={tmp_path}/f")
  assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "does not exist" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "f").exists()
  proc = _cli(f"--config_dir={SMOKE}", f"--out={tmp_path}/f", "--evaluate_only")
  assert proc.returncode == 2 and "no finished job" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
