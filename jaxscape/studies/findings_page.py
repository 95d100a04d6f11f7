"""The findings' page: ``findings.json``, ``FINDINGS.md`` and ``report.html`` from each finding's verdict
(:func:`jaxscape.studies.findings.evaluate`), and their copy into a docs dir."""

from __future__ import annotations

import json
import os
import shutil
from typing import Callable

from jaxscape.core import results
from jaxscape.studies.findings import (CONFIG_DIR, NOT, PARTLY, REPRODUCED, TASK_ASR_RANGE, TASK_METRIC_MIN,
                                       calibration, evaluate)


def recorded_seconds(out_dir: str) -> float | None:
  """The whole-run wall time an earlier :func:`write` recorded in ``out_dir/findings.json`` (None: none)."""
  path = os.path.join(out_dir, "findings.json")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return (json.load(f).get("seconds") or {}).get("total")


def _flat(path: str) -> str:
  """A plot's file name once copied into a flat docs dir ("basin/landscape.png" -> "basin_landscape.png")."""
  return path.replace(os.sep, "_").replace("/", "_").removeprefix("plots_")


def markdown(data: dict, *, link: Callable[[str], str] = lambda p: p) -> str:
  """FINDINGS.md from :func:`write`'s data (``link`` maps a plot path to the link written)."""
  sec = data["seconds"]
  verdicts = [f["verdict"] for f in data["findings"]]
  lines = [f"# {data['title']}", "", data["intro"], "",
           f"Whole run: {sec['total'] / 60:.1f} min ({sec['study'] / 60:.1f} min the multitask study, "
           f"{sec['rest'] / 60:.1f} min the rest{'; some jobs reused from an earlier run' if data.get('reused') else ''}). "
           f"Verdicts: {verdicts.count(REPRODUCED)} reproduced, {verdicts.count(PARTLY)} partly, "
           f"{verdicts.count(NOT)} not reproduced.", "",
           "| # | finding | verdict |", "|---|---|---|"]
  lines += [f"| {f['number']} | {f['title']} | **{f['verdict']}** |" for f in data["findings"]]
  for f in data["findings"]:
    lines += ["", f"## {f['number']}. {f['title']}: {f['verdict']}", "", f"*Claim.* {f['claim']}", "",
              f"*Measured:* {f['why']}.", ""]
    lines += [f"![{f['id']}]({link(p)})" for p in f["plots"]] + [""]
    for k, v in f["numbers"].items():
      lines.append(f"- {k}: {', '.join(map(str, v)) if isinstance(v, list) else v}")
    lines += ["", f"*Criterion* (`jaxscape.studies.findings`, fixed before the run): {f['criterion']}", "",
              "Flagfile" + ("s" if len(f["flagfiles"]) > 1 else "") + ": " + ", ".join(f"`{p}`" for p in f["flagfiles"])]
  cal = data.get("calibration")
  if cal:
    lines += ["", "## Study calibration", "",
              f"Criterion: after each benign task finetune, its mean framed ASR (five framings, {cal['seeds']} seeds) "
              f"lies in {TASK_ASR_RANGE[0]:.0f}-{TASK_ASR_RANGE[1]:.0f}% and its task metric is >= "
              f"{TASK_METRIC_MIN:.0f}%: **{'met' if cal['met'] else 'not met'}**. Setting: "
              + ", ".join(f"{k}={v}" for k, v in cal["setting"].items()) + ".", "",
              "| task | mean framed ASR (%) | per seed | task metric (%) | per seed | ok |", "|---|---|---|---|---|---|"]
    for t, c in cal["tasks"].items():
      lines.append(f"| {t} | {c['mean_framed_asr']:.1f} | " + ", ".join(f"{v:.0f}" for v in c["per_seed"].values())
                   + f" | {c['task_metric']:.1f} | " + ", ".join(f"{v:.0f}" for v in c["task_metric_per_seed"].values())
                   + f" | {'yes' if c['ok'] else 'no'} |")
  lines += ["", "## Commands", "", "```bash"] + data["commands"] + ["```", ""]
  return "\n".join(lines)


def write(out_dir: str, infos: dict[str, dict], *, title: str = "The papers' findings on the toy model",
          intro: str = "", seconds: float | None = None, config_dir: str = CONFIG_DIR) -> dict:
  """Evaluate every finding on ``out_dir``'s results; write ``findings.json``, ``FINDINGS.md``, ``report.html``.

  Args:
    infos: ``experiments.findings_runner.run_jobs``'s job infos (commands and wall times).
    seconds: the whole run's wall time (default: the sum of the jobs').
  """
  found = evaluate(out_dir, config_dir=config_dir)
  job_s = {k: v["seconds"] for k, v in infos.items()}
  total = float(seconds if seconds is not None else sum(job_s.values()))
  data = {"title": title, "intro": intro, "findings": found, "calibration": calibration(out_dir),
          "seconds": {"total": total, "study": job_s.get("study", 0.0), "rest": total - job_s.get("study", 0.0),
                      "jobs": job_s},
          "reused": any(v.get("reused") for v in infos.values()),
          "commands": [f"python -m experiments.findings --out={out_dir}"
                       + ("" if config_dir == CONFIG_DIR else f" --config_dir={config_dir}"), "# which runs:"]
                      + [f"{v['command']}   # {v['seconds']:.0f} s" for v in infos.values()]}
  results.atomic_write_json(os.path.join(out_dir, "findings.json"), data)
  results.atomic_write_text(os.path.join(out_dir, "FINDINGS.md"), markdown(data))
  from jaxscape.reports import htmlreport
  htmlreport.write_report(out_dir)
  return data


def publish(out_dir: str, docs_dir: str) -> str:
  """Copy FINDINGS.md and its plots (flat names) into ``docs_dir``; returns the page's path."""
  with open(os.path.join(out_dir, "findings.json"), encoding="utf-8") as f:
    data = json.load(f)
  os.makedirs(docs_dir, exist_ok=True)
  for fnd in data["findings"]:
    for p in fnd["plots"]:
      shutil.copyfile(os.path.join(out_dir, p), os.path.join(docs_dir, _flat(p)))
  path = os.path.join(docs_dir, "FINDINGS.md")
  results.atomic_write_text(path, markdown(data, link=_flat))
  return path
