"""Redraw the plots of a results dir from its summary.json, and write its report.html.

  python -m experiments.plot --results=DIR

DIR is a scan's results dir (plots redrawn, report.html written), a study dir (table.json: its
table.md and plots redrawn too) or a findings dir (findings.json: report.html only); a study's or
findings dir's report.html comes with the reports of the results dirs it links where they are missing.
"""

from absl import flags

from experiments import common

flags.DEFINE_string("results", None, "results directory: a scan (summary.json), a study (table.json) or a "
                    "findings dir (findings.json)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from jaxscape import htmlreport
  if not FLAGS.results:
    raise common.UserError("--results is required")
  kind = htmlreport.kind_of(FLAGS.results)
  if kind is None:
    raise common.UserError(f"{FLAGS.results} holds no summary.json, table.json or findings.json")
  if kind == "scan":
    from jaxscape import plot
    for path in plot.plot_results(FLAGS.results) or []:
      print(f"wrote {path}")
  elif kind == "study":
    import sys

    from jaxscape import study
    try:
      for path in study.redraw(FLAGS.results):
        print(f"wrote {path}")
    except ValueError as e:  # the report needs less of table.json than table.md does
      print(f"warning: kept table.md and the plots: {e}", file=sys.stderr)
  print(f"wrote {htmlreport.write_report(FLAGS.results)}")


if __name__ == "__main__":
  common.run(main, compiles=False)  # runs no JAX program
