"""Judge an existing results dir with a classifier judge or by coherence, without decoding again.

  python -m experiments.judge --results=DIR --judge=PATH --judge_format=yes-no [--overwrite]
  python -m experiments.judge --results=DIR --judge=coherence --model=THETA0 [--coherence_threshold=X]

``--judge=coherence`` scores every generation's NLL per token under the scan's model θ₀ (checked
against the run's fingerprint; the prompt format and system prompt come from the dir) and labels
it refusal, coherent or incoherent (``jaxscape.studies.coherence``); its store is DIR/coherence/.

Stores the judge's scores in DIR/judges/<name>/, then rewrites DIR's views once
(``jaxscape.studies.views.write_views``): every generation of DIR/generations.jsonl gets the judge's
p(unsafe) and label, DIR/summary.json its judged ASR, VISAGE and agreement with the keyword judge
(under the judge's name), and the plots and report.html show it. Resumable: an interrupted run
continues where it stopped. A dir that already holds this judge's scores is refused without
--overwrite; other judges' results and the keyword results are never touched.
"""

import dataclasses
import time

_T_START = time.perf_counter()

from absl import flags  # noqa: E402

from experiments import common  # noqa: E402

flags.DEFINE_string("results", None, "results dir of experiments.run_grid")
flags.DEFINE_bool("overwrite", False, "replace this judge's scores if the dir holds them already")
flags.DEFINE_bool("progress", True, "progress bar")
common.define_judge_flags(default_judge=None)
common.define_coherence_flags()
flags.DEFINE_string("model", None, "--judge=coherence: the scan's model θ₀ (its fingerprint is checked)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS.results:
    raise common.UserError("--results is required")
  if FLAGS.judge in (None, "", "keyword"):
    raise common.UserError("--judge=PATH (a judge checkpoint) or --judge=coherence is required; keyword results "
                           "are in every results dir")
  from jaxscape.studies import judge_store
  from jaxscape.studies import views
  if FLAGS.judge == "coherence":
    return _coherence()
  judge_store.read_generations(FLAGS.results)  # before loading the judge: a dir without generations fails fast
  judge = common.judge_from_flags()
  entry = judge_store.judge_results(FLAGS.results, judge, existing="overwrite" if FLAGS.overwrite else "refuse",
                                    progress=FLAGS.progress)
  views.write_views(FLAGS.results)
  print(common.judge_line(entry, judge.name) + f" (whole process {time.perf_counter() - _T_START:.1f}s) -> "
        f"{FLAGS.results}")


def _coherence():
  from jaxscape.studies import coherence_results
  from jaxscape.studies import views
  coherence_results.read_dir(FLAGS.results)  # before loading a model: a dir without generations fails fast
  settings = common.coherence_settings()
  if FLAGS.coherence_calibration == flags.FLAGS["coherence_calibration"].default:
    # the calibration set the scan named, when it named one (e.g. the toy's own benign set)
    scan_flags = coherence_results.read_dir(FLAGS.results).meta.get("flags") or {}
    if scan_flags.get("coherence_calibration") and FLAGS["coherence_calibration"].using_default_value:
      settings = dataclasses.replace(settings, source=scan_flags["coherence_calibration"])
  reference, theta0 = common.coherence_reference()
  coherence_results.score_dir(FLAGS.results, reference, settings, theta0=theta0,
                      existing="overwrite" if FLAGS.overwrite else "refuse", progress=FLAGS.progress)
  summary = views.write_views(FLAGS.results)
  print(common.coherence_line(summary) + f" (whole process {time.perf_counter() - _T_START:.1f}s) -> {FLAGS.results}")


if __name__ == "__main__":
  common.run(main)
