"""Rewrite the views of a results dir: its plots and report.html (a scan's every view, from its stores).

  python -m experiments.plot --results=DIR

DIR is a scan's results dir (every view rebuilt from its stores by ``jaxscape.studies.views.write_views``:
generations.jsonl, arrays.npz, summary.json, landscape.png, report.html; a copy of the views alone,
without points/, gets its plot and report.html redrawn from its summary.json), a study dir
(table.json: its table.md, plots and report.html) or a findings dir (findings.json: report.html
only); a study's or findings dir's report.html comes with the reports of the results dirs it links
where they are missing.
"""

import os

from absl import flags

from experiments import common

flags.DEFINE_string("results", None, "results directory: a scan (summary.json), a study (table.json) or a "
                    "findings dir (findings.json)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from jaxscape.reports import htmlreport
  if not FLAGS.results:
    raise common.UserError("--results is required")
  kind = htmlreport.kind_of(FLAGS.results)
  if kind is None and not os.path.isfile(os.path.join(FLAGS.results, "scan.json")):
    raise common.UserError(f"{FLAGS.results} holds no summary.json, table.json or findings.json")
  if kind in (None, "scan"):
    from jaxscape.core import results
    from jaxscape.studies import views
    if results.load_points(FLAGS.results):  # the stores: every view, rebuilt from them
      views.write_views(FLAGS.results)
      for name in views.VIEW_FILES:
        print(f"wrote {os.path.join(FLAGS.results, name)}")
      return
    from jaxscape.reports import plot
    for path in plot.plot_results(FLAGS.results) or []:
      print(f"wrote {path}")
  elif kind == "study":
    import sys

    from jaxscape.studies import study
    try:
      for path in study.redraw(FLAGS.results):
        print(f"wrote {path}")
    except ValueError as e:  # the report needs less of table.json than table.md does
      print(f"warning: kept table.md and the plots: {e}", file=sys.stderr)
  print(f"wrote {htmlreport.write_report(FLAGS.results)}")


if __name__ == "__main__":
  common.run(main, compiles=False)  # runs no JAX program
