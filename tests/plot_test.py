"""Plots: every function writes a PNG; plot_results redraws 1-D, 2-D and multi-direction results dirs."""

import json
import os
import sys

import numpy as np
import pytest

from jaxscape.core import metrics
from jaxscape.reports import plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
  assert os.path.isfile(path), path
  with open(path, "rb") as f:
    head = f.read(8)
  assert head == PNG_MAGIC
  assert os.path.getsize(path) > 1000
  assert not [p for p in os.listdir(os.path.dirname(path)) if ".tmp" in p]  # no leftovers


def _write_summary(d, summary):
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f)
  return str(d)


def test_no_pyplot_import():
  # Importing jaxscape.reports.plot must not pull in pyplot (global figure state, backend selection).
  import subprocess
  code = "import sys, jaxscape.reports.plot; print('matplotlib.pyplot' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"


def test_plot_1d(tmp_path):
  x = np.linspace(-0.5, 0.5, 9)
  asr = np.array([100, 100, 60, 10, 0, 5, 40, 100, 100.0])
  lo, hi = metrics.visage_edges(asr)
  flagged = np.zeros(9, bool)
  flagged[[0, 8]] = True
  cap = np.array([np.nan, 20, 40, 60, 70, 60, 40, 20, np.nan])
  path = plot.plot_1d(x, {"ASR": asr, "capability": cap}, str(tmp_path / "a" / "one.png"),
                      basin=(x[lo], x[hi]), safe=(x[3], x[5], 5.0), flagged=flagged, title="t")
  _assert_png(path)
  _assert_png(plot.plot_1d(x, {"loss": asr * 7.0}, str(tmp_path / "plain.png")))


def test_plot_1d_errors(tmp_path):
  x = np.arange(4.0)
  with pytest.raises(ValueError, match=r"series\['ASR'\]"):
    plot.plot_1d(x, {"ASR": np.zeros(3)}, str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="flagged"):
    plot.plot_1d(x, {"ASR": np.zeros(4)}, str(tmp_path / "x.png"), flagged=[True])
  with pytest.raises(ValueError, match="at least one"):
    plot.plot_1d(x, {}, str(tmp_path / "x.png"))
  assert not os.path.exists(tmp_path / "x.png")


def test_plot_1d_multi(tmp_path):
  x = np.linspace(-1, 1, 7)
  curves = np.array([[100, 50, 10, 0, 20, 80, 100], [100, 100, 30, 0, 0, 60, 100], [90, 40, 0, 0, 0, 30, 70.0]])
  fl = np.zeros_like(curves, bool)
  fl[1, 0] = True
  _assert_png(plot.plot_1d_multi(x, curves, str(tmp_path / "multi.png"), flagged=fl, title="m",
                                 extra={"capability": curves[::-1] / 2}))
  with pytest.raises(ValueError, match="asr_curves"):
    plot.plot_1d_multi(x, curves[:, :3], str(tmp_path / "bad.png"))


def test_plot_2d(tmp_path):
  x, y = np.linspace(-0.5, 0.5, 5), np.linspace(0, 1, 4)  # non-square: catches swapped axes
  z = np.add.outer(x ** 2, (y - 0.5) ** 2) * 300
  fl = np.zeros((5, 4), bool)
  fl[0, 3] = True
  mask = metrics.visage_mask_2d(np.minimum(z, 100))
  _assert_png(plot.plot_2d(x, y, z, str(tmp_path / "two.png"), flagged=fl, basin_mask=mask, title="t"))
  _assert_png(plot.plot_2d(x, y, {"ASR": z, "capability": 100 - z}, str(tmp_path / "two_cap.png")))
  _assert_png(plot.plot_2d(x, y, np.full((5, 4), 100.0), str(tmp_path / "flat.png")))  # constant surface
  z_nan = z.copy()
  z_nan[2, 2] = np.nan
  _assert_png(plot.plot_2d(x, y, z_nan, str(tmp_path / "nan.png")))
  _assert_png(plot.plot_2d(x[:1], y, z[:1], str(tmp_path / "row.png")))  # a single row
  with pytest.raises(ValueError, match=r"\(5, 4\)"):
    plot.plot_2d(x, y, z.T, str(tmp_path / "bad.png"))


def test_plot_results_1d(tmp_path):
  coords = np.linspace(-0.5, 0.5, 9)
  asr = [100, 100, 60, 10, 0, 5, 40, 100, 100.0]
  d = _write_summary(tmp_path / "r1", {
      "kind": "1d_random", "coords": [[c] for c in coords], "asr": asr,
      "capability": [10, 20, 30, 40, 50, 40, 30, 20, 10], "nonfinite": [True] + [False] * 8,
      "visage": metrics.visage(coords, asr), "axes": {"x": coords.tolist(), "y": None}})
  paths = plot.plot_results(d)
  assert paths == [os.path.join(d, "landscape.png")]
  _assert_png(paths[0])


def test_plot_results_1d_minimal_and_capability_only(tmp_path):
  d = _write_summary(tmp_path / "min", {"coords": [0.0, 0.5, 1.0], "asr": [0, 50, 100]})
  _assert_png(plot.plot_results(d)[0])
  d = _write_summary(tmp_path / "cap", {"kind": "1d_interpolation", "coords": [[0.0], [0.5], [1.0]],
                                        "capability": [90, 50, 10]})
  _assert_png(plot.plot_results(d)[0])


def test_plot_results_multi_direction(tmp_path):
  coords = np.linspace(-0.5, 0.5, 5)
  curves = [[100, 20, 0, 30, 100], [100, 100, 0, 0, 100], [80, 10, 0, 10, 90]]
  d = _write_summary(tmp_path / "multi", {
      "kind": "1d_random", "num_directions": 3, "coords": [[c] for c in coords], "asr": curves,
      "capability": [[50] * 5, [60] * 5, [70] * 5], "nonfinite": [False] * 14 + [True],
      **metrics.visage_summary(curves), "axes": {"x": coords.tolist(), "y": None}})
  _assert_png(plot.plot_results(d)[0])
  # coords listed once per direction (N*K entries) are accepted too
  d = _write_summary(tmp_path / "multi_rep", {"kind": "1d_random", "coords": [[c] for c in coords] * 3,
                                              "asr": curves})
  _assert_png(plot.plot_results(d)[0])


@pytest.mark.parametrize("with_axes", [True, False])
def test_plot_results_2d(tmp_path, with_axes):
  x, y = np.linspace(-0.5, 0.5, 4), np.linspace(-0.1, 1.1, 3)
  asr = np.minimum(np.add.outer(x ** 2, (y - 0.5) ** 2) * 400, 100)
  coords = [[a, b] for a in x for b in y]  # row-major, first direction as rows
  nonfin = [False] * 12
  nonfin[5] = True
  summary = {"kind": "2d_interpolation_random", "coords": coords, "asr": asr.ravel().tolist(),
             "capability": (100 - asr).ravel().tolist(), "nonfinite": nonfin,
             "visage": metrics.visage((x, y), asr)}
  if with_axes:
    summary["axes"] = {"x": x.tolist(), "y": y.tolist()}
  d = _write_summary(tmp_path / f"two{with_axes}", summary)
  _assert_png(plot.plot_results(d)[0])


def test_plot_results_2d_reshape_follows_axes(tmp_path, monkeypatch):
  # The z handed to plot_2d is [n1, n2] with the first direction as rows.
  x, y = np.array([0.0, 1.0, 2.0]), np.array([10.0, 20.0])
  coords = [[a, b] for a in x for b in y]
  asr = [a + b / 100 for a, b in coords]
  seen = {}
  monkeypatch.setattr(plot, "plot_2d", lambda x, y, z, out, **kw: seen.update(x=x, y=y, z=z) or out)
  plot.plot_results(_write_summary(tmp_path / "ij", {"kind": "2d_random", "coords": coords, "asr": asr}))
  np.testing.assert_array_equal(seen["x"], x)
  np.testing.assert_array_equal(seen["y"], y)
  np.testing.assert_allclose(seen["z"]["ASR (%)"], np.add.outer(x, y / 100))


def test_plot_results_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    plot.plot_results(str(tmp_path / "missing"))
  d = _write_summary(tmp_path / "empty", {"kind": "1d_random", "coords": [[0.0]]})
  with pytest.raises(ValueError, match="neither"):
    plot.plot_results(d)
  d = _write_summary(tmp_path / "short", {"kind": "1d_random", "coords": [[0.0], [1.0]], "asr": [1, 2, 3]})
  with pytest.raises(ValueError, match="'asr' has 3 points"):
    plot.plot_results(d)
  d = _write_summary(tmp_path / "grid", {"kind": "2d_random", "coords": [[0, 0], [0, 1], [1, 0], [1, 1]],
                                         "asr": [1, 2, 3]})
  with pytest.raises(ValueError, match="2x2 grid"):
    plot.plot_results(d)
  d = _write_summary(tmp_path / "flags", {"kind": "1d_random", "coords": [[0.0], [1.0]], "asr": [1, 2],
                                          "nonfinite": [False]})
  with pytest.raises(ValueError, match="'nonfinite' has 1 entries"):
    plot.plot_results(d)


def test_plot_results_draws_judged_asr_beside_keyword_asr(tmp_path, monkeypatch):
  seen = {}
  monkeypatch.setattr(plot, "plot_1d", lambda x, series, out, **kw: seen.update(series=series, **kw) or out)
  monkeypatch.setattr(plot, "plot_1d_multi", lambda x, a, out, **kw: seen.update(multi=kw["extra"]) or out)
  monkeypatch.setattr(plot, "plot_2d", lambda x, y, z, out, **kw: seen.update(z=z) or out)
  judges = {"guard": {"asr": [0, 50, 100], "visage": 50.0}}
  plot.plot_results(_write_summary(tmp_path / "one", {"kind": "1d_random", "coords": [[0.0], [0.5], [1.0]],
                                                       "asr": [0, 0, 100], "judges": judges}))
  assert list(seen["series"]) == ["keyword ASR (%)", "ASR, judge guard (%)"] and "guard: VISAGE=50.00" in seen["title"]
  plot.plot_results(_write_summary(tmp_path / "multi", {
      "kind": "1d_random", "coords": [[0.0], [1.0]], "asr": [[0, 100], [0, 50]],
      "judges": {"guard": {"asr": [[10, 90], [0, 40]], "visage": 1.0}}}))
  assert list(seen["multi"]) == ["ASR, judge guard (%)"]
  plot.plot_results(_write_summary(tmp_path / "two", {
      "kind": "2d_random", "coords": [[a, b] for a in (0, 1) for b in (0, 1)], "asr": [0, 10, 20, 30],
      "judges": {"guard": {"asr": [0, 1, 2, 3], "visage": 1.0}}}))
  assert list(seen["z"]) == ["keyword ASR (%)", "ASR, judge guard (%)"]
  monkeypatch.undo()
  _assert_png(plot.plot_results(str(tmp_path / "two"))[0])
  _assert_png(plot.plot_results(str(tmp_path / "one"))[0])
