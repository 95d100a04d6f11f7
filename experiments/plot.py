"""Redraw the plots of a results dir from its summary.json.

  python -m experiments.plot --results=DIR
"""

import os

from absl import flags

from experiments import common

flags.DEFINE_string("results", None, "results directory of a scan (holds summary.json)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from jaxscape import plot
  if not FLAGS.results:
    raise common.UserError("--results is required")
  if not os.path.isfile(os.path.join(FLAGS.results, "summary.json")):
    raise common.UserError(f"{FLAGS.results} holds no summary.json")
  for path in plot.plot_results(FLAGS.results) or []:
    print(f"wrote {path}")


if __name__ == "__main__":
  common.run(main, compiles=False)  # numpy + matplotlib only
