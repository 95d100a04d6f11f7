"""Judge an existing results dir with a classifier judge, without decoding again.

  python -m experiments.judge --results=DIR --judge=PATH --judge_format=yes-no [--overwrite]

Stores the judge's scores in DIR/judges/<name>/, then rewrites DIR's views once
(``jaxscape.views.write_views``): every generation of DIR/generations.jsonl gets the judge's
p(unsafe) and label, DIR/summary.json its judged ASR, VISAGE and agreement with the keyword judge
(under the judge's name), and the plots and report.html show it. Resumable: an interrupted run
continues where it stopped. A dir that already holds this judge's scores is refused without
--overwrite; other judges' results and the keyword results are never touched.
"""

import time

_T_START = time.perf_counter()

from absl import flags  # noqa: E402

from experiments import common  # noqa: E402

flags.DEFINE_string("results", None, "results dir of experiments.run_grid")
flags.DEFINE_bool("overwrite", False, "replace this judge's scores if the dir holds them already")
flags.DEFINE_bool("progress", True, "progress bar")
common.define_judge_flags(default_judge=None)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS.results:
    raise common.UserError("--results is required")
  if FLAGS.judge in (None, "", "keyword"):
    raise common.UserError("--judge=PATH (a judge checkpoint) is required; keyword results are in every results dir")
  from jaxscape import judge as judge_lib
  from jaxscape import views
  judge_lib.read_generations(FLAGS.results)  # before loading the judge: a dir without generations fails fast
  judge = common.judge_from_flags()
  entry = judge_lib.judge_results(FLAGS.results, judge, existing="overwrite" if FLAGS.overwrite else "refuse",
                                  progress=FLAGS.progress)
  views.write_views(FLAGS.results)
  print(common.judge_line(entry, judge.name) + f" (whole process {time.perf_counter() - _T_START:.1f}s) -> "
        f"{FLAGS.results}")


if __name__ == "__main__":
  common.run(main)
