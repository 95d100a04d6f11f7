"""Landscape plots from saved results: 1-D curves, multi-direction curves, 2-D contours and surfaces.

Figures are drawn with ``matplotlib.figure.Figure`` on the Agg canvas, never through pyplot, so
importing this module changes no global backend and leaks no figures.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxscape.errors import InputError
from jaxscape.core.metrics import SAFE_REGION_MARGIN, curve_spread, safe_region, visage_edges, visage_mask_2d

_FLAG_STYLE = dict(marker="X", s=70, color="crimson", edgecolors="black", linewidths=0.5, zorder=5, clip_on=False)
_FLAG_LABEL = "numerical fault (non-finite logits)"


def _save(fig: Figure, out_path: str) -> str:
  """Render ``fig`` to PNG at ``out_path`` through a temporary file (no partial files)."""
  FigureCanvasAgg(fig)
  d = os.path.dirname(os.path.abspath(out_path))
  os.makedirs(d, exist_ok=True)
  tmp = os.path.join(d, f".{os.path.basename(out_path)}.tmp{os.getpid()}")
  try:
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    os.replace(tmp, out_path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return out_path


def _vec(name: str, value: Any, n: int | None = None, dtype=np.float64) -> np.ndarray:
  a = np.asarray(value, dtype=dtype)
  if a.ndim != 1 or (n is not None and len(a) != n):
    raise ValueError(f"{name} must have shape [{n if n is not None else 'K'}], got {a.shape}")
  return a


def _percent_ylim(ax, arrays) -> None:
  finite = np.concatenate([a[np.isfinite(a)] for a in arrays] or [np.zeros(0)])
  if finite.size and finite.min() >= 0 and finite.max() <= 100:
    ax.set_ylim(-3, 103)


def _draw_flags(ax, coords: np.ndarray, values: np.ndarray, flagged: np.ndarray, label: str | None) -> None:
  """Markers at the flagged points (non-finite values drawn at 0)."""
  if flagged.any():
    ax.scatter(coords[flagged], np.nan_to_num(values[flagged], nan=0.0, posinf=0.0, neginf=0.0),
               label=label, **_FLAG_STYLE)


UNSAFE_ORIGIN = 50.0  # ASR (%) at the origin from which the plots shade no safe region


def plot_1d(coords: Any, series: dict[str, Any], out_path: str, *, basin: tuple[float, float] | None = None,
            safe: tuple[float, float, float] | None = None, flagged: Any = None, title: str | None = None,
            xlabel: str = "coordinate", ylabel: str | None = None) -> str:
  """Curves of one or more metrics against a 1-D coordinate.

  Args:
    coords: float[K] coordinates.
    series: name -> float[K] values (e.g. ``{"ASR": ..., "capability": ...}``), percent or not.
    out_path: PNG path to write.
    basin: ``(lo_coord, hi_coord)`` of the VISAGE window (the points VISAGE averages over), drawn
      as dashed edges, or None.
    safe: ``(lo_coord, hi_coord, threshold)`` of the safe region around the origin
      (``metrics.safe_region``), shaded green, or None. The two differ: the VISAGE window runs to
      the first 100% point on each side (or the axis' ends), the safe region only over the flat
      run near the origin.
    flagged: bool[K], points with a numerical fault (NaN logits), marked on every series.
    title, xlabel: figure text.
    ylabel: y-axis label (default: the series names).

  Returns:
    ``out_path``.
  """
  x = _vec("coords", coords)
  if not series:
    raise ValueError("series must hold at least one curve")
  ys = {k: _vec(f"series[{k!r}]", v, len(x)) for k, v in series.items()}
  fl = None if flagged is None else _vec("flagged", flagged, len(x), bool)
  fig = Figure(figsize=(6.4, 4.2))
  ax = fig.add_subplot()
  if safe is not None:
    ax.axvspan(float(safe[0]), float(safe[1]), color="tab:green", alpha=0.15,
               label=f"safe region (ASR \u2264 {safe[2]:.1f}%: origin + {SAFE_REGION_MARGIN:g})")
  if basin is not None:
    for k, edge in enumerate(basin):
      ax.axvline(float(edge), color="tab:gray", linestyle="--", linewidth=1.0,
                 label="VISAGE window (to the first 100% point)" if k == 0 else None)
  for k, (name, y) in enumerate(ys.items()):  # past 10 curves the colours repeat: vary the line style
    # Thinner each: a curve equal to an earlier one (keyword ASR all incoherent) leaves that one visible.
    ax.plot(x, y, marker="o", markersize=max(2.0, 4.5 - k), linewidth=max(1.0, 3.0 - 0.7 * k), label=name,
            linestyle=("-", "--", ":")[(k // 10) % 3])
  if fl is not None:
    for k, y in enumerate(ys.values()):
      _draw_flags(ax, x, y, fl, _FLAG_LABEL if k == 0 else None)
  _percent_ylim(ax, list(ys.values()))
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel or " / ".join(ys))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8 if len(ys) <= 6 else 6)
  if title:
    ax.set_title(title, fontsize=10)
  return _save(fig, out_path)


def plot_1d_multi(coords: Any, asr_curves: Any, out_path: str, *, flagged: Any = None, title: str | None = None,
                  label: str = "ASR", xlabel: str = "coordinate", extra: dict[str, Any] | None = None) -> str:
  """Several 1-D scans (one per direction): every metric as its mean over directions with a ±1 sd band.

  The first metric (``asr_curves``) also gets a thin line per direction. The sd is the sample
  standard deviation over directions (ddof=1, ``metrics.curve_spread``): the directions are a
  sample of the random-direction distribution; with one direction there is no band.

  Args:
    coords: float[K] coordinates shared by every direction.
    asr_curves: float[N, K], one curve per direction.
    flagged: bool[N, K] (or bool[N*K], direction-major) numerical faults, marked per curve.
    label: name of the metric in ``asr_curves``.
    extra: more name -> float[N, K] metrics (e.g. coherent ASR, capability), each a mean curve with its band.
  """
  x = _vec("coords", coords)
  a = np.asarray(asr_curves, np.float64)
  if a.ndim != 2 or a.shape[1] != len(x) or a.shape[0] < 1:
    raise ValueError(f"asr_curves must have shape [N, {len(x)}], got {a.shape}")
  fl = None if flagged is None else np.asarray(flagged, bool).reshape(a.shape)
  fig = Figure(figsize=(6.4, 4.2))
  ax = fig.add_subplot()
  for i, y in enumerate(a):
    ax.plot(x, y, lw=0.8, alpha=0.45, color="C0", label=f"{label} per direction" if i == 0 else None)
  drawn = []
  for k, (name, v) in enumerate({label: a, **(extra or {})}.items()):
    e = np.asarray(v, np.float64).reshape(a.shape)
    spread = curve_spread(e)
    mean, sd = np.asarray(spread["mean"]), np.asarray(spread["sd"])
    if a.shape[0] > 1:
      ax.fill_between(x, mean - sd, mean + sd, color=f"C{k}", alpha=0.12, label="±1 sd" if k == 0 else None)
    ax.plot(x, mean, lw=2.2 if k == 0 else 1.8, color=f"C{k}", label=f"mean {name} ({a.shape[0]} directions)")
    drawn.append(e)
  if fl is not None:
    for i in range(a.shape[0]):
      _draw_flags(ax, x, a[i], fl[i], _FLAG_LABEL if not fl[:i].any() else None)
  _percent_ylim(ax, [d.ravel() for d in drawn])
  ax.set_xlabel(xlabel)
  ax.set_ylabel(" / ".join([label, *(extra or {})]))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  if title:
    ax.set_title(title, fontsize=10)
  return _save(fig, out_path)


def plot_grouped_bars(groups: dict[str, dict[str, float]], out_path: str, *, ylabel: str = "value",
                      title: str | None = None) -> str:
  """Grouped bar chart: one group per key of ``groups``, one bar per inner key (same keys in every group).

  Args:
    groups: group name -> {bar name -> value}, e.g. run -> {framing -> ASR}.
    out_path: PNG path to write.
  """
  if not groups:
    raise ValueError("groups must hold at least one group")
  names = list(next(iter(groups.values())))
  for g, bars in groups.items():
    if list(bars) != names:
      raise ValueError(f"group {g!r} has bars {list(bars)}, expected {names}")
  vals = np.array([[float(groups[g][n]) for n in names] for g in groups])
  fig = Figure(figsize=(max(6.4, 0.55 * len(groups) * (len(names) + 1) * 0.35 + 2), 4.2))
  ax = fig.add_subplot()
  width = 0.8 / len(names)
  x = np.arange(len(groups))
  for k, n in enumerate(names):
    ax.bar(x + (k - (len(names) - 1) / 2) * width, vals[:, k], width, label=n)
  ax.set_xticks(x, list(groups), rotation=35, ha="right", fontsize=8)
  _percent_ylim(ax, [vals.ravel()])
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=8, ncols=min(len(names), 5))
  if title:
    ax.set_title(title, fontsize=10)
  return _save(fig, out_path)


def plot_bars(values: dict[str, float], out_path: str, *, spread: dict[str, tuple[float, float]] | None = None,
              ylabel: str = "value", title: str | None = None) -> str:
  """One bar per key of ``values``, optionally with a (low, high) range per bar (e.g. over seeds)."""
  if not values:
    raise ValueError("values must hold at least one bar")
  names = list(values)
  v = np.array([float(values[n]) for n in names])
  fig = Figure(figsize=(max(4.8, 0.9 * len(names) + 2), 3.8))
  ax = fig.add_subplot()
  x = np.arange(len(names))
  ax.bar(x, v, 0.6, color="tab:blue", label="mean")
  if spread:
    lo = np.array([spread[n][0] for n in names])
    hi = np.array([spread[n][1] for n in names])
    ax.errorbar(x, v, yerr=[v - lo, hi - v], fmt="none", ecolor="black", capsize=4, label="range over seeds")
    ax.legend(fontsize=8)
  ax.set_xticks(x, names, fontsize=9)
  _percent_ylim(ax, [v])
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3, axis="y")
  if title:
    ax.set_title(title, fontsize=10)
  return _save(fig, out_path)


def plot_scatter(points: dict[str, tuple[float, float]], out_path: str, *, xlabel: str, ylabel: str,
                 title: str | None = None, yrange: dict[str, tuple[float, float]] | None = None) -> str:
  """Labelled points ``{label: (x, y)}``, optionally with a (low, high) y range per point."""
  if not points:
    raise ValueError("points must hold at least one point")
  fig = Figure(figsize=(5.6, 4.2))
  ax = fig.add_subplot()
  for label, (px, py) in points.items():
    if yrange and label in yrange:
      lo, hi = yrange[label]
      ax.errorbar([px], [py], yerr=[[py - lo], [hi - py]], fmt="o", capsize=4, color="tab:blue")
    else:
      ax.plot([px], [py], "o", color="tab:blue")
    ax.annotate(label, (px, py), textcoords="offset points", xytext=(5, 5), fontsize=8)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  _percent_ylim(ax, [np.array([py for _, py in points.values()])])
  ax.grid(alpha=0.3)
  if title:
    ax.set_title(title, fontsize=10)
  return _save(fig, out_path)


def _levels(z: np.ndarray) -> np.ndarray:
  finite = z[np.isfinite(z)]
  if finite.size and finite.min() >= 0 and finite.max() <= 100:
    return np.linspace(0, 100, 21)
  lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
  return np.linspace(lo, hi, 21) if hi > lo else np.array([lo - 0.5, lo + 0.5])


def _cell_edges(c: np.ndarray) -> np.ndarray:
  """float[n + 1] cell boundaries around the centres c[n] (width 1 for a single centre)."""
  if len(c) == 1:
    return np.array([c[0] - 0.5, c[0] + 0.5])
  mid = (c[1:] + c[:-1]) / 2
  return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])


def plot_2d(x: Any, y: Any, z: Any, out_path: str, *, flagged: Any = None, basin_mask: Any = None,
            title: str | None = None, xlabel: str = "direction 1", ylabel: str = "direction 2") -> str:
  """Filled contour and 3-D surface of a 2-D landscape, one row per metric.

  Args:
    x: float[n1], first-direction axis (rows of ``z``).
    y: float[n2], second-direction axis (columns of ``z``).
    z: float[n1, n2] (named "ASR"), or a dict name -> float[n1, n2] for one row per metric.
    flagged: bool[n1, n2] numerical faults, marked on the contour plots.
    basin_mask: bool[n1, n2] VISAGE basin (``metrics.visage_mask_2d``), outlined on the
      first metric's contour plot.
  """
  xs, ys = _vec("x", x), _vec("y", y)
  zs = z if isinstance(z, dict) else {"ASR": z}
  if not zs:
    raise ValueError("z must hold at least one metric")
  shape = (len(xs), len(ys))
  zs = {k: np.asarray(v, np.float64) for k, v in zs.items()}
  for k, v in zs.items():
    if v.shape != shape:
      raise ValueError(f"z[{k!r}] must have shape {shape} (x rows, y columns), got {v.shape}")
  fl = None if flagged is None else np.asarray(flagged, bool)
  if fl is not None and fl.shape != shape:
    raise ValueError(f"flagged must have shape {shape}, got {fl.shape}")
  X, Y = np.meshgrid(xs, ys, indexing="ij")  # [n1, n2], matching z's rows = first direction
  fig = Figure(figsize=(11, 4.3 * len(zs)))
  for r, (name, v) in enumerate(zs.items()):
    ax = fig.add_subplot(len(zs), 2, 2 * r + 1)
    vm = np.ma.masked_invalid(v)
    levels = _levels(v)
    if min(shape) >= 2:
      cs = ax.contourf(X, Y, vm, levels=levels, cmap="viridis", extend="neither")
    else:  # a single row or column cannot be contoured: draw cells instead
      cs = ax.pcolormesh(_cell_edges(xs), _cell_edges(ys), vm.T, cmap="viridis", vmin=levels[0], vmax=levels[-1])
    fig.colorbar(cs, ax=ax, label=name)
    if r == 0 and basin_mask is not None and min(shape) >= 2:
      m = np.asarray(basin_mask, np.float64).reshape(shape)
      if 0 < m.sum() < m.size:
        ax.contour(X, Y, m, levels=[0.5], colors="white", linestyles="--", linewidths=1.2)
        ax.plot([], [], "w--", label="basin")  # legend proxy for the outline
    if fl is not None and fl.any():
      ax.scatter(X[fl], Y[fl], label=_FLAG_LABEL, **_FLAG_STYLE)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7, loc="upper right", facecolor="0.85")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(name if not title else f"{title}: {name}", fontsize=10)
    ax3 = fig.add_subplot(len(zs), 2, 2 * r + 2, projection="3d")
    if min(shape) >= 2:
      ax3.plot_surface(X, Y, np.where(np.isfinite(v), v, np.nan), cmap="viridis", vmin=levels[0],
                       vmax=levels[-1], linewidth=0, antialiased=True)
    else:  # a surface needs two points per side
      ax3.plot(X.ravel(), Y.ravel(), v.ravel(), marker="o")
    ax3.set_xlabel(xlabel)
    ax3.set_ylabel(ylabel)
    ax3.set_zlabel(name)
  return _save(fig, out_path)


# ----------------------------------------------------------------- results dirs


def _axis_labels(kind: str) -> tuple[str, str]:
  """(x, y) axis names for a landscape kind."""
  names = {"1d_random": ("random direction", None), "1d_interpolation": ("interpolation θa→θb", None),
           "2d_random": ("random direction 1", "random direction 2"),
           "2d_interpolation": ("interpolation θa→θb", "interpolation θa→θc"),
           "2d_interpolation_random": ("interpolation θa→θb", "random direction")}
  x, y = names.get(kind, ("direction 1", "direction 2"))
  return x, y or "direction 2"


def _unique(values) -> np.ndarray:
  return np.asarray(list(dict.fromkeys(float(v) for v in values)), np.float64)


def _flags(path: str, nonfinite: Any, shape: tuple[int, ...]) -> np.ndarray | None:
  """The summary's ``nonfinite`` list as bool[shape], or None when absent."""
  if nonfinite is None:
    return None
  f = np.asarray(nonfinite, bool)
  if f.size != int(np.prod(shape)):
    raise InputError(f"{path}: 'nonfinite' has {f.size} entries, expected {int(np.prod(shape))} (shape {shape})")
  return f.reshape(shape)


def plot_results(results_dir: str) -> list[str]:
  """Redraw ``landscape.png`` of a results dir from its ``summary.json``; returns the paths written.

  Keys read from summary.json (others are ignored):
    kind: "1d_*" or "2d_*" (default: 2-D iff the coords have two entries per point).
    coords: per point ``[c1]`` (or a bare number) in 1-D, ``[c1, c2]`` row-major in 2-D (first
      direction as rows); with several directions, the K coords of one direction.
    axes: optional ``{"x": [n1], "y": [n2]}``; 2-D axes are otherwise the distinct coords.
    asr: per point percent; a list of N per-direction lists for multi-direction 1-D scans.
    capability: optional, same layout as ``asr``; drawn with it (or alone when no ``asr``).
    asr_coherent, incoherent: optional (``jaxscape.studies.coherence``), same layout as ``asr``; drawn
      with it on the same axis (keyword ASR = coherent ASR + incoherent share).
    judges: optional ``{name: {"asr", "visage"}}`` (``jaxscape.studies.judge``): each judge's ASR, same
      layout as ``asr``, drawn beside the keyword ASR (2-D: one more row per judge).
    nonfinite: optional per point bools (all directions, direction-major), marked as faults.
    visage, visage_std: optional, shown in the title.
  1-D plots mark the VISAGE window (``metrics.visage_edges``, dashed) and shade the safe region
  around the origin (``metrics.safe_region``) of the ASR curve, unless the origin itself is unsafe
  (ASR >= ``UNSAFE_ORIGIN``); 2-D plots
  outline ``metrics.visage_mask_2d``. Multi-direction plots shade no basin (each direction
  has its own; see ``visage_per_direction``).

  Raises:
    FileNotFoundError: no summary.json in ``results_dir``.
    InputError: a summary with neither ``asr`` nor ``capability``, or inconsistent lengths.
  """
  path = os.path.join(results_dir, "summary.json")
  s = _read_summary(path)
  found, labels, judges = _series_of(path, s)
  kind = str(s.get("kind", ""))
  coords = [c if isinstance(c, (int, float)) else list(c) for c in s.get("coords") or []]
  two_d = kind.startswith("2d") if kind[:2] in ("1d", "2d") else bool(coords) and len(np.atleast_1d(coords[0])) == 2
  xlabel, ylabel = _axis_labels(kind)
  out = os.path.join(results_dir, "landscape.png")
  title = _title(s, kind, judges)
  if two_d:
    return [_plot_2d_summary(path, s, coords, found, labels, out, title=title, xlabel=xlabel, ylabel=ylabel)]
  xs = np.asarray([c if isinstance(c, (int, float)) else c[0] for c in coords], np.float64)
  if xs.size == 0 and (s.get("axes") or {}).get("x"):
    xs = np.asarray(s["axes"]["x"], np.float64)
  if any(isinstance(v, list) and v and isinstance(v[0], list) for v in found.values()):  # several directions
    return [_plot_1d_multi_summary(path, s, xs, found, labels, out, title=title, xlabel=xlabel)]
  ylabel = "percent of prompts" if (judges or "asr_coherent" in found) and "capability" not in found else None
  return [_plot_1d_summary(path, s, xs, found, labels, out, title=title, xlabel=xlabel, ylabel=ylabel)]


def _read_summary(path: str) -> dict:
  """summary.json as a dict; unreadable JSON is an InputError (a missing file a FileNotFoundError)."""
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise InputError(f"{path}: unreadable ({e})") from None


def _series_of(path: str, s: dict) -> tuple[dict[str, Any], dict[str, str], dict[str, dict]]:
  """(key -> per-point values, key -> axis label, judge name -> its entry) of what a summary can plot."""
  found = {name: s[name] for name in ("asr", "asr_coherent", "incoherent", "capability") if s.get(name) is not None}
  if "asr" not in found and "capability" not in found:
    raise InputError(f"{path} holds neither 'asr' nor 'capability'; nothing to plot")
  judges = {name: j for name, j in (s.get("judges") or {}).items() if isinstance(j, dict) and j.get("asr") is not None}
  labels = {"asr": "keyword ASR (%)" if judges or "asr_coherent" in found else "ASR (%)",
            "asr_coherent": "coherent ASR (%)", "incoherent": "incoherent share (%)", "capability": "capability (%)"}
  for name, j in judges.items():  # classifier judges' ASR, drawn beside the keyword ASR
    found[f"judge:{name}"] = j["asr"]
    labels[f"judge:{name}"] = f"ASR, judge {name} (%)"
  return found, labels, judges


def _title(s: dict, kind: str, judges: dict[str, dict]) -> str:
  """The kind and every VISAGE the summary holds (keyword, coherent, per judge)."""
  title = kind or "landscape"
  if s.get("visage") is not None:
    title += f"  VISAGE={s['visage']:.2f}" + (f" ± {s['visage_std']:.2f}" if s.get("visage_std") is not None else "")
  if s.get("visage_coherent") is not None:
    title += f", coherent {s['visage_coherent']:.2f}" + (
        f" ± {s['visage_coherent_std']:.2f}" if s.get("visage_coherent_std") is not None else "")
  for name, j in judges.items():
    if j.get("visage") is not None:
      title += f"\njudge {name}: VISAGE={j['visage']:.2f}"
  return title


def _plot_2d_summary(path: str, s: dict, coords: list, found: dict, labels: dict, out: str, **text) -> str:
  """:func:`plot_2d` of a 2-D summary: each series reshaped to the [n1, n2] grid, the basin of the ASR."""
  axes = s.get("axes") or {}
  x = np.asarray(axes["x"], np.float64) if axes.get("x") else _unique(c[0] for c in coords)
  y = np.asarray(axes["y"], np.float64) if axes.get("y") else _unique(c[1] for c in coords)
  n = len(x) * len(y)
  zs = {}
  for name, v in found.items():
    v = np.asarray(v, np.float64).ravel()
    if v.size != n:
      raise InputError(f"{path}: '{name}' has {v.size} points, the {len(x)}x{len(y)} grid needs {n}")
    zs[labels[name]] = v.reshape(len(x), len(y))
  fl = _flags(path, s.get("nonfinite"), (len(x), len(y)))
  mask = visage_mask_2d(zs[labels["asr"]]) if "asr" in found else None
  return plot_2d(x, y, zs, out, flagged=fl, basin_mask=mask, **text)


def _plot_1d_multi_summary(path: str, s: dict, xs: np.ndarray, found: dict, labels: dict, out: str, **text) -> str:
  """:func:`plot_1d_multi` of a summary with several directions (each series [num_directions, K])."""
  curves = {name: np.asarray(v, np.float64) for name, v in found.items()}
  n_dirs = len(next(iter(curves.values())))
  if n_dirs > 1 and len(xs) == n_dirs * next(iter(curves.values())).shape[-1]:
    xs = xs[:len(xs) // n_dirs]  # coords listed for every direction: they repeat
  for name, v in curves.items():
    if v.ndim != 2 or v.shape[1] != len(xs):
      raise InputError(f"{path}: '{name}' has shape {v.shape}, expected [num_directions, {len(xs)}]")
  first = "asr" if "asr" in curves else "capability"
  fl = _flags(path, s.get("nonfinite"), curves[first].shape)
  extra = {labels[k]: v for k, v in curves.items() if k != first}
  return plot_1d_multi(xs, curves[first], out, flagged=fl, label=labels[first], extra=extra, **text)


def _plot_1d_summary(path: str, s: dict, xs: np.ndarray, found: dict, labels: dict, out: str, **text) -> str:
  """:func:`plot_1d` of a one-direction summary, with the VISAGE window and the safe region of its ASR."""
  series = {}
  for name, v in found.items():
    v = np.asarray(v, np.float64)
    if v.shape != xs.shape:
      raise InputError(f"{path}: '{name}' has {v.size} points, coords have {xs.size}")
    series[labels[name]] = v
  basin = safe = None
  if "asr" in found:
    lo, hi = visage_edges(series[labels["asr"]])
    basin = (xs[lo], xs[hi])
    s_lo, s_hi, threshold = safe_region(xs, series[labels["asr"]])
    if threshold - SAFE_REGION_MARGIN < UNSAFE_ORIGIN:  # an unsafe origin has no safe region to show
      safe = (xs[s_lo], xs[s_hi], threshold)
  fl = _flags(path, s.get("nonfinite"), xs.shape)
  return plot_1d(xs, series, out, basin=basin, safe=safe, flagged=fl, **text)
