"""Tests for jaxscape.core.grid: a landscape kind's axes and grid points, laid out as the reference does."""

import numpy as np
import pytest

from jaxscape.core import grid


def test_grid_axes_reference_layout():
  steps, m, e = 4, 0.5, 2
  (x,) = grid.grid_axes("1d_random", steps=steps, multiplier=m)
  np.testing.assert_array_equal(x, np.linspace(-m / 2, m / 2, steps + 1))
  assert x.dtype == np.float64 and len(x) == 5 and x[0] == -0.25 and x[-1] == 0.25
  # The reference walks: centre - steps/2 * step, then + step (step = m / steps).
  np.testing.assert_allclose(x, -steps / 2 * (m / steps) + np.arange(steps + 1) * (m / steps), atol=1e-12)

  (t,) = grid.grid_axes("1d_interpolation", steps=steps, extra_steps=e)
  np.testing.assert_array_equal(t, np.linspace(-e / steps, 1 + e / steps, steps + 2 * e + 1))
  assert len(t) == 9
  np.testing.assert_allclose(t, (np.arange(steps + 2 * e + 1) - e) / steps, atol=1e-12)
  assert t[e] == 0.0 and abs(t[e + steps] - 1.0) < 1e-12

  t0, r = grid.grid_axes("2d_interpolation_random", steps=steps, multiplier=m, extra_steps=e)
  np.testing.assert_array_equal(t0, t)
  np.testing.assert_array_equal(r, x)
  assert [len(a) for a in grid.grid_axes("2d_random", steps=3)] == [4, 4]
  assert [len(a) for a in grid.grid_axes("2d_interpolation", steps=3, extra_steps=1)] == [6, 6]


def test_grid_coords_row_major():
  c1 = grid.grid_coords([np.array([0.0, 1.0, 2.0])])
  assert c1.shape == (3, 1) and c1.dtype == np.float64
  c2 = grid.grid_coords([np.array([0.0, 1.0]), np.array([10.0, 20.0, 30.0])])
  np.testing.assert_array_equal(c2, [[0, 10], [0, 20], [0, 30], [1, 10], [1, 20], [1, 30]])
  with pytest.raises(ValueError, match="1 or 2 axes"):
    grid.grid_coords([np.zeros(2)] * 3)


@pytest.mark.parametrize("kwargs,match", [
    ({"steps": 0}, "steps must be > 0, got 0"),
    ({"steps": -3}, "steps must be > 0, got -3"),
    ({"steps": 2.5}, "steps must be > 0, got 2.5"),
    ({"steps": 4, "multiplier": 0.0}, "multiplier must be finite and nonzero, got 0.0"),
    ({"steps": 4, "multiplier": float("nan")}, "multiplier must be finite and nonzero"),
    ({"steps": 4, "extra_steps": -1}, "extra_steps must be an integer >= 0, got -1"),
])
def test_grid_axes_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    grid.grid_axes("1d_interpolation", **kwargs)


def test_grid_axes_unknown_kind():
  with pytest.raises(ValueError, match="unknown kind 'random'.*2d_interpolation_random"):
    grid.grid_axes("random", steps=4)
