"""The findings runner: each finding's jobs (run_grid / multitask_study) in their own ``python -m``
processes, resumably, then the criteria applied (``jaxscape.studies.findings``). The CLI is
``experiments.findings``; this module defines no flags, so tests and other code import it freely.
"""

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Callable

from jaxscape.core import results
from jaxscape.errors import InputError
from jaxscape.studies import findings as findings_lib
from jaxscape.studies import findings_page


# ----------------------------------------------------------------- the runner: each job in its own process


def expand_flagfile(path: str, _seen: tuple[str, ...] = ()) -> list[str]:
  """The flags of a flagfile, nested ``--flagfile=`` lines expanded (paths relative to the cwd)."""
  if path in _seen:
    raise InputError(f"flagfile {path} includes itself")
  if not os.path.isfile(path):
    raise InputError(f"flagfile {path} does not exist (run from the repository root)")
  out = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith(("#", "//")):
        continue
      if line.startswith("--flagfile="):
        out += expand_flagfile(line.split("=", 1)[1], _seen + (path,))
      else:
        out.append(line)
  return out


def jobs(findings: tuple[findings_lib.Finding, ...] = findings_lib.FINDINGS,
         config_dir: str = findings_lib.CONFIG_DIR) -> list[findings_lib.Job]:
  """The distinct jobs of ``findings`` in order; jobs of one name must expand to the same flags.

  ``config_dir`` holds the flagfiles (``experiments/configs/findings``; its ``smoke/`` subdir has
  the same files at smoke size, for CI).
  """
  seen: dict[str, tuple[findings_lib.Job, list[str]]] = {}
  for fnd in findings:
    for job in fnd.jobs:
      flags = [job.module] + expand_flagfile(os.path.join(config_dir, job.flagfile)) + list(job.extra)
      if job.name in seen:
        if seen[job.name][1] != flags:
          raise InputError(f"finding {fnd.number}: job {job.name!r} from {job.flagfile} expands to other flags than "
                           f"{seen[job.name][0].flagfile}; give it its own name")
        continue
      seen[job.name] = (job, flags)
  return [j for j, _ in seen.values()]


def run_jobs(out_dir: str, job_list: list[findings_lib.Job], *, config_dir: str = findings_lib.CONFIG_DIR,
             python: str = sys.executable,
             log: Callable[[str], None] = print) -> dict[str, dict]:
  """Run each job unless ``out_dir/<job>/job.json`` records the same command (and flagfile contents) finished.

  Returns the job infos.
  Each job runs in its own process with the current environment; its stdout/stderr go to
  ``out_dir/<job>.log``. A job that fails raises ``RuntimeError`` naming the job, the exit code
  and the log's last line (its earlier results stay, so a rerun resumes).
  """
  os.makedirs(out_dir, exist_ok=True)
  infos = {}
  for job in job_list:
    argv = job.argv(out_dir, config_dir, "python")
    flags = expand_flagfile(os.path.join(config_dir, job.flagfile)) + list(job.extra)
    record = os.path.join(out_dir, job.name, "job.json")
    if os.path.isfile(record):
      with open(record, encoding="utf-8") as f:
        info = json.load(f)
      if info.get("argv") == argv and info.get("flags") == flags:
        log(f"{job.name}: reused ({info['seconds']:.0f} s when it ran)")
        infos[job.name] = {**info, "reused": True}
        continue
    log(f"{job.name}: {shlex.join(argv)}")
    t0 = time.perf_counter()
    log_path = os.path.join(out_dir, f"{job.name}.log")
    with open(log_path, "w", encoding="utf-8") as lf:
      rc = subprocess.call([python] + argv[1:], stdout=lf, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if rc != 0:
      with open(log_path, encoding="utf-8", errors="replace") as lf:
        tail = [line.strip() for line in lf if line.strip()][-1:] or ["(no output)"]
      raise RuntimeError(f"job {job.name} exited with {rc} after {seconds:.0f} s: {tail[0]} (log: {log_path})")
    info = {"argv": argv, "flags": flags, "command": shlex.join(argv), "seconds": seconds,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    results.atomic_write_json(record, info)
    log(f"{job.name}: done in {seconds:.0f} s")
    infos[job.name] = {**info, "reused": False}
  return infos


def recorded_jobs(out_dir: str, config_dir: str = findings_lib.CONFIG_DIR) -> dict[str, dict]:
  """The ``job.json`` records of jobs that finished in ``out_dir`` (InputError naming a missing one)."""
  infos = {}
  for job in jobs(config_dir=config_dir):
    path = os.path.join(out_dir, job.name, "job.json")
    if not os.path.isfile(path):
      raise InputError(f"{out_dir} holds no finished job {job.name!r}; run without --evaluate_only first")
    with open(path, encoding="utf-8") as f:
      infos[job.name] = {**json.load(f), "reused": False}
  return infos


def run(out_dir: str, *, config_dir: str = findings_lib.CONFIG_DIR, python: str = sys.executable,
        log: Callable[[str], None] = print, intro: str = "") -> dict:
  """Run every finding's jobs into ``out_dir`` (reusing finished ones) and write the findings
  (``jaxscape.studies.findings_page.write``)."""
  t0 = time.perf_counter()
  infos = run_jobs(out_dir, jobs(config_dir=config_dir), config_dir=config_dir, python=python, log=log)
  ran = sum(v["seconds"] for v in infos.values())
  seconds = None if any(v["reused"] for v in infos.values()) else max(ran, time.perf_counter() - t0)
  return findings_page.write(out_dir, infos, intro=intro, seconds=seconds, config_dir=config_dir)


def cpu_description() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
  except OSError:
    name = ""
  return f"{name or platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores"
