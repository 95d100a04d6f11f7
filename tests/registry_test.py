"""The ``builtin:`` registry: every committed file is rebuilt bit-identically, names resolve, unknown ones fail in one line."""

import filecmp
import glob
import os
import subprocess
import sys

import pytest

from jaxscape.datasets import registry
from jaxscape.datasets import sources
from jaxscape.errors import InputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("fam", registry.families(), ids=lambda f: f.name)
def test_committed_files_regenerate_bit_identically(fam, tmp_path):
  # Fails when a generator changed and `python -m experiments.build_data` was not re-run.
  paths = registry.write_family(fam, str(tmp_path))
  assert tuple(paths) == fam.set_names
  for name, path in paths.items():
    assert filecmp.cmp(path, registry.builtin_path(fam.prefix + name), shallow=False), name


def test_registered_names_are_the_committed_files():
  root = registry.data_dir()
  files = {os.path.relpath(p, root)[:-len(".jsonl")] for p in glob.glob(os.path.join(root, "**", "*.jsonl"),
                                                                           recursive=True)}
  assert files == set(registry.names())
  assert len(set(registry.names())) == len(registry.names())


def test_loading_by_name():
  ps = sources.load_prompts("builtin:harmful_test")
  assert len(ps) >= 100 and all(isinstance(p, str) for p in ps)
  assert sources.load_prompts("builtin:harmful_test", samples=5) == ps[:5]
  assert [r["prompt"] for r in registry.load("harmful_test")] == ps
  assert registry.load("benign_test")[0]["answer"]
  assert sources.load_jsonl("builtin:align/heldout_benign") == registry.load("align/heldout_benign")
  assert sources.resolve("builtin:finetune/code_test") == registry.builtin_path("finetune/code_test")
  assert sources.resolve("some/file.csv") == "some/file.csv"


@pytest.mark.parametrize("name", ["no_such_set", "align/nope", "finetune/nope", "nope/train", "align/../harmful_test",
                                  "/etc/passwd", "README"])
def test_unknown_name_is_one_input_error_line_listing_every_set(name):
  with pytest.raises(InputError) as e:
    sources.load_prompts(f"builtin:{name}")
  msg = str(e.value)
  assert "\n" not in msg and repr(name) in msg
  assert all(n in msg for n in ("harmful_test", "align/heldout_benign", "finetune/multitask_safety"))


def test_family_lookup():
  assert registry.family("align").prefix == "align/"
  with pytest.raises(InputError, match="toy, align, finetune"):
    registry.family("nope")


def test_data_floor_imports_without_jax():
  code = ("import sys; from jaxscape.datasets import registry, sources, evaluation, capability; "
          "sources.load_prompts('builtin:harmful_test'); assert 'jax' not in sys.modules, 'jax imported'")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_reading_a_set_imports_no_generator():
  code = ("import sys, jaxscape; jaxscape.load_prompts('builtin:align/train'); "
          "assert not {'jaxscape.datasets.toydata', 'numpy'} & set(sys.modules), sorted(sys.modules)")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_build_data_cli_writes_a_family(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.build_data", "--family=align", f"--out_dir={tmp_path}"],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.count("records ->") == len(registry.family("align").set_names)
  for name in registry.family("align").set_names:
    assert filecmp.cmp(tmp_path / f"{name}.jsonl", registry.builtin_path(f"align/{name}"), shallow=False), name
  bad = subprocess.run([sys.executable, "-m", "experiments.build_data", "--family=nope"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--family" in bad.stderr
