"""blas_gemm.accumulate: out += a @ b in one cblas call, for every layout cblas takes; NumPy's path (False,
nothing written) for the rest."""

import numpy as np
import pytest

from neuronet.backend import blas_gemm

pytestmark = pytest.mark.skipif(not blas_gemm._ADDRESSES[np.dtype(np.float32)],
                                reason="NumPy has no bundled ILP64 OpenBLAS")


def _arrays(dtype, m=37, k=29, n=41, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype),
            rng.standard_normal((m, n)).astype(dtype))


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-4), (np.float64, 1e-12)])
@pytest.mark.parametrize("left", ["plain", "transposed", "strided rows"])
@pytest.mark.parametrize("right", ["plain", "transposed"])
def test_accumulate_matches_numpy(dtype, tol, left, right):
    a, b, out = _arrays(dtype)
    if left == "transposed":
        a = np.ascontiguousarray(a.T).T
    elif left == "strided rows":
        a = np.concatenate([a, a[:, :5]], axis=1)[:, :a.shape[1]]  # a row stride longer than its width
    if right == "transposed":
        b = np.ascontiguousarray(b.T).T
    expected = out + a.astype(np.float64) @ b.astype(np.float64)
    assert blas_gemm.accumulate(a, b, out)
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)


def test_accumulate_into_a_view_with_a_longer_row_stride():
    a, b, _ = _arrays(np.float32)
    big = np.ones((37, 60), np.float32)
    assert blas_gemm.accumulate(a, b, big[:, 7:48])
    np.testing.assert_allclose(big[:, 7:48], 1 + a @ b, rtol=1e-4, atol=1e-4)
    assert (big[:, :7] == 1).all() and (big[:, 48:] == 1).all()


@pytest.mark.parametrize("case", ["int dtype", "mixed dtypes", "no unit stride", "output overlaps", "empty",
                                  "shape mismatch", "3-D"])
def test_declines_what_cblas_cannot_take(case):
    a, b, out = _arrays(np.float32)
    if case == "int dtype":
        a, b, out = a.astype(np.int64), b.astype(np.int64), out.astype(np.int64)
    elif case == "mixed dtypes":
        a = a.astype(np.float64)
    elif case == "no unit stride":
        a = np.repeat(a, 2, axis=1)[:, ::2]
    elif case == "output overlaps":
        square = np.ones((29, 29), np.float32)
        a, b, out = square, square, square
    elif case == "empty":
        a, b, out = a[:, :0], b[:0], out
    elif case == "shape mismatch":
        b = b[:-1]
    elif case == "3-D":
        a, b, out = a[None], b[None], out[None]
    before = out.copy()
    assert not blas_gemm.accumulate(a, b, out)
    np.testing.assert_array_equal(out, before)
