"""Grid coordinates of a landscape kind, laid out as the reference implementation does.

Random axes span ``[−m/2, m/2]`` in ``steps+1`` points; interpolation axes span
``[−e/steps, 1+e/steps]`` in ``steps+2e+1`` points, so that 0 is model a and 1 is model b.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from jaxscape.errors import InputError

KINDS = ("1d_random", "2d_random", "1d_interpolation", "2d_interpolation", "2d_interpolation_random")


def _axis_kinds(kind: str) -> tuple[str, ...]:
  return {"1d_random": ("random",), "2d_random": ("random", "random"),
          "1d_interpolation": ("interpolation",), "2d_interpolation": ("interpolation", "interpolation"),
          "2d_interpolation_random": ("interpolation", "random")}[kind]


def grid_axes(kind: str, *, steps: int, multiplier: float = 1.0, extra_steps: int = 0) -> list[np.ndarray]:
  """Per-axis coordinates (float64), laid out as the reference does.

  Random axis: ``np.linspace(-m/2, m/2, steps+1)``. Interpolation axis:
  ``np.linspace(-e/steps, 1+e/steps, steps+2e+1)`` (0 is model a, 1 model b/c, spacing
  ``1/steps``). ``multiplier`` only affects random axes and ``extra_steps`` only
  interpolation axes, but both are validated for every kind.

  Returns:
    One array per axis: ``[steps+1]`` (random) or ``[steps+2e+1]`` (interpolation).
  """
  if kind not in KINDS:
    raise InputError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps <= 0:
    raise InputError(f"steps must be > 0, got {steps!r}")
  if isinstance(extra_steps, bool) or not isinstance(extra_steps, (int, np.integer)) or extra_steps < 0:
    raise InputError(f"extra_steps must be an integer >= 0, got {extra_steps!r}")
  try:
    m = float(multiplier)
  except (TypeError, ValueError):
    raise InputError(f"multiplier must be a number, got {multiplier!r}") from None
  if m == 0 or not math.isfinite(m):
    raise InputError(f"multiplier must be finite and nonzero, got {multiplier!r}")
  steps, e = int(steps), int(extra_steps)
  axes = []
  for axis_kind in _axis_kinds(kind):
    if axis_kind == "random":
      axes.append(np.linspace(-m / 2, m / 2, steps + 1))
    else:
      axes.append(np.linspace(-e / steps, 1 + e / steps, steps + 2 * e + 1))
  return axes


def grid_coords(axes: Sequence[np.ndarray]) -> np.ndarray:
  """All grid points ``[K, ndim]`` float64, row-major: the first axis indexes rows.

  1-D: ``axes[0][:, None]``. 2-D: point ``i*len(axes[1]) + j`` is ``(axes[0][i], axes[1][j])``.
  """
  if not 1 <= len(axes) <= 2:
    raise ValueError(f"grid_coords needs 1 or 2 axes, got {len(axes)}")
  grids = np.meshgrid(*[np.asarray(a, np.float64) for a in axes], indexing="ij")
  return np.stack([g.reshape(-1) for g in grids], axis=-1)

