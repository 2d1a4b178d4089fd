"""Where the NumPy backend's implicit convolution GEMMs (conv_kernels) read and write: the tables.

Each image is laid into planes, one per channel and phase, its rows ``row_stride`` (Wp) apart, so that
output pixel (r, q) of every kernel tap reads position r*Wp + q of its plane plus the tap's offset: the
GEMM's rows (c, tap) are planes read where they lie, never copied into columns.

Stride 1 has one phase: the padded image itself in the shifted-rows layout (``row_stride``).
Stride (sh, sw) splits the padded image into sh*sw phase planes: phase (a, b) holds
x_pad[a + sh*h', b + sw*w'] at h'*Wq + w', Wq = ceil(Wp / sw). Tap (i, j) reads x_pad[sh*r + i*dh, ...],
which is phase ((i*dh) % sh, (j*dw) % sw) at (r + (i*dh) // sh, q + (j*dw) // sw): a stride-1 read of that
phase. The forward and the weight gradient then are the stride-1 products over other tables, and dx is one
product per phase (the taps that read it) written back through the same split. Without the phases, a
strided convolution ran as im2col columns, one GEMM and col2im (32 -> 64 channels at 32x32, stride 2, 32
images, two threads: forward and backward 12.4 ms against PyTorch's 5.6).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .conv_geometry import ConvGeometry


def implicit(geom: ConvGeometry) -> bool:
    """Whether the implicit GEMMs run this convolution: any stride above 1, or stride 1 where every padded
    row and column is read (the shifted-rows layout relies on it)."""
    return geom.stride != (1, 1) or geom.reach == geom.padded_size


def phases(geom: ConvGeometry) -> int:
    return geom.stride[0] * geom.stride[1]


def row_stride(geom: ConvGeometry) -> int:
    """Wp, the distance between two rows of a plane. Stride 1: the image's width and the wider of its two
    side paddings. The zeros after one row's data serve as its right padding and, read on from the row
    before, as the next row's left padding; a window reaching past the end of a row reads at most
    min(left, right) zeros of the next, which must be padding too. For a 3x3 "same" convolution at 14x14:
    rows 15 apart instead of 16, 7 % less GEMM and columns (MNIST CNN step 1.04-1.06x). Where the narrower
    padding is wider than the kernel reaches, the full padded width. A strided convolution's phase plane:
    ceil(padded width / sw)."""
    (left, right), w, (kw, dw) = geom.padding[1], geom.in_size[1], (geom.kernel[1], geom.dilation[1])
    if geom.stride != (1, 1):
        return -(-geom.padded_size[1] // geom.stride[1])
    return w + max(left, right) if min(left, right) <= (kw - 1) * dw else w + left + right


def plane_rows(geom: ConvGeometry) -> int:
    """The rows of one plane: the padded image's (stride 1), ceil(padded height / sh) (a phase plane)."""
    return -(-geom.padded_size[0] // geom.stride[0])


def plane_length(geom: ConvGeometry) -> int:
    """The length of one plane: its rows and what the last tap reads past them (a strided convolution's
    phase plane: one spare row, as a junk column q >= OW reads up to a row further)."""
    wp, (kw, dw) = row_stride(geom), (geom.kernel[1], geom.dilation[1])
    if geom.stride != (1, 1):
        return (plane_rows(geom) + 1) * wp
    return plane_rows(geom) * wp + (kw - 1) * dw


@functools.lru_cache(maxsize=64)
def taps(geom: ConvGeometry) -> tuple[np.ndarray, np.ndarray]:
    """For each tap (i, j) in order: the phase it reads, a*sw + b, and its offset in that phase's plane."""
    (kh, kw), (dh, dw), (sh, sw), wp = geom.kernel, geom.dilation, geom.stride, row_stride(geom)
    ij = [(i * dh, j * dw) for i in range(kh) for j in range(kw)]
    phase = np.array([(i % sh) * sw + j % sw for i, j in ij], dtype=np.int64)
    offset = np.array([(i // sh) * wp + j // sw for i, j in ij], dtype=np.int64)
    return _frozen(phase), _frozen(offset)


@functools.lru_cache(maxsize=64)
def plane_index(c: int, geom: ConvGeometry) -> np.ndarray:
    """Where row (c, tap) of a convolution's columns starts in an image's planes, laid channel after
    channel, each channel's phases in turn: the forward's and the weight gradient's table."""
    phase, offset = taps(geom)
    length = plane_length(geom)
    channel = np.arange(c, dtype=np.int64)[:, None] * (phases(geom) * length)
    return _frozen((channel + phase * length + offset).reshape(-1))


@functools.lru_cache(maxsize=64)
def pixel_index(geom: ConvGeometry, dx: bool) -> np.ndarray:
    """Where each pixel's row starts in the product with the pixels as rows (stride 1): output pixel (r, q)
    at r*Wp + q of the planes (the forward), input pixel (h, w) at h*Wp + left + w past dz's table (dx)."""
    (h, w), left = (geom.in_size, geom.padding[1][0]) if dx else (geom.out_size, 0)
    index = np.arange(h, dtype=np.int64)[:, None] * row_stride(geom) + left + np.arange(w)
    return _frozen(index.reshape(-1))


@functools.lru_cache(maxsize=64)
def phase_table(geom: ConvGeometry) -> tuple[np.ndarray, np.ndarray]:
    """The taps in phase order, ``order`` (K,), and per phase [first tap, end tap in ``order``, first plane
    row that holds image rows, number of such rows] (S, 4): which phases the planes need (a phase no tap
    reads is not laid out) and dx's products per phase."""
    (sh, sw), (top, _), h = geom.stride, geom.padding[0], geom.in_size[0]
    phase = taps(geom)[0]
    order = np.argsort(phase, kind="stable")
    table = np.zeros((sh * sw, 4), dtype=np.int64)
    for p in range(sh * sw):
        a = p // sw
        first = (top - a + sh - 1) // sh  # the plane rows h' with top <= a + sh*h' < top + H
        end = (top + h - 1 - a) // sh + 1
        table[p] = (np.searchsorted(phase[order], p), np.searchsorted(phase[order], p, side="right"), first,
                    max(end - first, 0))
    return _frozen(order), _frozen(table)


@functools.lru_cache(maxsize=64)
def gradient_index(o: int, geom: ConvGeometry, nr: int) -> tuple[int, int, np.ndarray]:
    """The table of a convolution's dx (conv_kernels.implicit_conv2d_backward), one product per phase over
    dz (O, Z): dy laid out as the forward's output rows (Wp apart, zero past OW) after M zeros.

    Returns M (the largest tap offset); Z (M, a phase plane's rows, a panel's slack of nr); and where row
    (o, tap) of each phase's product starts reading dz, o*Z + M + first*Wp - the tap's offset, ordered by
    group, then phase, then o, then tap (``phase_table``'s order)."""
    wp, g = row_stride(geom), geom.groups
    offset = taps(geom)[1]
    order, table = phase_table(geom)
    front = int(offset.max())
    z_length = front + plane_rows(geom) * wp + nr
    og = o // g
    index = np.empty(o * len(order), dtype=np.int64)
    at = 0
    for group in range(g):
        for k0, k1, first, _ in table:
            channels = np.arange(group * og, (group + 1) * og, dtype=np.int64)[:, None]
            rows = channels * z_length + front + first * wp - offset[order[k0:k1]]
            index[at:at + rows.size] = rows.reshape(-1)
            at += rows.size
    return front, z_length, _frozen(index)


@dataclass(frozen=True)
class Layout:
    """What the kernels need to lay out and read an image of ``c`` channels (``layout``): looked up once
    per call (each lookup hashes the geometry: a few microseconds that a convolution paid 4-5 times a call
    inside a step before)."""

    row_stride: int  # Wp
    plane: int  # one plane's length
    size: int  # the image's planes: c * phases * plane
    index: np.ndarray  # (c*K,): where row (channel, tap) starts (plane_index)
    order: np.ndarray  # (K,): the taps by phase (phase_table)
    phases: np.ndarray  # (S, 4) (phase_table)
    rows: int  # the most image rows one phase plane holds (dx's products)


@functools.lru_cache(maxsize=64)
def layout(c: int, geom: ConvGeometry) -> Layout:
    order, table = phase_table(geom)
    length = plane_length(geom)
    return Layout(row_stride(geom), length, c * phases(geom) * length, plane_index(c, geom), order, table,
                  int(table[:, 3].max()))


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a
