"""Rebuild the built-in sets (``jaxscape/data/``) from their seeded generators, through the ``builtin:`` registry.

  python -m experiments.build_data                                 # every family, rewriting the committed files
  python -m experiments.build_data --family=align --out_dir=/tmp/align --seed=1

Run it after changing a generator or its tables, then commit the files: ``tests/registry_test.py``
fails until the committed files are what the generators write. Prints one line per file written.
"""

import os

from absl import flags

from experiments import common

flags.DEFINE_enum("family", "all", ["all", "toy", "align", "finetune"],
                  "which family of jaxscape.datasets.registry to build")
flags.DEFINE_string("out_dir", None, "write here (with --family=all, each family in its prefix's subfolder); "
                    "default: the package's jaxscape/data")
flags.DEFINE_integer("seed", None, "generator seed (default: each family's, that of the committed files)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from jaxscape.datasets import registry
  families = registry.families() if FLAGS.family == "all" else (registry.family(FLAGS.family),)
  for fam in families:
    out_dir = None
    if FLAGS.out_dir:
      out_dir = os.path.join(FLAGS.out_dir, fam.prefix) if FLAGS.family == "all" else FLAGS.out_dir
    for name, path in registry.write_family(fam, out_dir, FLAGS.seed).items():
      with open(path, encoding="utf-8") as f:
        print(f"{fam.prefix}{name}: {sum(1 for _ in f)} records -> {path}")


if __name__ == "__main__":
  common.run(main, compiles=False)
