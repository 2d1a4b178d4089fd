"""The masked 16-lane softmax rows (backend/vector_rows.py) against a float64 softmax."""

import numba
import numpy as np
import pytest

from neuronet.backend import vector_rows


@numba.njit
def _softmax(z, out, seen, scale, log=False):
    for r in range(z.shape[0]):
        high = vector_rows.row_max(z[r].ctypes.data, seen[r])
        if log:
            vector_rows.log_softmax_row(z[r].ctypes.data, out[r].ctypes.data, seen[r], z.shape[1],
                                        np.float32(scale), high)
        else:
            vector_rows.softmax_row(z[r].ctypes.data, out[r].ctypes.data, seen[r], z.shape[1],
                                    np.float32(scale), high)


def _reference(z, seen, scale, log=False):
    out = np.zeros(z.shape)
    for r, n in enumerate(seen):
        shifted = scale * (z[r, :n].astype(np.float64) - z[r, :n].max())
        total = np.exp(shifted).sum()
        out[r, :n] = shifted - np.log(total) if log else np.exp(shifted) / total
    return out


@pytest.mark.parametrize("cols", [1, 5, 15, 16, 17, 33, 64, 65, 100])
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("log", [False, True])
def test_softmax_row_matches_float64_and_zeroes_past_seen(cols, in_place, log):
    """Every count of columns seen (1..cols: a causal mask's rows), rows narrower and wider than a vector;
    the columns past ``cols`` (the rest of a wider array) are never written."""
    rng = np.random.default_rng(cols)
    z = (rng.standard_normal((cols, cols)) * 4).astype(np.float32)
    seen = np.arange(1, cols + 1)
    wide = np.full((cols, cols + 20), 7.0, np.float32)
    out = wide[:, :cols]
    expected = _reference(z, seen, 0.3, log)
    if in_place:
        out[...] = z
        z = out
    _softmax(z, out, seen, 0.3, log)
    np.testing.assert_allclose(out, expected, rtol=2e-6, atol=2e-6 if log else 1e-7)
    assert (wide[:, cols:] == 7.0).all()


def test_softmax_row_takes_large_scores_and_propagates_nan():
    z = np.array([[1e4, 1e4 - 1.0, -1e4, 0.0], [1.0, np.nan, 2.0, 3.0]], np.float32)
    out = np.empty_like(z)
    _softmax(z, out, np.array([4, 4]), 1.0)
    np.testing.assert_allclose(out[0], _reference(z[:1], [4], 1.0)[0], rtol=1e-6, atol=1e-30)
    assert np.isnan(out[1]).all()
    _softmax(z, out, np.array([4, 4]), 1.0, True)
    np.testing.assert_allclose(out[0], _reference(z[:1], [4], 1.0, True)[0], rtol=1e-6)
    assert np.isnan(out[1]).all()
