"""The PyTorch backend: the same kernels on torch tensors, on device "cpu", "cuda" or "mps".

Imported only when asked for, so the core runs without torch installed.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from . import blas_threads, malloc_tuning
from .kernels import SELU_ALPHA, SELU_SCALE
from .numpy_ops import NumpyOps, fused_heads
from .ops import DEFAULT_ALPHA, NEW, Ops


class _HostKernels(NumpyOps):
    """The NumPy backend's kernels on CPU tensors' memory, in row blocks only while torch runs on one
    thread: with more, PyTorch's OpenMP workers hold the other cores (and spin after each of its ops), and
    the row threads' blocks beside them made the char GPT's step 40-43 against 32-33 ms; the MLP's Adam
    update, whose spans were cut for the row threads without asking ``row_blocks``, left its step at 2.6
    or 4.0 ms from process to process (2.45-2.75 in one block)."""

    def row_blocks(self, n, min_rows=None):
        return (slice(None),) if torch.get_num_threads() > 1 else super().row_blocks(n, min_rows)


_CPU = _HostKernels()  # the Numba kernels with their calling conventions, for CPU tensors' host views
_LSTM_MODE = 2  # oneDNN's RNN mode number for the LSTM cell
_MKLDNN_RNN = hasattr(torch.ops.aten, "mkldnn_rnn_layer") and torch.backends.mkldnn.is_available()
FUSED_ATTENTION_THREADS = 2  # up to this many torch threads, CPU attention runs the one-core fused kernel
# Off the CPU dropout's uniforms are drawn on the device, unless this is set (the NumPy backend's masks
# exactly: what the backend-agreement tests compare, gpu_check.py runs them so).
HOST_MASKS = os.environ.get("NEURONET_HOST_MASKS") == "1"
_LOW_PRECISION = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "int64": torch.int64, "int32": torch.int32, "bool": torch.bool, "uint8": torch.uint8}


class TorchOps(Ops):
    xp = torch
    name = "torch"

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._device = torch.device(device)
        if self._device.type == "cpu":
            malloc_tuning.keep_freed_memory()  # PyTorch's per-call temporaries: see malloc_tuning
        self._precision = threading.local()  # .dtype: the products' dtype inside compute_in, per thread
        self.host_masks = HOST_MASKS
        self._mask_generator = threading.local()  # .gen: this thread's generator on the device
        self.fused_attention_devices = ("cuda",)  # device types where fused_attention runs

    # ----------------------------------------------------------------- mixed precision
    @contextlib.contextmanager
    def compute_in(self, dtype):
        if dtype is not None and dtype not in _LOW_PRECISION:
            raise ValueError(f"compute_in: expected None, 'bfloat16' or 'float16', got {dtype!r}")
        before = self._low_dtype()
        self._precision.dtype = None if dtype is None else _LOW_PRECISION[dtype]
        try:
            yield
        finally:
            self._precision.dtype = before

    def _low_dtype(self):
        """The products' dtype inside compute_in (bfloat16/float16), else None."""
        return getattr(self._precision, "dtype", None)

    def _low(self, *tensors):
        """The tensors in the products' low precision inside compute_in, else None."""
        dt = self._low_dtype()
        if dt is None or tensors[0].dtype != torch.float32:
            return None
        return [None if t is None else t.to(dt) for t in tensors]

    # ----------------------------------------------------------------- creation / conversion
    def empty(self, shape, dtype):
        return torch.empty(shape, dtype=self.resolve_dtype(dtype), device=self._device)

    def zeros(self, shape, dtype):
        return torch.zeros(shape, dtype=self.resolve_dtype(dtype), device=self._device)

    def clip_norm_(self, x, max_norm, eps):
        if _on_cpu(x):  # (reading the norm back costs nothing there, and skips the pass when within)
            super().clip_norm_(x, max_norm, eps)
        else:  # on a device the norm stays there: the coefficient clamped at 1 scales x always, as PyTorch
            x.mul_(torch.clamp(max_norm / (torch.linalg.vector_norm(x) + eps), max=1.0))

    def arange(self, n):  # (torch.arange alone makes a CPU tensor: the losses' row index on a GPU)
        return torch.arange(n, device=self._device)

    def asarray(self, x, dtype=None):
        dt = None if dtype is None else self.resolve_dtype(dtype)
        if isinstance(x, torch.Tensor):
            return x.detach().to(device=self._device, dtype=dt or x.dtype)
        a = np.asarray(x)
        if dt is None and a.dtype == np.float64 and not isinstance(x, np.ndarray):
            dt = torch.float32  # Python floats become float32, as torch.tensor does
        # (ascontiguousarray turns a 0-d array into 1-d: keep the shape, e.g. num_batches_tracked)
        t = torch.from_numpy(np.ascontiguousarray(a).reshape(a.shape)) if a.dtype != np.object_ \
            else torch.tensor(x)
        return t.to(device=self._device, dtype=dt or t.dtype)

    def to_numpy(self, x):
        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
        return np.asarray(x)

    def host_twin(self, arrays):
        # CPU float tensors: a loss's dozen small passes cost 5-15 us each as torch calls, ~1 us as NumPy's.
        # The sequential-MNIST LSTM's cross-entropy (64 x 10) alone: forward 140 -> 77 us, backward 50 -> 16.
        ok = all(isinstance(a, torch.Tensor) and _numba_ok(a) for a in arrays)
        return (_CPU, [a.numpy() for a in arrays]) if ok else None

    def from_host(self, x):
        return torch.from_numpy(x)

    def is_array(self, x):
        return isinstance(x, torch.Tensor)

    def ready(self, x, dtype):  # (a tensor that requires grad is detached by asarray)
        return isinstance(x, torch.Tensor) and x.dtype == self.resolve_dtype(dtype) and not x.requires_grad \
            and x.device == self._device

    def is_floating(self, x):
        return x.is_floating_point() if isinstance(x, torch.Tensor) else np.issubdtype(np.asarray(x).dtype,
                                                                                        np.floating)

    def dtype_name(self, x):
        if isinstance(x, torch.Tensor):
            return str(x.dtype).replace("torch.", "")
        return str(np.asarray(x).dtype)

    def resolve_dtype(self, name):
        return name if isinstance(name, torch.dtype) else _torch_dtype(name)

    def copy_(self, dst, src):
        if isinstance(src, torch.Tensor):
            dst.copy_(src)
        else:
            dst[...] = src

    def fill_(self, x, value):
        x.fill_(value)

    # ----------------------------------------------------------------- shape helpers
    def transpose(self, x, axes):
        return x.permute(*axes)

    def swapaxes(self, x, a, b):
        return x.transpose(a, b)

    def item(self, x):
        return float(x.item()) if isinstance(x, torch.Tensor) else float(x)

    # ----------------------------------------------------------------- primitives
    def where(self, cond, a, b, out):
        a = a if isinstance(a, torch.Tensor) else torch.as_tensor(a, dtype=out.dtype, device=out.device)
        b = b if isinstance(b, torch.Tensor) else torch.as_tensor(b, dtype=out.dtype, device=out.device)
        return torch.where(cond, a, b, out=out)

    def may_share_memory(self, a, b):
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()

    def dropout_mask(self, keep, rng, out, dtype):
        # On the CPU the uniforms come from the NumPy generator, as on the NumPy backend (the same masks),
        # through its small buffer into the mask's memory. On a device they are drawn there, by torch's
        # generator seeded from one draw of the NumPy one: a seed still fixes every mask (and Remat's
        # recomputation redraws the same), and no host work or copy grows with the mask (nanoGPT at batch
        # 64 drops ~270 M values a step: host uniforms and their copy would take longer than the step).
        host = np.dtype(np.float64 if np.dtype(dtype) == np.float64 else np.float32)
        if _on_cpu(out) and out.is_contiguous():
            _CPU.dropout_mask(keep, rng, out.numpy(), host)
        elif self.host_masks:
            torch.lt(torch.from_numpy(rng.random(tuple(out.shape), dtype=host)).to(out.device), keep, out=out)
        else:
            uniforms = self.temporary("dropout.u", tuple(out.shape), host.name)
            uniforms.uniform_(generator=self._device_generator(int(rng.integers(2**63))))
            torch.lt(uniforms, keep, out=out)
        return out

    def _device_generator(self, seed: int):
        """This thread's torch generator on the device, seeded with ``seed`` (None where the device has
        none: "meta", whose tensors hold no values)."""
        local = self._mask_generator
        if not hasattr(local, "gen"):
            try:
                local.gen = torch.Generator(device=self._device)
            except RuntimeError:
                local.gen = None
        if local.gen is not None:
            local.gen.manual_seed(seed)
        return local.gen

    def apply_mask(self, x, mask, scale, out):
        if _numba_ok(x) and _numba_ok(out) and out.is_contiguous() and _on_cpu(mask) and mask.is_contiguous():
            _CPU.apply_mask(x.numpy(), mask.numpy(), scale, out.numpy())
            return out
        torch.mul(x, mask, out=out)  # x * 1 or x * 0, then one rounding in the scale
        return out.mul_(scale)

    def topk(self, x, k, values, indices):
        torch.topk(x, k, dim=-1, sorted=True, out=(values, indices))

    # The MoE's routing and the embeddings' gradients on CPU tensors: the NumPy backend's loops (two
    # threads, 512 rows of 64: index_add_ 43 against 6 us; a stable sort and a bincount 15 against 3.3).
    def group_by_key(self, keys, order, counts):
        if all(_on_cpu(t) and t.dtype == torch.int64 for t in (keys, order, counts)):
            _CPU.group_by_key(*_host(keys, order, counts))
            return
        torch.sort(keys, stable=True, out=(torch.empty_like(keys), order))
        self.bincount(keys, counts)

    def bincount(self, keys, out):
        out.copy_(torch.bincount(keys, minlength=len(out)))

    def gather_rows(self, table, index, out):
        return torch.index_select(table, 0, index.reshape(-1).long(), out=out.reshape(-1, *table.shape[1:]))

    def scatter_add_rows(self, table, index, rows):
        if _numba_ok(table) and table.is_contiguous() and rows.is_contiguous() and _on_cpu(index) and \
                index.dtype == torch.int64:
            _CPU.scatter_add_rows(*_host(table, index, rows))
            return
        table.index_add_(0, index.reshape(-1).long(), rows.reshape(-1, *table.shape[1:]))

    # ------------------------------------------------------------ convolution and pooling (PyTorch's kernels)
    # PyTorch's convolutions make their results themselves: the layers ask for them (ops.NEW) and keep
    # them rather than have them copied into their workspaces (the small ResNet's step, two threads,
    # alternating processes: 42.8 against 43.6 ms; its peak memory ~30 MiB higher, the layer after a
    # convolution holding the last step's result while the next is made).
    fresh_outputs = True

    def conv2d(self, x, weight, bias, geom, out, scratch):
        dtype, (x, padding) = x.dtype, _conv_input(x, geom)
        x, weight, bias = self._low(x, weight, bias) or (x, weight, bias)
        z = F.conv2d(x, weight, bias, geom.stride, padding, geom.dilation, geom.groups)
        if out is NEW:
            return z.to(dtype)  # (itself unless computed in a lower precision)
        out.copy_(z)
        return out

    def conv2d_backward(self, dy, x, weight, geom, dx, dweight, dbias, scratch):
        if dweight is None and dbias is None and dx is not None and geom.plain and \
                self._low(dy, weight) is None:
            # dx only (a ConvTranspose2D's forward): PyTorch's transposed convolution, what its
            # ConvTranspose2d module runs (32 -> 16, k4 s2 at 16x16, 32 images, two threads: the layer's
            # forward + backward 0.91 -> 1.00x PyTorch against convolution_backward's input gradient)
            extra = [size + 2 * p - r for size, (p, _), r in zip(geom.in_size, geom.padding, geom.reach,
                                                                  strict=True)]
            gx = F.conv_transpose2d(dy, weight, None, geom.stride, [p for p, _ in geom.padding], extra,
                                    geom.groups, geom.dilation)
            return _kept_or_copied(dx, gx)
        if x is None:  # dx only: the kernel reads nothing of x but its shape
            x = dy.new_zeros(()).expand(dy.shape[0], weight.shape[1] * geom.groups, *geom.in_size)
        x, padding = _conv_input(x, geom)
        dy_dtype = dy.dtype
        dy, x, weight = self._low(dy, x, weight) or (dy, x, weight)
        gx, gw, gb = torch.ops.aten.convolution_backward(
            dy, x, weight, [weight.shape[0]], geom.stride, padding, geom.dilation, False, [0, 0], geom.groups,
            [dx is not None, dweight is not None, dbias is not None])
        if dweight is not None:
            dweight += gw
        if dbias is not None:
            dbias += gb
        if dx is None:
            return None
        if not geom.plain:  # from the explicitly padded (or cut) input back to x: cut the padding, zeros
            (top, _), (left, _), (h, w) = *geom.padding, geom.in_size
            gx = F.pad(gx, (-left, w + left - gx.shape[3], -top, h + top - gx.shape[2]))  # for cut rows
        if dx is NEW:
            return gx.to(dy_dtype)
        dx.copy_(gx)
        return dx

    # Max pooling on the CPU: the NumPy backend's Numba kernels on the tensors' memory (PyTorch's
    # max_pool2d_with_indices took 6.3 ms per call on the MNIST CNN's (64, 32, 28, 28) at one thread).
    def max_pool2d(self, x, kernel, stride, padding, out, index):
        if _numba_ok(x) and out.is_contiguous() and (index is None or index.is_contiguous()):
            _CPU.max_pool2d(*_host(x.contiguous()), kernel, stride, padding, out.numpy(),
                            _host_or_none(index))
            return out
        ceil_mode = _ceil_mode(x, kernel, stride, padding, out)
        if index is None:
            return out.copy_(F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode))
        # written straight into the workspaces (three kernels on a GPU were one)
        torch.ops.aten.max_pool2d_with_indices.out(x, kernel, stride, padding, 1, ceil_mode, out=out,
                                                   indices=index)
        return out

    def max_pool2d_backward(self, dy, index, out):
        if _numba_ok(dy) and out.is_contiguous():
            _CPU.max_pool2d_backward(*_host(dy, index.contiguous(), out))
            return out
        n, c = out.shape[0], out.shape[1]
        out.zero_()
        out.view(n * c, -1).scatter_add_(1, index.reshape(n * c, -1), dy.reshape(n * c, -1))
        return out

    # Window sums (divisor_override=1, padding counted as zeros) times the layer's 1/divisor table.
    def avg_pool2d(self, x, kernel, stride, padding, inverse, out):
        if _numba_ok(x) and out.is_contiguous() and inverse.is_contiguous():
            _CPU.avg_pool2d(*_host(x.contiguous()), kernel, stride, padding, *_host(inverse, out))
            return out
        torch.mul(F.avg_pool2d(x, kernel, stride, padding, _ceil_mode(x, kernel, stride, padding, out),
                               True, 1), inverse, out=out)
        return out

    def avg_pool2d_backward(self, dy, kernel, stride, padding, inverse, out):
        if _numba_ok(dy) and out.is_contiguous() and inverse.is_contiguous():
            _CPU.avg_pool2d_backward(*_host(dy.contiguous()), kernel, stride, padding, *_host(inverse, out))
            return out
        out.copy_(torch.ops.aten.avg_pool2d_backward(dy * inverse, out, kernel, stride, padding,
                                                     _ceil_mode(out, kernel, stride, padding, dy), True, 1))
        return out

    # ----------------------------------------------------------------- activations
    def activation(self, name, z, out, alpha=None, *, bias=None):
        if _host_activation(name, z, out, bias):  # (bias and activation in one pass there)
            _CPU.activation(name, *_host(z, out), alpha, bias=_host_or_none(bias))
            return out
        if bias is not None:
            z += bias
        a = DEFAULT_ALPHA.get(name, 0.0) if alpha is None else alpha
        if name in _OUT_VARIANT:  # written straight into out (which may be z)
            return _OUT_VARIANT[name](z, out, a)
        y = _act(name, z, a)
        if y is not out:
            out.copy_(y)
        return out

    def matmul(self, a, b, out):
        low = self._low(a, b)
        if low is None:
            if _in_openblas(a, b, out):
                with blas_threads.one_thread():
                    _CPU.matmul(*_host(a, b, out))
                return out
            return torch.matmul(a, b, out=out)
        out.copy_(torch.matmul(*low))
        return out

    # Off the CPU the bias goes in with the product (addmm: one kernel less a Dense layer on a GPU); on CPU
    # tensors the Numba kernel adds it in the activation's pass.
    def linear(self, x, weight, bias, activation, z, out):
        if bias is None or _numba_ok(z) or self._low_dtype() is not None:
            return super().linear(x, weight, bias, activation, z, out)
        torch.addmm(bias, x, weight.T, out=z)
        return self.activation(activation, z, out)

    def matmul_acc(self, a, b, out, scratch=None):
        low = self._low(a, b)
        if low is not None:
            out += torch.matmul(*low)
        elif out.dim() == 2 and scratch is not None and _in_openblas(a, b, out, scratch):
            with blas_threads.one_thread():
                _CPU.matmul_acc(*_host(a, b, out, scratch))
        elif out.dim() == 2:
            out.addmm_(a, b)
        else:
            super().matmul_acc(a, b, out, scratch)

    # Class-target losses off the CPU (sync-free): PyTorch's own kernels, one each way where class_labels,
    # class_weights and the gradient's scatter took fourteen; an out-of-range label fails on the device, as
    # the composed ops' gathers do. (On the CPU the losses run on the NumPy backend over host views.)
    def nll_loss(self, scores, target, weight, ignore_index):
        if _on_cpu(scores):
            return None
        return torch.ops.aten.nll_loss_forward(scores, target, weight, 1, ignore_index)  # 1: the mean

    def nll_loss_backward(self, scores, target, weight, ignore_index, total_weight, out):
        one = self._ones(1, scores.device, scores.dtype)[0]  # dL/dloss
        return torch.ops.aten.nll_loss_backward.grad_input(one, scores, target, weight, 1, ignore_index,
                                                           total_weight, grad_input=out)

    # Off the CPU one product with a ones vector (out += rows^T 1): one kernel where the sum and the add were
    # two (on the CPU they measured the same: 0.07-0.12 ms for 1792 x 512).
    def sum_rows_acc(self, x, out):
        rows = x.reshape(-1, x.shape[-1])
        if _on_cpu(out):
            out += rows.sum(dim=0)
        else:
            out.addmv_(rows.T, self._ones(rows.shape[0], out.device, out.dtype))

    def _ones(self, n: int, device, dtype):
        """n ones on the device, a view of a vector kept per device and dtype and grown when needed."""
        cache = self.__dict__.setdefault("_ones_vectors", {})
        key = (str(device), dtype)
        if key not in cache or cache[key].shape[0] < n:
            cache[key] = torch.ones(n, dtype=dtype, device=device)
        return cache[key][:n]

    def activation_backward(self, name, dy, z, y, out, alpha=None, *, bias_grad=None):
        a = DEFAULT_ALPHA.get(name, 0.0) if alpha is None else alpha
        if name not in ("linear", "softmax", "log_softmax") and _host_activation(name, dy, out):
            # the NumPy backend's one-pass kernel on the tensors' memory (one thread, 256 x 1024: ReLU's
            # 128 us against 150 in PyTorch's own backward kernel, GELU's 172 against 297)
            _CPU.activation_backward(name, *_host(dy), _host_or_none(z), _host_or_none(y), *_host(out), alpha,
                                     bias_grad=_host_or_none(bias_grad))
            return out
        # PyTorch's one-pass backward kernels, on its threads (two threads, 256 x 1024: ReLU 46 us against
        # 183 in the Numba kernel on one core, softmax's 55 against 220 in four torch ops)
        fused = _BACKWARD.get(name)
        if name == "linear":
            g = dy
        elif fused is not None and out.is_contiguous():
            g = fused(dy, z, y, a, out)
        else:  # PyTorch's own derivative, so both backends agree with it at the kinks
            with torch.enable_grad():
                zz = z.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(_act(name, zz, a), zz, dy)
        if g is not out:
            out.copy_(g)
        if bias_grad is not None:
            self.sum_rows_acc(out, bias_grad)
        return out


    # ----------------------------------------------------------------- sequence models (norms, attention)
    # RMSNorm runs the NumPy backend's one-pass kernels on one core at any torch thread count (two threads,
    # 768x128: forward 27 against 93 us in five torch ops, backward 46 against 233), LayerNorm only at one
    # thread: alone its kernel was faster at two as well (768x128: 36 against PyTorch's 61 us, backward 56
    # against 101), but inside the char GPT's step it made the step slower (4 of 4 alternating pairs).
    # Where PyTorch's run, the norms keep its results where the layer asks for NEW (fresh_outputs): each
    # copy into a workspace cost 28 us inside the char GPT's step (18 a step).
    def norm_rows(self, x, weight, bias, eps, center, out, mean, rstd):
        if _host_below(_HOST_NORM_BELOW[center], x, weight, bias, mean, rstd, out):
            out = self._new_like(out, x)
            _CPU.norm_rows(*_host(x, weight), _host_or_none(bias), eps, center, *_host(out, mean, rstd))
            return out
        rows = x.reshape(-1, x.shape[-1])
        if center:  # LayerNorm: PyTorch's fused kernel (its out= variant is that kernel and three copies)
            y, mu, rs = torch.native_layer_norm(rows, [rows.shape[-1]], weight, bias, eps)
            mean.copy_(mu.reshape(-1))
            rstd.copy_(rs.reshape(-1))
        else:  # RMSNorm
            mean.zero_()
            torch.rsqrt((rows * rows).mean(dim=-1) + eps, out=rstd)
            y = rows * rstd[:, None] * weight
            if bias is not None:
                y += bias
        return _kept_or_copied(out, y.reshape(x.shape))

    def norm_rows_backward(self, dy, x, weight, mean, rstd, center, dx, dweight, dbias):
        if _host_below(_HOST_NORM_BELOW[center], dy, x, weight, mean, rstd, dweight, dbias, dx):
            dx = self._new_like(dx, dy)
            _CPU.norm_rows_backward(*_host(dy, x, weight, mean, rstd), center, *_host(dx, dweight),
                                    _host_or_none(dbias))
            return dx
        shape = dy.shape
        x, dy = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
        if center:  # LayerNorm; the backward does not read the bias argument, so weight stands in for it
            stats = mean.reshape(-1, 1), rstd.reshape(-1, 1)
            gx, gw, gb = torch.ops.aten.native_layer_norm_backward(
                dy, x, [x.shape[-1]], *stats, weight, weight, [True, True, True])
            dweight += gw
            if dbias is not None:
                dbias += gb
        else:  # RMSNorm
            xhat = x * rstd[:, None]
            g = dy * weight
            gx = (g - xhat * (g * xhat).mean(dim=-1, keepdim=True)) * rstd[:, None]
            dweight += (dy * xhat).sum(dim=0)
            if dbias is not None:
                dbias += dy.sum(dim=0)
        return _kept_or_copied(dx, gx.reshape(shape))

    # BatchNorm: on one torch thread the NumPy backend's fused kernels on the tensors' memory (PyTorch's
    # mean + var alone took 2.3 ms on (64, 16, 784), the Numba statistics + normalisation ~1 ms); with more
    # threads, and off the CPU, PyTorch's own (statistics and normalisation in one call, on its threads),
    # their results kept where the layer asks for NEW.
    def batch_norm_stats(self, x, mean, var):  # (the reference's training forward, for the parity table)
        var_, mean_ = torch.var_mean(x, dim=(0, 2), correction=0)
        mean.copy_(mean_)
        var.copy_(var_)

    def batch_norm_training(self, x, weight, bias, eps, out, mean, var, rstd, relu=False):
        if _one_thread_host(x, weight, bias, mean, var, rstd, out):
            out = self._new_like(out, x)
            _CPU.batch_norm_training(*_host(x, weight, bias), eps, *_host(out, mean, var, rstd), relu)
            return out
        y, mu, rs = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        mean.copy_(mu)
        rstd.copy_(rs)
        torch.pow(rs, -2, out=var)  # the biased variance it normalised with
        var -= eps
        if relu:
            y.clamp_min_(0.0)
        return _kept_or_copied(out, y)

    # Where PyTorch's kernel runs (not the one-thread host kernels) in float32/float64: the statistics
    # written into the layer's workspaces and the running averages updated in the same call (on a GPU one
    # kernel where the copies, the variance and the update took ten).
    def fused_batch_norm_training(self, x, weight, bias, eps, out, mean, rstd, relu, running_mean,
                                  running_var, momentum):
        if x.dtype not in (torch.float32, torch.float64) or \
                _one_thread_host(x, weight, bias, mean, rstd, running_mean, running_var, out):
            return None
        y = torch.empty_like(x) if out is NEW else out
        torch.ops.aten.native_batch_norm.out(x, weight, bias, running_mean, running_var, True, momentum, eps,
                                             out=y, save_mean=mean, save_invstd=rstd)
        return y.clamp_min_(0.0) if relu else y

    def batch_norm(self, x, mean, rstd, weight, bias, out, relu=False):
        if _one_thread_host(x, mean, rstd, weight, bias, out):
            out = self._new_like(out, x)
            _CPU.batch_norm(*_host(x, mean, rstd, weight, bias, out), relu)
            return out
        scale = rstd * weight
        out = torch.mul(x, scale[:, None]) if out is NEW else torch.mul(x, scale[:, None], out=out)
        out += (bias - mean * scale)[:, None]
        if relu:
            out.clamp_min_(0.0)
        return out

    def batch_norm_backward(self, dy, x, mean, rstd, weight, training, dx, dweight, dbias, relu_out=None):
        if _one_thread_host(dy, x, mean, rstd, weight, dweight, dbias, dx):
            dx = self._new_like(dx, dy) if dx is not None else None
            _CPU.batch_norm_backward(*_host(dy, x, mean, rstd, weight), training, _host_or_none(dx),
                                     *_host(dweight, dbias), _host_or_none(relu_out))
            return dx
        if relu_out is not None:  # dy where the forward's ReLU passed it, else 0 (one pass)
            dy = torch.ops.aten.threshold_backward(dy, relu_out, 0)
        if not training:  # running statistics (PyTorch's kernel would take rstd from them and eps)
            torch.sum(dy, dim=(0, 2), out=dbias)
            torch.sum(dy * ((x - mean[:, None]) * rstd[:, None]), dim=(0, 2), out=dweight)
            if dx is None:
                return None
            return _kept_or_copied(dx, torch.mul(dy, (weight * rstd)[:, None]))
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            dy.contiguous(), x, weight, None, None, mean, rstd, True, 0.0, [dx is not None, True, True])
        dweight.copy_(gw)  # (the out= variant took twice as long on the CPU: 292-353 against 146-206 us for
        dbias.copy_(gb)  # (64, 16, 784) at two threads)
        return None if dx is None else _kept_or_copied(dx, gx)

    # PyTorch's fused kernels, their results kept where the layer asks for NEW (two threads, 32 x 32 x 16x16:
    # forward + backward 0.43 -> 0.33 ms without the two copies).
    def group_norm(self, x, weight, bias, groups, eps, out, mean, rstd):
        n, c, m = x.shape
        y, mu, rs = torch.native_group_norm(x, weight, bias, n, c, m, groups, eps)
        mean.copy_(mu.reshape(-1))
        rstd.copy_(rs.reshape(-1))
        return _kept_or_copied(out, y)

    def group_norm_backward(self, dy, x, weight, mean, rstd, groups, dx, dweight, dbias):
        n, c, m = x.shape
        stats = mean.reshape(n, groups), rstd.reshape(n, groups)
        gx, gw, gb = torch.ops.aten.native_group_norm_backward(dy.contiguous(), x, *stats, weight, n, c, m,
                                                               groups, [True, True, True])
        dweight += gw
        dbias += gb
        return _kept_or_copied(dx, gx)

    # Forward: in place in ``out``, no allocation (torch's vectorised softmax took ~5 % less CPU in the
    # char-GPT step than the Numba kernel on the same memory), the scale and the causal mask in one pass as
    # a cached additive bias (0, -inf above the diagonal): a masked_fill_ with the broadcast (T, T) bool
    # mask took 77 us over the char GPT's (12, 4, 64, 64) scores, the whole softmax 162 against 78 us (two
    # threads). Backward on the CPU: the fused Numba kernel (no (N, H, T, T) temporaries); elsewhere torch
    # ops.
    def attention_softmax(self, scores, out, causal, scale=1.0):
        if causal:  # out = bias + scale * scores
            bias = self._causal_bias(scores.shape[-1], out.device, out.dtype)
            torch.add(bias, scores, alpha=scale, out=out)
        else:
            torch.mul(scores, scale, out=out)
        return torch.ops.aten._softmax.out(out, -1, False, out=out)

    def attention_softmax_backward(self, dprobs, probs, out, scale=1.0):
        if _numba_ok(probs) and all(a.is_contiguous() for a in (dprobs, probs, out)):
            _CPU.attention_softmax_backward(*_host(dprobs, probs, out), scale)
            return out
        rowsum = (dprobs * probs).sum(dim=-1, keepdim=True)
        torch.mul(probs, dprobs - rowsum, out=out)
        out *= scale
        return out

    # Attention's core on CPU tensors while torch runs at most FUSED_ATTENTION_THREADS threads: the NumPy
    # backend's fused kernel on the tensors' memory (a GEMM per head with the causal zeros skipped, no
    # (N, H, T, T) temporary), on one core. torch's batched products copy each strided head operand first
    # (48 clones a char GPT step): at two threads the one-core kernel still made that step 1-4 % faster
    # (15 of 25 alternating pairs of processes); with more threads torch's products use them.
    def attention(self, q, k, v, probs, out, causal, scale, mask, keep_scale, scratch):
        host = _host_heads(q, k, v, probs, out)
        if host is not None:
            _CPU.attention(*host, causal, scale, _host_or_none(mask), keep_scale, None)
            return
        super().attention(q, k, v, probs, out, causal, scale, mask, keep_scale, scratch)

    def attention_backward(self, do, probs, q, k, v, dq, dk, dv, causal, scale, mask, keep_scale, scratch):
        host = _host_heads(do, probs, q, k, v, dq, dk, dv)
        if host is not None:
            _CPU.attention_backward(*host, causal, scale, _host_or_none(mask), keep_scale, None)
            return
        super().attention_backward(do, probs, q, k, v, dq, dk, dv, causal, scale, mask, keep_scale, scratch)

    # Attention on a GPU: the fused kernel PyTorch's scaled_dot_product_attention would pick for these
    # operands (the memory-efficient kernel for float32: FlashAttention's kin), called forward and
    # backward as the convolutions are: one kernel each way instead of a dozen (the batched
    # products copy each strided head operand first), and a (B, H, Tq) log-sum-exp kept instead of the
    # (B, H, Tq, Tk) probabilities (nanoGPT at batch 64: 100 MB a layer). Not with attention dropout (its
    # masks come from neuronet's generator) nor on the CPU, where the NumPy kernel is the faster
    # (char GPT's shapes, forward + backward at two threads: 845-1,036 against 1,720-2,186 us for
    # PyTorch's CPU flash kernel); ``fused_attention_devices`` lists where it runs.
    def fused_attention(self, q, k, v, causal, scale):
        if q.device.type not in self.fused_attention_devices or (causal and q.shape[2] != k.shape[2]):
            return None
        kernel = _SDPA_KERNELS.get((q.is_cpu, int(_sdpa_choice(q, k, v, causal, scale))))
        if kernel is None:
            return None
        out, state = kernel.forward(q, k, v, causal, scale)
        return out, (kernel, state)

    def fused_attention_backward(self, do, q, k, v, out, saved, dq, dk, dv, causal, scale):
        kernel, state = saved
        for grad, result in zip((dq, dk, dv), kernel.backward(do, q, k, v, out, state, causal, scale),
                                strict=True):
            grad.copy_(result)

    def _causal_bias(self, t: int, device, dtype):
        """(t, t): 0 on and below the diagonal, -inf above; made once per size, device and dtype."""
        cache = self.__dict__.setdefault("_causal_biases", {})
        key = (t, str(device), dtype)
        if key not in cache:
            cache[key] = torch.zeros(t, t, dtype=dtype, device=device).masked_fill_(
                torch.ones(t, t, dtype=torch.bool, device=device).triu_(1), float("-inf"))
        return cache[key]

    # ----------------------------------------------------------------- recurrent cells (LSTM, GRU)
    # On the CPU the cells run the NumPy backend's fused Numba kernels on the tensors' own memory
    # (``Tensor.numpy()`` shares it): one pass instead of ~10 dispatched torch ops per step, 3.8x less
    # CPU time per cell forward + backward at N=64, H=128. On CUDA the forward cells are PyTorch's
    # fused ``_thnn_fused_*_cell`` kernels (what nn.LSTM/nn.GRU run there), the GRU backward too; the
    # LSTM backward stays in torch ops (its fused kernel wants c_t, which this interface does not pass).
    # The whole LSTM layer-direction as oneDNN's fused layer (what nn.LSTM runs on the CPU), where PyTorch
    # has it: float32 on the CPU, outside a low-precision context. 11.1 ms forward + backward against
    # 14.5 ms for the step-by-step cells (T=28, N=64, H=128, one thread).
    def lstm_sequence(self, seq, w_ih, w_hh, b_ih, b_hh, reverse, saved):
        if not (_MKLDNN_RNN and seq.device.type == "cpu" and seq.dtype == torch.float32
                and self._low_dtype() is None) or self._numpy_loops(seq.dtype):
            return None
        # The initial h and c, zeros shared by every pass (which only reads them); two tensors, not one
        # twice: oneDNN's backward took 2.96-3.02 against 2.85-2.89 ms with h and c the same tensor.
        h0, c0 = (self._zeros(name, (seq.shape[1], w_hh.shape[1]), seq) for name in ("lstm.h0", "lstm.c0"))
        out, hy, cy, workspace = torch.ops.aten.mkldnn_rnn_layer(
            seq, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse, [], _LSTM_MODE, w_hh.shape[1], 1, True, False,
            False, True)
        saved.update(out=out, hy=hy, cy=cy, workspace=workspace, h0=h0, c0=c0)
        return out

    def lstm_sequence_backward(self, seq, w_ih, w_hh, b_ih, b_hh, reverse, saved, dh, dout):
        # No dL/d(outputs) (only the last h has one) or dL/dc_T: cached zeros, where given None oneDNN's
        # backward fills a (T, N, H) tensor of zeros every call (62 us a step for the sequential MNIST).
        out, cy = saved["out"], saved["cy"]
        dout = self._zeros("lstm.dout", tuple(out.shape), out) if dout is None else dout.contiguous()
        grads = torch.ops.aten.mkldnn_rnn_layer_backward(
            seq, w_ih, w_hh, b_ih, b_hh, saved["h0"], saved["c0"], out, saved["hy"], cy, dout,
            dh.contiguous(), self._zeros("lstm.dc", tuple(cy.shape), cy), reverse, _LSTM_MODE,
            w_hh.shape[1], 1, True, True, False, [], False, saved["workspace"])
        return grads[:5]

    # With torch on one CPU thread a recurrent layer's whole time loop runs in the NumPy backend's Numba
    # kernels on the tensors' memory (its per-step products on packed_gemm, W_hh packed by ``prepack``):
    # they took the LSTM step below oneDNN's fused layer there, where PyTorch's nn.LSTM runs oneDNN.
    # With more threads torch's spinning OpenMP workers would meet the NumPy row threads: oneDNN then.
    def _numpy_loops(self, dtype) -> bool:
        return self._device.type == "cpu" and torch.get_num_threads() == 1 and self._low_dtype() is None \
            and str(dtype).removeprefix("torch.") in ("float32", "float64")

    def prepacked_shape(self, shape, dtype):
        if self._numpy_loops(dtype):
            return _CPU.prepacked_shape(shape, dtype)
        return super().prepacked_shape(shape, dtype)

    def prepack(self, w, out):
        if tuple(out.shape) == tuple(w.shape):
            return super().prepack(w, out)
        _CPU.prepack(*_host(w, out))  # a packed buffer: prepacked_shape chose the NumPy loops
        return out

    def _loop(self, name: str, weight, *args) -> None:
        """``Ops.<name>``, step by step in torch ops; or, where ``prepack`` packed ``weight`` (one torch
        thread, ``_numpy_loops``), the NumPy backend's whole-loop kernel on the tensors' memory."""
        if weight.dim() == 2:
            getattr(super(), name)(*args)
        else:
            getattr(_CPU, name)(*(a.numpy() if isinstance(a, torch.Tensor) else a for a in args))

    def lstm_steps(self, seq, w_ih_t, gates, h, c, tanh_c, w_hh_t, bias, gh, reverse, rows):
        self._loop("lstm_steps", w_hh_t, seq, w_ih_t, gates, h, c, tanh_c, w_hh_t, bias, gh, reverse, rows)

    def lstm_steps_backward(self, seq, h, gates, c, tanh_c, dh, dc, dgates, w_hh, dout, reverse, rows,
                            dw_ih=None, dw_hh=None, dbias=None):
        self._loop("lstm_steps_backward", w_hh, seq, h, gates, c, tanh_c, dh, dc, dgates, w_hh, dout, reverse,
                   rows, dw_ih, dw_hh, dbias)

    def gru_steps(self, seq, w_ih_t, gates, h, hn, w_hh_t, b_ih, b_hh, gh, reverse, rows):
        self._loop("gru_steps", w_hh_t, seq, w_ih_t, gates, h, hn, w_hh_t, b_ih, b_hh, gh, reverse, rows)

    def gru_steps_backward(self, seq, h, gates, hn, dh, dgx, dgh, w_hh, dout, dh_direct, reverse, rows,
                           dw_ih=None, dw_hh=None, db_ih=None, db_hh=None):
        self._loop("gru_steps_backward", w_hh, seq, h, gates, hn, dh, dgx, dgh, w_hh, dout, dh_direct,
                   reverse, rows, dw_ih, dw_hh, db_ih, db_hh)

    def lstm_cell(self, gates, gh, bias, c_prev, c, tanh_c, h):
        if _numba_ok(gates):
            _CPU.lstm_cell(*_host(gates, gh, bias, c_prev, c, tanh_c, h))
            return
        if gates.is_cuda:
            fused = torch.ops.aten._thnn_fused_lstm_cell
            hy, cy, act = fused(gates, gh, c_prev, bias, self._zeros("bias", tuple(bias.shape), bias))
            gates.copy_(act)
            c.copy_(cy)
            torch.tanh(cy, out=tanh_c)
            h.copy_(hy)
            return
        hid = c.shape[1]
        gates += gh
        gates += bias
        gates[:, :2 * hid].sigmoid_()
        gates[:, 2 * hid:3 * hid].tanh_()
        gates[:, 3 * hid:].sigmoid_()
        i, f, g, o = gates.split(hid, dim=1)
        torch.mul(f, c_prev, out=c)
        c.addcmul_(i, g)
        torch.tanh(c, out=tanh_c)
        torch.mul(o, tanh_c, out=h)

    def lstm_cell_backward(self, gates, c_prev, tanh_c, dh, dc, dgates):
        if _numba_ok(gates):
            _CPU.lstm_cell_backward(*_host(gates, c_prev, tanh_c, dh, dc, dgates))
            return
        i, f, g, o = gates.split(dh.shape[1], dim=1)
        di, df, dg, do = dgates.split(dh.shape[1], dim=1)
        dc.addcmul_(dh * o, 1.0 - tanh_c * tanh_c)
        torch.mul(dc * g, i * (1.0 - i), out=di)
        torch.mul(dc * c_prev, f * (1.0 - f), out=df)
        torch.mul(dc * i, 1.0 - g * g, out=dg)
        torch.mul(dh * tanh_c, o * (1.0 - o), out=do)
        dc *= f

    def gru_cell(self, gates, gh, b_ih, b_hh, h_prev, hn, h):
        hid = h.shape[1]
        if _numba_ok(gates):
            _CPU.gru_cell(*_host(gates, gh, b_ih, b_hh, h_prev, hn, h))
            return
        if gates.is_cuda:  # workspace: r, z, n, h_prev, h W_hn^T + b_hn
            hy, work = torch.ops.aten._thnn_fused_gru_cell(gates, gh, h_prev, b_ih, b_hh)
            gates.copy_(work[:, :3 * hid])
            hn.copy_(work[:, 4 * hid:])
            h.copy_(hy)
            return
        gates += b_ih
        a_r, a_z, a_n = gates.split(hid, dim=1)
        b = gh + b_hh
        b_r, b_z, b_n = b.split(hid, dim=1)
        hn.copy_(b_n)
        gates[:, :2 * hid] += b[:, :2 * hid]
        gates[:, :2 * hid].sigmoid_()
        a_n.addcmul_(a_r, hn).tanh_()
        torch.lerp(a_n, h_prev, a_z, out=h)

    def gru_cell_backward(self, gates, hn, h_prev, dh, dgx, dgh, dh_direct):
        if _numba_ok(gates):
            _CPU.gru_cell_backward(*_host(gates, hn, h_prev, dh, dgx, dgh, dh_direct))
            return
        if gates.is_cuda:
            work = torch.cat([gates, h_prev, hn], dim=1)
            gx, gh, direct, _, _ = torch.ops.aten._thnn_fused_gru_cell_backward(dh, work, True)
            dgx.copy_(gx)
            dgh.copy_(gh)
            dh_direct.copy_(direct)
            return
        r, z, n = gates.split(dh.shape[1], dim=1)
        dr, dz, dn = dgx.split(dh.shape[1], dim=1)
        torch.mul(dh * (1.0 - z), 1.0 - n * n, out=dn)
        torch.mul(dh * (h_prev - n), z * (1.0 - z), out=dz)
        torch.mul(dn * hn, r * (1.0 - r), out=dr)
        dgh.copy_(dgx)
        dgh[:, 2 * dh.shape[1]:] *= r
        torch.mul(dh, z, out=dh_direct)

    def _zeros(self, name: str, shape: tuple, like):
        """Zeros of ``shape`` in like's dtype and on its device that nothing writes, for an argument that
        contributes nothing (a bias, an initial state, a gradient of 0): a view of a grow-only buffer
        kept per ``name``, dtype and device, zeroed once."""
        key, n = (name, like.dtype, like.device), math.prod(shape)
        cache = self.__dict__.setdefault("_zero_cache", {})
        zeros = cache.get(key)
        if zeros is None or zeros.numel() < n:
            zeros = cache[key] = torch.zeros(max(n, 1), dtype=like.dtype, device=like.device)
        return zeros[:n].view(shape)

    # ----------------------------------------------------------------- optimizer updates
    # On CPU float tensors, NumpyOps' fused Numba pass over the flat buffer's host view (one pass where
    # torch.optim's ops make five or six: the MLP's Adam step 1.2 -> 0.3 ms); elsewhere torch.optim's ops
    # per span (the ``_*_span`` steps below).
    def adam_step(self, p, g, m, v, scratch, spans, **kw):
        if not self._host_update("adam_step", (p, g, m, v), spans, kw):
            super().adam_step(p, g, m, v, scratch, spans, **kw)

    def sgd_step(self, p, g, buf, scratch, spans, **kw):
        if not self._host_update("sgd_step", (p, g, buf), spans, kw):
            super().sgd_step(p, g, buf, scratch, spans, **kw)

    def rmsprop_step(self, p, g, square_avg, grad_avg, buf, scratch, spans, **kw):
        if not self._host_update("rmsprop_step", (p, g, square_avg, grad_avg, buf), spans, kw):
            super().rmsprop_step(p, g, square_avg, grad_avg, buf, scratch, spans, **kw)

    def adagrad_step(self, p, g, state_sum, scratch, spans, **kw):
        if not self._host_update("adagrad_step", (p, g, state_sum), spans, kw):
            super().adagrad_step(p, g, state_sum, scratch, spans, **kw)

    def nadam_step(self, p, g, m, v, scratch, spans, **kw):
        if not self._host_update("nadam_step", (p, g, m, v), spans, kw):
            super().nadam_step(p, g, m, v, scratch, spans, **kw)

    def _host_update(self, name: str, arrays: tuple, spans, kw: dict) -> bool:
        """Run NumpyOps' ``name`` on the host views of ``arrays`` (None: absent state) when every one is
        a contiguous CPU float32/float64 tensor; False (nothing done) otherwise."""
        if not all(_numba_ok(a) and a.is_contiguous() for a in arrays if a is not None):
            return False
        getattr(_CPU, name)(*(_host_or_none(a) for a in arrays), None, spans, **kw)
        return True

    def _adam_span(self, p, g, m, v, scratch, *, lr, beta1, beta2, eps, weight_decay, step, decoupled):
        if weight_decay and decoupled:
            p.mul_(1.0 - lr * weight_decay)
        elif weight_decay:
            g = torch.add(g, p, alpha=weight_decay, out=scratch[0])
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = torch.sqrt(v, out=scratch[1]).div_((1.0 - beta2 ** step) ** 0.5).add_(eps)
        p.addcdiv_(m, denom, value=-lr / (1.0 - beta1 ** step))

    def _sgd_span(self, p, g, buf, scratch, *, lr, momentum, dampening, nesterov, weight_decay, first):
        if weight_decay:
            g = torch.add(g, p, alpha=weight_decay, out=scratch[0])
        if momentum:
            if first:
                buf.copy_(g)
            else:
                buf.mul_(momentum).add_(g, alpha=1.0 - dampening)
            g = torch.add(g, buf, alpha=momentum, out=scratch[0]) if nesterov else buf
        p.add_(g, alpha=-lr)

    def _rmsprop_span(self, p, g, square_avg, grad_avg, buf, scratch, *, lr, alpha, eps, weight_decay,
                      momentum, centered):
        if weight_decay:
            g = torch.add(g, p, alpha=weight_decay, out=scratch[0])
        square_avg.mul_(alpha).addcmul_(g, g, value=1.0 - alpha)
        if centered:
            grad_avg.lerp_(g, 1.0 - alpha)
            avg = torch.addcmul(square_avg, grad_avg, grad_avg, value=-1.0, out=scratch[1]).sqrt_()
        else:
            avg = torch.sqrt(square_avg, out=scratch[1])
        avg.add_(eps)
        if momentum:
            buf.mul_(momentum).addcdiv_(g, avg)
            p.add_(buf, alpha=-lr)
        else:
            p.addcdiv_(g, avg, value=-lr)

    def _adagrad_span(self, p, g, state_sum, scratch, *, lr, eps, weight_decay):
        if weight_decay:
            g = torch.add(g, p, alpha=weight_decay, out=scratch[0])
        state_sum.addcmul_(g, g, value=1)
        std = torch.sqrt(state_sum, out=scratch[1]).add_(eps)
        p.addcdiv_(g, std, value=-lr)

    def _nadam_span(self, p, g, m, v, scratch, *, lr, beta1, beta2, eps, weight_decay, step, mu, mu_next,
                    mu_product):
        if weight_decay:
            g = torch.add(g, p, alpha=weight_decay, out=scratch[0])
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = torch.div(v, 1.0 - beta2 ** step, out=scratch[1]).sqrt_().add_(eps)
        p.addcdiv_(g, denom, value=-lr * (1.0 - mu) / (1.0 - mu_product))
        p.addcdiv_(m, denom, value=-lr * mu_next / (1.0 - mu_product * mu_next))


def _conv_input(x, geom):
    """x and the padding to give PyTorch's kernels. Where padding is asymmetric, or the output is
    shorter than the floor rule (a transposed convolution's output_padding >= stride), x is padded
    (or cut, F.pad taking negative sizes) here to exactly the rows and columns the windows read."""
    if geom.plain:
        return x, tuple(lo for lo, _ in geom.padding)
    ((top, _), (left, _)), (reach_h, reach_w) = geom.padding, geom.reach
    return F.pad(x, (left, reach_w - left - x.shape[3], top, reach_h - top - x.shape[2])), (0, 0)


# Elementwise activations written straight into out (which may be z) by PyTorch's own out= kernels: a
# result made apart and then copied was most of the time (GELU over 768x512 at two threads: 485 against
# 176 us).
_OUT_VARIANT = {
    "relu": lambda z, out, a: torch.clamp_min(z, 0.0, out=out),  # NaN propagates, as torch.relu
    "sigmoid": lambda z, out, a: torch.sigmoid(z, out=out),
    "tanh": lambda z, out, a: torch.tanh(z, out=out),
    "gelu": lambda z, out, a: torch.ops.aten.gelu.out(z, approximate="none", out=out),
    "gelu_tanh": lambda z, out, a: torch.ops.aten.gelu.out(z, approximate="tanh", out=out),
    "silu": lambda z, out, a: torch.ops.aten.silu.out(z, out=out),
    "leaky_relu": lambda z, out, a: torch.ops.aten.leaky_relu.out(z, a, out=out),
    "elu": lambda z, out, a: torch.ops.aten.elu.out(z, a, out=out),
    "selu": lambda z, out, a: torch.ops.aten.elu.out(z, SELU_ALPHA, SELU_SCALE, 1.0, out=out),
    "softmax": lambda z, out, a: _softmax_into(z, out, torch.ops.aten._softmax),
    "log_softmax": lambda z, out, a: _softmax_into(z, out, torch.ops.aten._log_softmax),
}


def _softmax_into(z, out, op):
    """op(z) over the last axis written into out (two threads, 256 x 1024: 92 us against 126 for a new
    tensor copied in), or made apart and copied where out is z."""
    if out.data_ptr() == z.data_ptr():
        return out.copy_(op(z, -1, False))
    return op.out(z, -1, False, out=out)

# dL/dz from dy (and z or y = act(z), whichever PyTorch's backward kernel reads), written into out.
_BACKWARD = {
    "relu": lambda dy, z, y, a, out: torch.ops.aten.threshold_backward.grad_input(dy, y, 0, grad_input=out),
    "sigmoid": lambda dy, z, y, a, out: torch.ops.aten.sigmoid_backward.grad_input(dy, y, grad_input=out),
    "tanh": lambda dy, z, y, a, out: torch.ops.aten.tanh_backward.grad_input(dy, y, grad_input=out),
    "gelu": lambda dy, z, y, a, out: torch.ops.aten.gelu_backward.grad_input(dy, z, approximate="none",
                                                                               grad_input=out),
    "gelu_tanh": lambda dy, z, y, a, out: torch.ops.aten.gelu_backward.grad_input(dy, z, approximate="tanh",
                                                                                    grad_input=out),
    "silu": lambda dy, z, y, a, out: torch.ops.aten.silu_backward.grad_input(dy, z, grad_input=out),
    "leaky_relu": lambda dy, z, y, a, out: torch.ops.aten.leaky_relu_backward.grad_input(dy, z, a, False,
                                                                                         grad_input=out),
    "elu": lambda dy, z, y, a, out: torch.ops.aten.elu_backward.grad_input(dy, a, 1.0, 1.0, False, z,
                                                                           grad_input=out),
    "selu": lambda dy, z, y, a, out: torch.ops.aten.elu_backward.grad_input(dy, SELU_ALPHA, SELU_SCALE, 1.0,
                                                                            False, z, grad_input=out),
    "softmax": lambda dy, z, y, a, out: torch.ops.aten._softmax_backward_data.out(dy, y, -1, y.dtype,
                                                                                  grad_input=out),
    "log_softmax": lambda dy, z, y, a, out: torch.ops.aten._log_softmax_backward_data.out(dy, y, -1, y.dtype,
                                                                                          out=out),
}

_ACT = {
    "relu": lambda v, a: torch.relu(v),
    "sigmoid": lambda v, a: torch.sigmoid(v),
    "tanh": lambda v, a: torch.tanh(v),
    "leaky_relu": lambda v, a: F.leaky_relu(v, a),
    "elu": lambda v, a: F.elu(v, a),
    "selu": lambda v, a: F.selu(v),
    "gelu": lambda v, a: F.gelu(v),
    "gelu_tanh": lambda v, a: F.gelu(v, approximate="tanh"),
    "silu": lambda v, a: F.silu(v),
    "softmax": lambda v, a: torch.softmax(v, dim=-1),
    "log_softmax": lambda v, a: torch.log_softmax(v, dim=-1),
}


_NUMBA_DTYPES = (torch.float32, torch.float64)


def _numba_ok(x) -> bool:
    """Whether a cell's tensors can go to the Numba kernels: CPU float32/float64, no autograd."""
    return x.dtype in _NUMBA_DTYPES and _on_cpu(x)


def _cpu_vendor() -> str:
    """The CPU's vendor as /proc/cpuinfo names it ("GenuineIntel", "AuthenticAMD"), or "" elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


# Multiply-adds from which a product goes to NumPy's OpenBLAS while torch runs one thread (None: never;
# below it torch's call beats the ~9 us hand-over). Only on an AMD CPU, where torch's MKL ran these
# products slower than OpenBLAS (``_in_openblas``). On an Intel CPU (AVX-512) MKL ran them faster:
# 768x128 @ 128x512 633-639 us against OpenBLAS's 731-751, alternating processes at one thread the char
# GPT step 53.2-56.6 against 62.7-64.4 ms and the MLP's 3.58-3.61 against 4.57-4.60; MoE, CNN and ResNet
# even (2026-12-07).
OPENBLAS_MIN_WORK = 1 << 22 if _cpu_vendor() == "AuthenticAMD" else None


def _in_openblas(a, b, out, *more) -> bool:
    """Whether the product out (+)= a @ b goes to NumPy's OpenBLAS on the tensors' memory: CPU
    float32/float64 tensors while torch runs one thread, from OPENBLAS_MIN_WORK multiply-adds. On the AMD
    host where this was measured OpenBLAS ran the stacked per-head products 1.24x and the weight gradients
    (a transposed) 1.15-1.21x as fast as torch's calls, the plain 2-D products about as fast (0.89-1.02
    alone, yet the char GPT step gained most with them too: 61-64 against 64-68 ms); the MoE's products of
    ~2M multiply-adds ran 20-45 % slower (its step 3.8-4.1 against 3.1-3.4 ms). With more threads torch's
    OpenMP workers, spinning after each torch op, would take the cores OpenBLAS's threads need (the GPT
    step 2x slower)."""
    return OPENBLAS_MIN_WORK is not None and torch.get_num_threads() == 1 and \
        out.numel() * a.shape[-1] >= OPENBLAS_MIN_WORK and all(_numba_ok(t) for t in (a, b, out, *more))


def _one_thread_host(*tensors) -> bool:
    """Whether a pass goes to the NumPy backend's kernel on the tensors' memory because torch runs one
    thread (with more, torch's kernels use them): contiguous CPU float tensors. At one thread the char
    GPT's LayerNorms and bias + GELU took 2.9 ms a step more in torch's kernels than in ours."""
    return _host_below(0, *tensors)


def _host_below(limit: float, *tensors) -> bool:
    """Whether a pass goes to the NumPy backend's kernel on the tensors' memory (contiguous CPU float
    tensors; None, an absent bias or output, and NEW, an output the kernel is to make, pass): at one torch
    thread always, with more where the first tensor has fewer than ``limit`` elements (below it that
    kernel on one core measured faster than PyTorch's on its threads)."""
    if torch.get_num_threads() > 1 and tensors[0].numel() >= limit:
        return False
    return all(t is None or t is NEW or (_numba_ok(t) and t.is_contiguous()) for t in tensors)


# Activations whose NumPy-backend kernel on one core beats PyTorch's on two threads below this many
# elements (this host): the tanh-approximated GELU at every size (768x512: forward 239 against 387 us,
# backward 266 against 429), the exact GELU below 2^17 (128x256, an MoE expert's hidden layer: 19 against
# 30 us, 30 against 44; parity at 2^17). The others are faster in PyTorch from the smallest sizes up.
_HOST_ACTIVATION_BELOW = {"gelu_tanh": math.inf, "gelu": 2**17}
_HOST_NORM_BELOW = {True: 0, False: math.inf}  # by ``center``: LayerNorm, RMSNorm (TorchOps.norm_rows)


def _host_activation(name: str, *tensors) -> bool:
    """``_host_below`` for activation ``name`` (``_HOST_ACTIVATION_BELOW``)."""
    return _host_below(_HOST_ACTIVATION_BELOW.get(name, 0), *tensors)


class _FusedAttention(NamedTuple):
    """One fused attention kernel pair of PyTorch (``TorchOps.fused_attention``): forward(q, k, v, causal,
    scale) -> (out, state), backward(do, q, k, v, out, state, causal, scale) -> (dq, dk, dv)."""

    forward: Callable
    backward: Callable


def _sdpa_choice(q, k, v, causal: bool, scale: float) -> int:
    """The kernel ``F.scaled_dot_product_attention`` would run on these operands without a mask or dropout
    (``torch.nn.attention.SDPBackend``'s number), from their device, dtype, shapes and strides alone."""
    return torch.ops.aten._fused_sdp_choice(q, k, v, None, 0.0, causal, scale=scale)


def _efficient(q, k, v, causal, scale):
    out, *state = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, causal,
                                                                         scale=scale)
    return out, state  # log-sum-exp, philox seed and offset


def _efficient_backward(do, q, k, v, out, state, causal, scale):
    lse, seed, offset = state
    return torch.ops.aten._scaled_dot_product_efficient_attention_backward(
        do, q, k, v, None, out, lse, seed, offset, 0.0, [True, True, True, False], causal, scale=scale)[:3]


def _flash_cpu(q, k, v, causal, scale):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)


def _flash_cpu_backward(do, q, k, v, out, lse, causal, scale):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(do, q, k, v, out, lse, 0.0,
                                                                               causal, scale=scale)


# SDPBackend.FLASH_ATTENTION, EFFICIENT_ATTENTION. On a GPU FlashAttention and cuDNN's kernel take half
# precision only, and the models' attention runs in float32 (also under mixed precision, which casts the
# products' operands, not q, k, v): the memory-efficient kernel is the one they get there.
_SDPA_FLASH, _SDPA_EFFICIENT = 1, 2
_SDPA_KERNELS = {  # (on the CPU, the choice) -> the kernels; a choice not here (math): attention
    (False, _SDPA_EFFICIENT): _FusedAttention(_efficient, _efficient_backward),
    (True, _SDPA_FLASH): _FusedAttention(_flash_cpu, _flash_cpu_backward),  # (the tests' stand-in)
}


def _host_heads(*heads) -> list | None:
    """The NumPy views of attention's head stacks (None passes: probabilities not kept) where they go to
    the NumPy backend's fused kernel (CPU float tensors, torch at most FUSED_ATTENTION_THREADS threads,
    rows unit-stride: ``numpy_ops.fused_heads``), else None."""
    if torch.get_num_threads() > FUSED_ATTENTION_THREADS or \
            not all(_numba_ok(t) for t in heads if t is not None):
        return None
    host = [_host_or_none(t) for t in heads]
    return host if fused_heads(*(h for h in host if h is not None)) else None


def _on_cpu(x) -> bool:
    """Whether a tensor's memory can be read as a NumPy array: on the CPU, no autograd."""
    return x.is_cpu and not x.requires_grad  # (is_cpu: 63 ns, device.type == "cpu": 340)


def _kept_or_copied(out, result):
    """``result`` itself where the caller asked for NEW, else copied into ``out``."""
    if out is NEW:
        return result
    out.copy_(result)
    return out


def _host(*tensors):
    """NumPy views sharing the tensors' memory (no copy)."""
    return [t.numpy() for t in tensors]


def _host_or_none(tensor):
    return None if tensor is None else tensor.numpy()


def _act(name, z, a):
    return z if name == "linear" else _ACT[name](z, a)


def _ceil_mode(x, kernel, stride, padding, out) -> bool:
    """Whether a pooling of x (N, C, H, W) into out counts its last, partial windows (out is larger than
    the floor rule gives)."""
    floor = [(size + 2 * p - k) // s + 1 for size, k, s, p in zip(x.shape[2:], kernel, stride, padding,
                                                                   strict=True)]
    return list(out.shape[2:]) != floor


@functools.lru_cache(maxsize=16)
def _torch_dtype(dtype) -> torch.dtype:
    """The torch dtype of a NumPy dtype (cached: str(dtype) costs NumPy ~2 us)."""
    return _DTYPES[str(np.dtype(dtype))]
