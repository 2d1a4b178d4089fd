"""BatchNorm1D and BatchNorm2D: normalise each channel over the batch (PyTorch: nn.BatchNorm1d/2d)."""

from __future__ import annotations

import numpy as np

from ..core import args
from ..core import initializers as init
from ..core.layer import Layer, ShapeError
from ..errors import ConfigError


class _BatchNorm(Layer):
    """Per-channel normalisation of x seen as (N, C, L); L = 1 for (N, C), H*W for images.

    Training:  mean, var = batch mean and biased variance over (N, L) per channel;
               running_mean += momentum * (mean - running_mean), running_var likewise with the
               unbiased variance var * M/(M-1), M = N*L; num_batches_tracked += 1.
    Inference: mean, var = running_mean, running_var.
    y = (x - mean) / sqrt(var + eps) * weight + bias;  with activation="relu", y = max(that, 0).
    Backward (training), with xhat the normalised input (and dy zeroed where the ReLU was):
        dbias = sum dy,  dweight = sum dy * xhat,
        dx = weight / sqrt(var + eps) * (dy - dbias/M - xhat * dweight/M)
    (in inference mean and var are constants and dx = weight / sqrt(var + eps) * dy).
    A training forward is ``ops.batch_norm_training`` (statistics, rstd and y per block of channels in one
    call); the sums and dx are ``ops.batch_norm_backward`` (one fused pass each on the NumPy backend and for
    CPU tensors, PyTorch's kernel elsewhere); forward saves x and the two (C,) statistics, not xhat, and
    with the ReLU its output y (for the mask).

    The ReLU that follows a BatchNorm in most convolutional networks runs inside the normalisation's
    passes with ``activation="relu"``: one pass over the activations forward and none of its own backward
    (a ResNet's 16-channel BN + ReLU at 28x28, batch 64: 0.8 ms forward + backward against 1.2-1.6 ms
    as two layers, NumPy backend, two threads).
    """

    allowed_ranks: tuple[int, ...] = ()
    ACTIVATIONS = (None, "relu")  # what the kernels fuse; any other activation is a layer of its own

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 activation: str | None = None):
        super().__init__()
        owner = type(self).__name__
        self.num_features = args.size(owner, "num_features", num_features)
        self.eps = args.real(owner, "eps", eps, 0.0, lo_open=True)
        self.momentum = args.real(owner, "momentum", momentum, 0.0, 1.0)
        if activation not in self.ACTIVATIONS:
            raise ConfigError(f"{owner}: activation must be None or 'relu' (fused into the normalisation), "
                              f"got {activation!r}; put any other activation in a layer of its own")
        self.activation = activation

    def setup(self, input_shape):
        if len(input_shape) not in self.allowed_ranks or input_shape[0] != self.num_features:
            raise ShapeError(f"{self!r}: expected input of shape {self._expected()}, "
                             f"got (N, {', '.join(map(str, input_shape))})")
        c = self.num_features
        self.add_param("weight", (c,), init.ones)
        self.add_param("bias", (c,), init.zeros)
        # broadcast views: nothing sized by the configuration is allocated before the model is
        self.add_buffer("running_mean", np.broadcast_to(np.zeros((), self.dtype), (c,)))
        self.add_buffer("running_var", np.broadcast_to(np.ones((), self.dtype), (c,)))
        self.add_buffer("num_batches_tracked", np.array(0, np.int64))
        return input_shape

    def _expected(self) -> str:
        return " or ".join(f"(N, {self.num_features}{', ' + tail if tail else ''})"
                           for tail in [("", "L", "H, W")[r - 1] for r in self.allowed_ranks])

    def forward(self, x, training: bool = True):
        """x (N, C) or (N, C, ...) -> y, the same shape. Saves x, the mean and 1/sqrt(var + eps) used."""
        ops, n, c = self.ops, x.shape[0], self.num_features
        x3 = x.reshape(n, c, -1)
        m = x3.shape[0] * x3.shape[2]
        rstd, y = self.workspace("rstd", (c,)), self.kernel_output("y", x3.shape)
        weight, bias, relu = self.params["weight"], self.params["bias"], self.activation == "relu"
        if training:
            if m < 2:
                raise ValueError(f"{self!r}: expected more than 1 value per channel when training, "
                                 f"got input of shape {tuple(x.shape)}")
            mean, buf = self.workspace("mean", (c,)), self.buffers
            fused = ops.fused_batch_norm_training(x3, weight, bias, self.eps, y, mean, rstd, relu,
                                                 buf["running_mean"], buf["running_var"], self.momentum)
            if fused is None:
                var = self.workspace("var", (c,))
                y = ops.batch_norm_training(x3, weight, bias, self.eps, y, mean, var, rstd, relu)
                self._update_running(mean, var, m)
            else:
                y = fused
            buf["num_batches_tracked"] += 1
        else:
            mean = self.buffers["running_mean"]
            ops.copy_(rstd, self.buffers["running_var"])
            rstd += self.eps
            rstd **= -0.5  # 1 / sqrt(var + eps)
            y = ops.batch_norm(x3, mean, rstd, weight, bias, y, relu)
        self._x, self._mean, self._rstd, self._training = x3, mean, rstd, training
        self._relu_out = y if relu else None
        return y.reshape(x.shape)

    def _update_running(self, mean, var, m: int) -> None:
        mom, tmp, buf = self.momentum, self.workspace("tmp", (self.num_features,)), self.buffers
        buf["running_mean"] *= 1.0 - mom
        self.ops.xp.multiply(mean, mom, out=tmp)
        buf["running_mean"] += tmp
        buf["running_var"] *= 1.0 - mom
        self.ops.xp.multiply(var, mom * m / (m - 1), out=tmp)  # the unbiased variance, as PyTorch
        buf["running_var"] += tmp

    def backward(self, dy):
        x3, c = self._x, self.num_features
        dbias, dweight = self.workspace("dbias", (c,)), self.workspace("dweight", (c,))
        dx = self.kernel_input_grad(x3.shape, dy) if self.needs_input_grad else None
        dx = self.ops.batch_norm_backward(dy.reshape(x3.shape), x3, self._mean, self._rstd,
                                          self.params["weight"], self._training, dx, dweight, dbias,
                                          self._relu_out)
        if self.trainable:  # frozen: the sums are still needed for dx, but no weight gradients
            self.grads["weight"] += dweight
            self.grads["bias"] += dbias
        return None if dx is None else dx.reshape(x3.shape[0], *self.input_shape)

    def extra_repr(self):
        text = f"{self.num_features}"
        text += f", eps={self.eps}" if self.eps != 1e-5 else ""
        text += f", momentum={self.momentum}" if self.momentum != 0.1 else ""
        return text + (f", activation={self.activation!r}" if self.activation else "")

    def get_config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "activation": self.activation}


class BatchNorm1D(_BatchNorm):
    """Batch normalisation of (N, C) features or (N, C, L) sequences, per channel C.

    y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias   (statistics over N, and L)

    PyTorch: ``nn.BatchNorm1d(num_features, eps=1e-5, momentum=0.1)`` (with ``activation="relu"``:
    followed by ``nn.ReLU()``).

    Args:
        num_features (int): C.
        eps (float, optional): added to the variance. Default: ``1e-5``.
        momentum (float, optional): weight of the new batch in the running statistics. Default: ``0.1``.
        activation (str, optional): ``"relu"`` applies max(y, 0) in the same pass. Default: ``None``.
    Shape:
        x: (N, C) or (N, C, L) -> y: the same.
    Parameters and buffers:
        weight (C) = 1, bias (C) = 0; running_mean (C), running_var (C), num_batches_tracked () in state_dict.
    Saved for backward:
        x (N, C, L) by reference, mean and 1/sqrt(var + eps) (C) in workspace; with the ReLU its output y.
    """

    allowed_ranks = (1, 2)


class BatchNorm2D(_BatchNorm):
    """Batch normalisation of NCHW images, per channel C (statistics over N, H, W).

    y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias

    PyTorch: ``nn.BatchNorm2d(num_features, eps=1e-5, momentum=0.1)`` (with ``activation="relu"``:
    followed by ``nn.ReLU()``).

    Args:
        num_features (int): C.
        eps (float, optional): Default: ``1e-5``.
        momentum (float, optional): Default: ``0.1``.
        activation (str, optional): ``"relu"`` applies max(y, 0) in the same pass. Default: ``None``.
    Shape:
        x: (N, C, H, W) -> y: the same.
    Parameters and buffers:
        as BatchNorm1D.
    Saved for backward:
        x (N, C, H*W) by reference, mean and 1/sqrt(var + eps) (C) in workspace; with the ReLU its output y.
    """

    allowed_ranks = (3,)
