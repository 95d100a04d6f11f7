"""The multitask study: its findings logic, its table, and the CLI end to end (smoke size) with resume and bad input."""

import json
import os
import subprocess
import sys

import pytest

from jaxscape import testing
from jaxscape.datasets import registry, taskdata, toydata
from jaxscape.reports import study_table
from jaxscape.studies import study, study_claims, study_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _row(run, plain=0.0, framed=None, tasks=None):
  fa = {f: (framed or {}).get(f, 0.0) for f in toydata.FRAMINGS}
  fa["plain"] = plain
  return {"run": run, "framed_asr": fa, "task_accuracy": {t: (tasks or {}).get(t, 50.0) for t in taskdata.TASKS},
          "visage": 90.0, "finetune": None if run == study_table.BASE else {"records": 10, "seconds": 1.0},
          "interp_1d": None if run == study_table.BASE else {"coords": [[-0.1], [0.0], [1.0]], "asr": [0.0, 5.0, 70.0]}}


def test_findings_report_what_was_measured():
  rows = {r["run"]: r for r in [
      _row(study_table.BASE, plain=5.0),
      _row("harmful:100", plain=85.0), _row("harmful_mixed:100", plain=40.0),   # rise 80 -> 35: halved
      _row("harmful:10", plain=45.0), _row("harmful_mixed:10", plain=30.0),     # rise 40 -> 25: not halved
      _row("task:code", framed={"code": 60.0, "translate": 10.0}), _row("task:code+safety", framed={"code": 20.0}),
      _row("task:translate", framed={"translate": 30.0}), _row("task:translate+safety", framed={"translate": 30.0}),
  ]}
  for run, plains in (("harmful:100", (80.0, 90.0)), ("harmful_mixed:100", (60.0, 20.0))):  # means 85 and 40
    rows[run]["framed_asr_per_seed"] = {str(s): {**rows[run]["framed_asr"], "plain": p} for s, p in enumerate(plains)}
  f = study_claims.findings(rows)
  assert f["harmful"]["100"]["mixing_halves_rise"] is True and f["harmful"]["100"]["rise"] == 80.0
  assert f["harmful"]["100"]["asr_mixed_per_seed"] == {"0": 60.0, "1": 20.0} and "asr_per_seed" not in f["harmful"]["10"]
  assert f["harmful"]["10"]["mixing_halves_rise"] is False
  assert "50" not in f["harmful"]  # runs not made are not reported
  assert f["multitask"]["code"]["safety_set_lowers_asr"] is True
  assert f["multitask"]["translate"]["safety_set_lowers_asr"] is False  # equal is not lower
  assert f["most_degrading_task"] == "code"
  table = {"model": "m", "spec": {"steps": 1, "harmful_steps": 1, "batch_size": 2, "learning_rate": 0.1, "lora_rank": 0,
                                  "eval_samples": 3, "seed": 0, "harmful_seeds": 2},
           "rows": list(rows.values()), "findings": f, "surface": None, "seconds": 1.0}
  md = study_table.table_markdown(table)
  assert "| `harmful:100` | 10 | - | 85 |" in md and "| 70 |" in md  # interpolation ASR at coefficient 1
  assert "mixing halves the rise: yes" in md and "(lowered: no)" in md
  assert "(mean over seeds; per seed 80%, 90% and 60%, 20%)" in md and "mean over 2 finetuning seeds" in md


@pytest.mark.parametrize("bad", ["task:poetry", "task:code+extra", "harmful:7", "nonsense"])
def test_bad_run_names_are_refused(bad):
  with pytest.raises(ValueError, match="run"):
    study_spec.StudySpec(runs=(bad,), surface_run="")


def test_run_records():
  mixed = study_spec.run_records("task:code+safety")
  assert len(mixed) == len(registry.load("finetune/code_train")) + len(registry.load("finetune/multitask_safety"))
  assert study_spec.run_records("harmful_mixed:10") == registry.load("finetune/harmful_mixed_10")


def _cli(*args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run([sys.executable, "-m", "experiments.multitask_study", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def test_smoke_study_end_to_end_resumes_and_refuses_other_settings(tmp_path):
  out = tmp_path / "study"
  smoke = "--flagfile=experiments/configs/toy_multitask_smoke.flags"
  proc = _cli(smoke, f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("table.md", "table.json", "framed_asr.png", "interpolation.png", "surface_2d/summary.json",
               "runs/task_classify/model/model.safetensors", "runs/harmful_10/interp_1d/summary.json"):
    assert (out / name).exists(), name
  table = json.loads((out / "table.json").read_text())
  assert [r["run"] for r in table["rows"]] == ["aligned", "task:classify", "harmful:10"]
  assert set(table["rows"][1]["framed_asr"]) == set(toydata.FRAMINGS)
  # --harmful_seeds=2: the harmful row's ASR is the mean of two finetunes (seeds 0 and 1).
  harmful = table["rows"][2]
  per_seed = harmful["framed_asr_per_seed"]
  assert list(per_seed) == ["0", "1"] and not (out / "runs/harmful_10/model_seed1").exists()
  for f, v in harmful["framed_asr"].items():
    assert v == pytest.approx((per_seed["0"][f] + per_seed["1"][f]) / 2)
  # --task_seeds=2: the task row's ASR and task metrics are means over two finetunes, each stopped early at
  # the first check whose validation metric reached --task_target (or at --steps).
  task = table["rows"][1]
  assert list(task["framed_asr_per_seed"]) == ["0", "1"] and list(task["task_accuracy_per_seed"]) == ["0", "1"]
  assert set(task["finetune"]["steps_per_seed"]) == {"0", "1"} and 1 <= task["finetune"]["steps"] <= 3
  for t, v in task["task_accuracy"].items():
    assert v == pytest.approx(sum(s[t] for s in task["task_accuracy_per_seed"].values()) / 2)
  # --attack_run=harmful:10 --attack_steps=1 from aligned and task:classify: two fresh 1-step finetunes each.
  attacks = {a["start"]: a for a in table["attacks"]}
  for a in attacks.values():
    assert a["steps"] == 1 and "reused" not in a and list(a["framed_asr_per_seed"]) == ["0", "1"]
  v = table["findings"]["visage_vs_attack"]
  assert v["n"] == 2 and [p["start"] for p in v["points"]] == ["aligned", "task:classify"]
  assert (out / "report.html").is_file() and not (out / "attacks" / "task_classify_seed0").exists()
  before = (out / "table.json").read_text()
  # Rerun: every finished run is reused (no finetuning), same table apart from timings.
  proc = _cli(smoke, f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count(": reused") == 5  # 3 rows, 2 attacks
  strip = lambda t: {k: v for k, v in json.loads(t).items() if k != "seconds"}  # noqa: E731
  assert strip((out / "table.json").read_text()) == strip(before)
  # Other settings in the same dir: one-line refusal, nothing overwritten.
  proc = _cli(smoke, f"--out={out}", "--steps=4")
  assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "steps" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1
  assert strip((out / "table.json").read_text()) == strip(before)
  # --judge: the reused rows are judged from their stored generations and landscape dirs; judged columns.
  judge_dir = testing.make_tiny_judge(str(tmp_path / "judge"), "yes-no", seed=3)
  proc = _cli(smoke, f"--out={out}", f"--judge={judge_dir}", "--judge_format=yes-no", "--judge_name=tiny")
  assert proc.returncode == 0, proc.stderr[-3000:]
  judged = json.loads((out / "table.json").read_text())
  assert judged["judge"]["name"] == "tiny" and judged["surface"]["judges"]["tiny"]["visage"] is not None
  for old, row in zip(table["rows"], judged["rows"]):
    assert row["framed_asr"] == old["framed_asr"] and row["visage"] == old["visage"]  # keyword columns unchanged
    j = row["judges"]["tiny"]
    assert set(j["framed_asr"]) == set(toydata.FRAMINGS) and isinstance(j["visage"], float)
    assert j["random_1d"]["visage"] == j["visage"]
  assert list(judged["rows"][2]["judges"]["tiny"]["framed_asr_per_seed"]) == ["0", "1"]
  assert "tiny" in json.loads((out / "runs/harmful_10/interp_1d/summary.json").read_text())["judges"]
  md = (out / "table.md").read_text()
  assert "judged ASR plain" in md and "judged VISAGE" in md and "classifier judge `tiny`" in md


def test_cli_bad_run_is_one_line(tmp_path):
  proc = _cli("--flagfile=experiments/configs/toy_multitask_smoke.flags", f"--out={tmp_path}/s", "--runs=task:poetry")
  assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "task:poetry" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1
