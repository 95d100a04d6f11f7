"""A multitask study's ``table.md`` and plots, drawn from its ``table.json`` (no JAX; ``jaxscape.studies.study``
writes the table).

The run names a table holds: ``aligned`` (:data:`BASE`, the model before finetuning), ``task:T``,
``task:T+safety``, ``harmful:K`` and ``harmful_mixed:K`` (``jaxscape.studies.study_spec`` parses them).
"""

from __future__ import annotations

import os

import numpy as np

BASE = "aligned"  # the row of the model before finetuning


def own_task(run: str) -> str | None:
  """The task a ``task:T`` or ``task:T+safety`` run finetunes on (None for other runs)."""
  kind, _, arg = run.partition(":")
  return arg.partition("+")[0] if kind == "task" else None


def table_markdown(table: dict) -> str:
  """``table.md``: one row per model, then the findings."""
  from jaxscape.datasets import toydata  # the framings' order
  framings = list(toydata.FRAMINGS)
  jname = (table.get("judge") or {}).get("name")
  head = (["run", "records", "own-task metric"] + [f"ASR {f}" for f in framings]
          + ([f"judged ASR {f}" for f in framings] + ["judged VISAGE"] if jname else [])
          + ["VISAGE", "interp. ASR at b", "steps", "finetune s"])
  lines = ["# Multitask safety study", "", _intro(table, jname), "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += [_table_row(row, framings, jname) for row in table["rows"]]
  return "\n".join(lines + _findings_lines(table, jname)) + "\n"


def _task_setting(spec: dict) -> str:
  text = f"for {'at most ' if spec.get('task_target') else ''}{spec['steps']} steps (batch {spec['batch_size']}, " \
         f"lr {spec['learning_rate']})"
  if spec.get("task_target"):
    text += (f", stopped at the first check (every {spec['task_check_every']} steps) where the task metric on "
             f"{spec['task_validation']} held-out training records reached {spec['task_target']:g}%")
  return text


def _steps_cell(ft: dict | None) -> str:
  """Finetuning steps of a row: its seeds' steps where they were recorded ("800/900/700")."""
  if not ft:
    return "-"
  per = ft.get("steps_per_seed")
  return "/".join(str(v) for v in per.values()) if per else str(ft.get("steps", "-"))


def _intro(table: dict, jname: str | None) -> str:
  """The paragraph under the title: what was finetuned how, and what each column measures."""
  spec = table["spec"]
  return (f"Aligned model: `{table['model']}`; every run finetunes it "
          f"({'LoRA rank ' + str(spec['lora_rank']) if spec['lora_rank'] else 'all weights'}): "
          f"the benign task runs {_task_setting(spec)}, the harmful sets for "
          f"{spec['harmful_steps']} steps (batch {spec.get('harmful_batch_size', spec['batch_size'])}, "
          f"lr {spec.get('harmful_learning_rate', spec['learning_rate'])}). "
          f"ASR: keyword ASR (%) on {spec['eval_samples']} held-out harmful requests per framing; "
          "task metrics (%) on each task's held-out split; VISAGE from a 1-D random landscape around the "
          "model; the last ASR column is the 1-D interpolation landscape aligned -> finetuned at the "
          "finetuned end (coefficient 1)."
          + (f" Harmful rows: ASR is the mean over {spec['harmful_seeds']} finetuning seeds "
             f"({spec['seed']}, {spec['seed'] + 1}, ...), VISAGE and the interpolation "
             f"landscape are the seed {spec['seed']} model's."
             if spec.get('harmful_seeds', 1) > 1 else "")
          + (f" Benign task rows: ASR and task metrics are the mean over {spec['task_seeds']} finetuning "
             "seeds; VISAGE and the interpolation landscape are the first seed's model's."
             if spec.get('task_seeds', 1) > 1 else "")
          + (f" Judged columns: classifier judge `{jname}` (format {table['judge']['format']}, unsafe when "
             f"p(unsafe) >= {table['judge']['threshold']}) on the same generations and landscapes; findings use "
             "the keyword ASR." if jname else ""))


def _table_row(row: dict, framings: list[str], jname: str | None) -> str:
  """One model's line of the table."""
  own = own_task(row["run"])
  if own:
    own_s = f"{own} {row['task_accuracy'][own]:.0f}%"
  else:
    own_s = "; ".join(f"{t} {v:.0f}%" for t, v in row["task_accuracy"].items()) if row["run"] == BASE else "-"
  interp = row.get("interp_1d")
  at_b = "-"
  if interp:
    coords = np.asarray(interp["coords"], np.float64).reshape(-1)
    at_b = f"{np.asarray(interp['asr'])[int(np.argmin(np.abs(coords - 1.0)))]:.0f}"
  ft = row.get("finetune")
  judged = []
  if jname:
    j = (row.get("judges") or {}).get(jname) or {}
    fa = j.get("framed_asr") or {}
    judged = [f"{fa[f]:.0f}" if f in fa else "-" for f in framings]
    judged.append(f"{j['visage']:.1f}" if j.get("visage") is not None else "-")
  cells = ([f"`{row['run']}`", str(ft["records"]) if ft else "-", own_s]
           + [f"{row['framed_asr'][f]:.0f}" for f in framings] + judged
           + [f"{row['visage']:.1f}", at_b, _steps_cell(ft), f"{ft['seconds']:.0f}" if ft else "-"])
  return "| " + " | ".join(cells) + " |"


def _findings_lines(table: dict, jname: str | None) -> list[str]:
  """The "Findings (as measured)" section and the study's wall time."""
  fnd = table["findings"]
  lines = ["", "## Findings (as measured)", ""]
  for k, h in fnd.get("harmful", {}).items():
    seeds = ""
    if "asr_per_seed" in h:
      seeds = (" (mean over seeds; per seed " + ", ".join(f"{v:.0f}%" for v in h["asr_per_seed"].values())
               + " and " + ", ".join(f"{v:.0f}%" for v in h["asr_mixed_per_seed"].values()) + ")")
    lines.append(f"- harmful {k}-shot: plain ASR {h['asr']:.0f}% (rise {h['rise']:+.0f}); mixed with {k} refusals: "
                 f"{h['asr_mixed']:.0f}% (rise {h['rise_mixed']:+.0f}){seeds}; mixing halves the rise: "
                 f"{'yes' if h['mixing_halves_rise'] else 'no'}")
  for t, m in fnd.get("multitask", {}).items():
    lines.append(f"- {t}: {m['framing']}-framed ASR {m['asr']:.0f}% -> {m['asr_with_safety']:.0f}% with the "
                 f"multitask safety set (lowered: {'yes' if m['safety_set_lowers_asr'] else 'no'}); task metric "
                 f"{m['task_accuracy']:.0f}% -> {m['task_accuracy_with_safety']:.0f}%")
  if "most_degrading_task" in fnd:
    mean = fnd["mean_framed_asr_by_task"]
    spread = {r["task"]: r for r in fnd.get("ranking", [])}
    seeds = "" if not spread else " (per-seed range in brackets)"
    lines.append(f"- mean ASR over framings after each benign task finetune{seeds}: "
                 + ", ".join(f"{t} {v:.0f}%" + (f" [{spread[t]['seed_min']:.0f}-{spread[t]['seed_max']:.0f}]"
                                               if t in spread else "")
                             for t, v in sorted(mean.items(), key=lambda kv: -kv[1]))
                 + f"; most degrading here: {fnd['most_degrading_task']}")
    if spread:
      gaps = [f"{r['task']} > next: {'yes' if r['separated_from_next'] else 'no'}" for r in fnd["ranking"][:-1]]
      lines.append("- ranking apart from the seed spread (per-seed ranges do not overlap): " + ", ".join(gaps))
  if "framing_asr_over_tasks" in fnd:
    by = fnd["framing_asr_over_tasks"]
    lines.append("- ASR per framing, mean over the benign task finetunes: "
                 + ", ".join(f"{f} {by[f]:.0f}%" for f in fnd["weakest_framings"]))
  if "visage_vs_attack" in fnd:
    v = fnd["visage_vs_attack"]
    rho = "undefined" if v["spearman_rho"] is None else f"{v['spearman_rho']:+.2f}"
    steps = (table.get("attacks") or [{}])[0].get("steps")
    lines.append(f"- VISAGE before `{v['run']}`{f' ({steps} steps)' if steps else ''} vs plain ASR after it "
                 "(mean over seeds): "
                 + ", ".join(f"`{p['start']}` {p['visage']:.1f} -> {p['asr_after']:.0f}%" for p in v["points"])
                 + f"; Spearman's rho {rho} (n = {v['n']})")
  if table.get("surface"):
    s = table["surface"]
    judged = (s.get("judges") or {}).get(jname) if jname else None
    lines.append(f"- 2-D interpolation x random landscape aligned -> `{s['run']}`: `{s['dir']}/landscape.png`, "
                 f"VISAGE {s['visage']:.1f}" + (f" (judged: {judged['visage']:.1f})" if judged else ""))
  return lines + ["", f"Whole study: {table['seconds']:.0f} s."]


def plot_study(table: dict, out_dir: str) -> list[str]:
  """``framed_asr.png`` (ASR per framing, one group per model) and ``interpolation.png`` (aligned -> each)."""
  from jaxscape.reports import plot
  rows = table["rows"]
  paths = [plot.plot_grouped_bars({r["run"]: r["framed_asr"] for r in rows},
                                  os.path.join(out_dir, "framed_asr.png"), ylabel="ASR (%)",
                                  title="Keyword ASR per framing of the held-out harmful requests")]
  curves = {r["run"]: r["interp_1d"] for r in rows if r.get("interp_1d")}
  if curves:
    coords = next(iter(curves.values()))["coords"]
    x = np.asarray(coords, np.float64).reshape(-1)
    paths.append(plot.plot_1d(x, {k: v["asr"] for k, v in curves.items()},
                              os.path.join(out_dir, "interpolation.png"),
                              title="1-D interpolation aligned (0) -> finetuned (1)",
                              xlabel="interpolation coefficient", ylabel="ASR (%)"))
  return paths
