"""README's Python example runs as written (in a subprocess, writing to a temporary dir)."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_example_runs(tmp_path):
  readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
  section = readme[readme.index("## From Python"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  assert "results/py_1d" in code
  code = code.replace("results/py_1d", str(tmp_path / "py_1d"))
  code += "\nassert summary['visage'] == 39.94 or abs(summary['visage'] - 39.94) < 0.005, summary['visage']\n"
  code += "assert texts == ['3 + 4 = 7.'], texts\nassert len(samples) == 1\n"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert os.path.isfile(tmp_path / "py_1d" / "summary.json")
