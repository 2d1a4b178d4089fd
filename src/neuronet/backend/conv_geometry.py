"""The shape of one 2-D cross-correlation, shared by the convolution kernels of every backend.

A ``ConvGeometry`` describes ``y = conv2d(x, weight)`` with x (N, C, H, W) -> y (N, O, OH, OW):

    y[n, o, oh, ow] = sum_{c in o's group, i, j} weight[o, c, i, j] * x_pad[n, c, oh*sh + i*dh, ow*sw + j*dw]

where x_pad is x with ``padding[0]`` = (top, bottom) and ``padding[1]`` = (left, right) zero rows/columns
(asymmetric for PyTorch's ``padding="same"`` with an even kernel). The sizes are stored, not derived: a
transposed convolution runs this geometry backwards, where its ``output_padding`` rows make the
unpadded size longer than the windows reach (those rows get zero gradient), never shorter.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class ConvGeometry:
    in_size: tuple[int, int]                          # (H, W), unpadded
    out_size: tuple[int, int]                         # (OH, OW)
    kernel: tuple[int, int]                           # (kh, kw)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @cached_property  # (computed once: the kernels ask for it on every call)
    def padded_size(self) -> tuple[int, int]:
        """(H, W) with the padding."""
        return tuple(size + lo + hi for size, (lo, hi) in zip(self.in_size, self.padding, strict=True))

    @cached_property
    def reach(self) -> tuple[int, int]:
        """(H, W) of the padded input that the windows read: (OH - 1)*sh + dh*(kh - 1) + 1, ..."""
        return tuple((o - 1) * s + d * (k - 1) + 1 for o, s, d, k in
                     zip(self.out_size, self.stride, self.dilation, self.kernel, strict=True))

    @property
    def plain(self) -> bool:
        """Symmetric padding and the floor rule's output size: what a framework's conv2d call expresses."""
        return all(lo == hi and size - r < s for (lo, hi), size, r, s in
                   zip(self.padding, self.padded_size, self.reach, self.stride, strict=True))


def conv_output_size(size: int, kernel: int, stride: int, before: int, after: int, dilation: int = 1) -> int:
    """floor((size + before + after - dilation*(kernel-1) - 1) / stride) + 1: PyTorch's output length."""
    return (size + before + after - dilation * (kernel - 1) - 1) // stride + 1
