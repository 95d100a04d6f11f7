"""The package's layout: imports flow one way between the floors, and a wheel holds every subpackage and the data."""

import ast
import os
import shutil
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(REPO, "jaxscape")
# floor -> the floors it must not import (top-level errors and testing sit beside them)
FORBIDDEN = {"core": {"datasets", "studies", "reports"}, "datasets": {"studies", "reports"}, "reports": {"studies"}}


def _modules():
  for d, _, files in os.walk(PKG):
    for f in files:
      if f.endswith(".py"):
        yield os.path.join(d, f)


def _imported(path):
  """Dotted names a module imports (module level and inside functions alike), relative imports resolved."""
  tree = ast.parse(open(path, encoding="utf-8").read(), path)
  here = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".").split(".")[:-1]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""]) if node.level else node.module
      yield from (f"{base}.{a.name}" for a in node.names)


def test_imports_flow_one_way():
  bad = []
  for path in _modules():
    floor = os.path.relpath(path, PKG).split(os.sep)[0]
    for name in _imported(path):
      parts = name.split(".")
      if parts[0] == "jaxscape" and len(parts) > 1 and parts[1] in FORBIDDEN.get(floor, ()):
        bad.append(f"{os.path.relpath(path, REPO)} imports {name}")
  assert not bad, "\n".join(bad)


def test_wheel_holds_every_subpackage_and_the_data(tmp_path):
  src = tmp_path / "src"  # a copy, so the build leaves no build/ or egg-info in the checkout
  src.mkdir()
  for f in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(REPO, f), src / f)
  shutil.copytree(PKG, src / "jaxscape", ignore=shutil.ignore_patterns("__pycache__"))
  proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                         "-q", str(src), "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  (wheel,) = (tmp_path / "dist").iterdir()
  names = set(zipfile.ZipFile(wheel).namelist())
  want = {os.path.relpath(os.path.join(d, f), REPO).replace(os.sep, "/")
          for d, _, files in os.walk(PKG) if "__pycache__" not in d for f in files if not f.endswith(".pyc")}
  assert want - names == set()
  for sub in ("core", "datasets", "studies", "reports"):
    assert f"jaxscape/{sub}/__init__.py" in names
  assert any(n.startswith("jaxscape/data/align/") for n in names) and "jaxscape/data/README.md" in names
