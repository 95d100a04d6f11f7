"""A Markdown page over finished 1-D results dirs (jaxscape.reports.report.landscape_page).

  python -m experiments.report --results=aligned=results/a,base=results/b --out=docs/NAME --title="..." \
      [--intro_file=docs/NAME/intro.md]
"""

from absl import flags

from experiments import common

flags.DEFINE_list("results", None, "NAME=RESULTS_DIR pairs, in page order")
flags.DEFINE_string("out", None, "directory for README.md and the plots")
flags.DEFINE_string("title", "Safety landscapes", "page title")
flags.DEFINE_string("intro", "", "text (Markdown) under the title")
flags.DEFINE_string("intro_file", None, "read the text under the title from this Markdown file instead")
flags.DEFINE_integer("samples", 2, "generations shown at each end and at the origin")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from jaxscape.reports import report
  if not FLAGS.results or not FLAGS.out:
    raise common.UserError("--results and --out are required")
  intro = FLAGS.intro
  if FLAGS.intro_file:
    with open(FLAGS.intro_file, encoding="utf-8") as f:  # OSError -> one error line (common.run)
      intro = f.read()
  runs = []
  for item in FLAGS.results:
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
      raise common.UserError(f"--results entry {item!r} is not NAME=RESULTS_DIR")
    runs.append((name, path))
  print(f"wrote {report.landscape_page(runs, FLAGS.out, title=FLAGS.title, intro=intro, samples=FLAGS.samples)}")


if __name__ == "__main__":
  common.run(main)
