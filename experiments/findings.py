"""The papers' findings on the toy model, each reproduced by a flagfile of experiments/configs/findings/.

  python -m experiments.findings --out=results/findings [--publish=docs/findings]

Runs every finding's jobs (run_grid / multitask_study, each in its own process, resumably: a job
whose command finished is reused, an interrupted one resumes), applies each finding's criterion
(``jaxscape.studies.findings``, the registry and criteria; the runner that starts the jobs is
``experiments.findings_runner.run``) and writes DIR/FINDINGS.md, DIR/findings.json, DIR/plots/ and
DIR/report.html. --publish copies FINDINGS.md and its plots into a docs dir.
"""

from absl import flags

from experiments import common
from experiments.findings_runner import cpu_description, jobs, recorded_jobs, run
from jaxscape.studies import findings_page

flags.DEFINE_string("out", None, "findings directory (finished jobs inside it are reused)")
flags.DEFINE_string("publish", None, "also copy FINDINGS.md and its plots into this dir (e.g. docs/findings)")
flags.DEFINE_string("config_dir", "experiments/configs/findings", "dir of the findings' flagfiles "
                    "(its smoke/ subdir: the same at smoke size)")
flags.DEFINE_bool("evaluate_only", False, "only apply the criteria to the results already in --out")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS.out:
    raise common.UserError("--out is required")
  jobs(config_dir=FLAGS.config_dir)  # a broken flagfile is refused before anything runs
  intro = (f"Each finding below was reproduced by `python -m experiments.findings --out={FLAGS.out}` on the embedded "
           f"toy model (`checkpoints/toy-chat`), on {cpu_description()}. Verdicts follow the criteria in "
           "`jaxscape/studies/findings.py`, quoted under each finding; the numbers are what that run measured.")
  if FLAGS.evaluate_only:
    infos = recorded_jobs(FLAGS.out, FLAGS.config_dir)
    data = findings_page.write(FLAGS.out, infos, intro=intro, config_dir=FLAGS.config_dir,
                               seconds=findings_page.recorded_seconds(FLAGS.out))  # the run's own wall time, kept
  else:
    try:
      data = run(FLAGS.out, config_dir=FLAGS.config_dir, intro=intro)
    except RuntimeError as e:
      raise common.UserError(str(e)) from None
  for f in data["findings"]:
    print(f"{f['number']}. {f['title']}: {f['verdict']} ({f['why']})")
  print(f"wrote {FLAGS.out}/FINDINGS.md, findings.json, report.html ({data['seconds']['total'] / 60:.1f} min)")
  if FLAGS.publish:
    print(f"wrote {findings_page.publish(FLAGS.out, FLAGS.publish)}")


if __name__ == "__main__":
  common.run(main, compiles=False)  # the jobs compile in their own processes
