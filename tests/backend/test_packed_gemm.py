"""The register-blocked GEMM of the recurrent loops (backend/packed_gemm.py) against NumPy's product."""

import re

import numba
import numpy as np
import pytest

from neuronet.backend import packed_gemm


@numba.njit
def _gemm(a, packed, c, accumulate):
    packed_gemm.gemm(a, packed, c, accumulate)


def _packed(b, narrow=False):
    out = np.full(packed_gemm.packed_shape(b.shape, b.dtype, narrow), np.nan, b.dtype)  # all of it written
    packed_gemm.pack(b, out)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", [(32, 128, 512), (13, 40, 70), (1, 1, 1), (7, 3, 33), (64, 33, 17),
                                     (5, 0, 9)])
def test_gemm_matches_numpy(dtype, m, k, n):
    """Tiles of 6 rows and fewer, full and partial panels, an empty inner dimension; c = a @ b, then
    c += a @ b; columns past c's last one (here the rest of a wider array's rows) are never written."""
    rng = np.random.default_rng(m * 1000 + n)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    wide = np.full((m, n + 40), 7.0, dtype)
    c = wide[:, :n]
    packed = _packed(b)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    _gemm(a, packed, c, False)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, **tol)
    _gemm(a, packed, c, True)
    np.testing.assert_allclose(c, 2 * (a.astype(np.float64) @ b), **tol)
    assert (wide[:, n:] == 7.0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_reads_a_through_its_strides(dtype):
    """A transposed view and a row-sliced view of ``a`` give the product of their values."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((40, 30)).astype(dtype)
    b = rng.standard_normal((20, 45)).astype(dtype)
    packed = _packed(b)
    for a in (base[:20].T, base[3:23, 5:25], base[::2, :20]):
        c = np.zeros((a.shape[0], 45), dtype)
        _gemm(a, packed, c, False)
        np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def test_pack_zero_pads_the_last_panel():
    b = np.arange(2 * 35, dtype=np.float32).reshape(2, 35)
    packed = _packed(b)
    assert packed.shape == (2, 2, 32)
    np.testing.assert_array_equal(packed[1, :, :3], b[:, 32:])
    assert (packed[1, :, 3:] == 0).all()
    np.testing.assert_array_equal(packed[0], b[:, :32])


def _panels(b, narrow=False):
    """The packed layout built by NumPy: (P, K, NR), zero past b's last column."""
    p, k, nr = packed_gemm.packed_shape(b.shape, b.dtype, narrow)
    wide = np.zeros((k, p * nr), b.dtype)
    wide[:, :b.shape[1]] = b
    return wide.reshape(k, p, nr).transpose(1, 0, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("narrow", [False, True])
def test_pack_reads_any_view(dtype, narrow):
    """Rows of a wider array (a head of attention's projection rows: whole panels copied as vectors),
    transposed views (float32: 16 x 16 blocks transposed in registers; partial blocks both ways, blocks
    wholly past b's last column, a convolution's dz^T of 840 rows), a column-strided view, each with full
    panels and a partial last one."""
    base = np.random.default_rng(3).standard_normal((70, 900)).astype(dtype)
    for b in (base[:40, 8:8 + 64], base[:40, 8:8 + 70], base[:33, :40].T, base[:20, :130:2], base[5:6, :7],
              base[:16, 30:870].T, base[:64, 5:37].T, base[2:9, 1:6].T, base[:1, :17].T):
        np.testing.assert_array_equal(_packed(b, narrow), _panels(b, narrow))


@numba.njit
def _gemm_triangle(a, packed, c, triangle):
    packed_gemm.gemm(a, packed, c, False, triangle)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("t, k", [(64, 32), (13, 7), (40, 64), (1, 3)])
def test_gemm_triangles_skip_only_what_a_causal_mask_zeroes(dtype, t, k):
    """SKIP_UPPER: c = a @ b on and below the diagonal, whole tiles above it untouched (7.0) and some written;
    A_LOWER / A_UPPER: a zero above / below its diagonal gives the full product while reading only the
    triangle and the rest of each tile's rows (beyond that a is NaN, which a read would spread)."""
    rng = np.random.default_rng(t * 100 + k)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    a, b = rng.standard_normal((t, k)).astype(dtype), rng.standard_normal((k, t)).astype(dtype)
    c = np.full((t, t), 7.0, dtype)
    _gemm_triangle(a, _packed(b), c, packed_gemm.SKIP_UPPER)
    lower = np.tril(np.ones((t, t), bool))
    np.testing.assert_allclose(c[lower], (a.astype(np.float64) @ b)[lower], **tol)
    nr, mr = packed_gemm.panel_width(dtype), packed_gemm.MR
    for i in range(t):
        for j in range(t):  # a tile (rows of i's tile of MR, columns of j's panel) wholly above the diagonal
            assert (c[i, j] == 7.0) == (i // mr * mr + mr - 1 < j // nr * nr), (i, j)

    square, v = rng.standard_normal((t, t)).astype(dtype), rng.standard_normal((t, k)).astype(dtype)
    rows, cols = np.indices((t, t))
    first = rows // mr * mr  # the first row of each row's tile
    for triangle, keep, unread in ((packed_gemm.A_LOWER, np.tril, cols >= first + mr),
                                   (packed_gemm.A_UPPER, np.triu, cols < first)):
        zeroed = keep(square)
        read = np.where(unread, np.nan, zeroed).astype(dtype)
        for a in (read, np.ascontiguousarray(read.T).T):  # row-major and a transposed view
            c = np.full((t, k), 7.0, dtype)
            _gemm_triangle(a, _packed(v), c, triangle)
            np.testing.assert_allclose(c, zeroed.astype(np.float64) @ v, **tol)


@numba.njit
def _gemm_indexed(a, b, index, c):
    packed_gemm.gemm_indexed(a, b, index, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, length", [(13, 70), (6, 32), (1, 5)])
def test_gemm_indexed_reads_rows_where_the_table_says(dtype, m, length):
    """c = a @ B with row k of B the slice b[index[k]:index[k] + L] of a flat array (rows overlapping, out of
    order); b's last NR - 1 values are NaN: read past the last row's end but never used."""
    rng = np.random.default_rng(m)
    nr = packed_gemm.panel_width(dtype)
    index = np.array([0, 7, 3, 40, 41, 12, 25], dtype=np.int64)
    b = np.full(index.max() + length + nr - 1, np.nan, dtype)
    b[:index.max() + length] = rng.standard_normal(index.max() + length)
    a = rng.standard_normal((m, len(index))).astype(dtype)
    c = np.full((m, length), 7.0, dtype)
    _gemm_indexed(a, b, index, c)
    rows = np.stack([b[i:i + length] for i in index]).astype(np.float64)
    np.testing.assert_allclose(c, a @ rows, rtol=1e-5, atol=1e-5)


@numba.njit
def _gemm_rows(a, index, k_size, packed, c, accumulate):
    packed_gemm.gemm_rows(a, index, k_size, packed, c, accumulate)


@pytest.mark.parametrize("narrow", [False, True], ids=["wide", "narrow"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k_size, n", [(70, 40), (5, 1), (33, 32), (9, 16)])
def test_gemm_rows_reads_a_where_the_table_says(dtype, k_size, n, narrow):
    """c (+)= A @ b with row m of A the slice a[index[m]:index[m] + K] of a flat array (rows overlapping,
    out of order, 7 of them: a tile of 6 and one of 1), b in panels of either width; a's values past the
    last row are NaN, never read; columns past c's last one are never written."""
    rng = np.random.default_rng(k_size)
    index = np.array([0, 7, 3, 40, 41, 12, 25], dtype=np.int64)
    a = np.full(index.max() + k_size + 50, np.nan, dtype)
    a[:index.max() + k_size] = rng.standard_normal(index.max() + k_size)
    b = rng.standard_normal((k_size, n)).astype(dtype)
    wide = np.full((len(index), n + 40), 7.0, dtype)
    c = wide[:, :n]
    rows = np.stack([a[i:i + k_size] for i in index]).astype(np.float64)
    _gemm_rows(a, index, k_size, _packed(b, narrow), c, False)
    np.testing.assert_allclose(c, rows @ b, rtol=1e-5, atol=1e-5)
    _gemm_rows(a, index, k_size, _packed(b, narrow), c, True)
    np.testing.assert_allclose(c, 2 * (rows @ b), rtol=1e-5, atol=1e-5)
    assert (wide[:, n:] == 7.0).all()


@numba.njit
def _gemm_gather(a, rows, cols, packed, c):
    packed_gemm.gemm_gather(a, rows, cols, packed, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [40, 1, 16])
def test_gemm_gather_reads_a_where_both_tables_say(dtype, n):
    """c = A @ b with A[m, k] = a[rows[m] + cols[k]] (both tables out of order, 7 rows: a tile of 6 and one
    of 1), b in wide panels; a's values past the last one read are NaN, never read; columns past c's last
    one are never written."""
    rng = np.random.default_rng(n)
    rows, cols = np.array([0, 7, 3, 40, 41, 12, 25], np.int64), np.array([5, 0, 17, 2, 30], np.int64)
    a = np.full(rows.max() + cols.max() + 50, np.nan, dtype)
    a[:rows.max() + cols.max() + 1] = rng.standard_normal(rows.max() + cols.max() + 1)
    b = rng.standard_normal((len(cols), n)).astype(dtype)
    wide = np.full((len(rows), n + 40), 7.0, dtype)
    c = wide[:, :n]
    _gemm_gather(a, rows, cols, _packed(b), c)
    gathered = a[rows[:, None] + cols[None, :]].astype(np.float64)
    np.testing.assert_allclose(c, gathered @ b, rtol=1e-5, atol=1e-5)
    assert (wide[:, n:] == 7.0).all()


@numba.njit
def _all_four(a, packed, index, c):
    packed_gemm.gemm(a, packed, c, False)
    packed_gemm.gemm_indexed(a, a.reshape(-1), index, c)
    packed_gemm.gemm_rows(a.reshape(-1), index, 1, packed, c, False)
    packed_gemm.gemm_gather(a.reshape(-1), index, index, packed, c)


def test_product_variants_compile_to_functions_of_their_own_names():
    """A compiled function is named by its qualified name and a per-process counter; a kernel loaded from
    the disk cache calls its callees by that name, so variants sharing a qualified name would be told apart
    by the counter alone and a cached kernel could call another process's variant (it crashed)."""
    a, index = np.ones((2, 2)), np.zeros(2, np.int64)
    _all_four(a, _packed(a), index, np.zeros((2, 2)))
    ir = next(iter(_all_four.overloads.values())).library.get_llvm_str()
    names = set(re.findall(r'define [^@]*@"?_ZN\w*?packed_gemm\d+(product\w*?)B\d+v\d+', ir))
    assert names == {"product_packed", "product_indexed", "product_rows_indexed",
                     "product_rows_indexed_narrow", "product_gather"}
