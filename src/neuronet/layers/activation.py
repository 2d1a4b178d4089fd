"""Activation layers: y = act(x) elementwise (softmaxes over the last axis), as PyTorch's modules."""

from __future__ import annotations

from ..backend import OUTPUT_DERIVATIVE, check_activation
from ..core import args
from ..core.layer import Layer


class Activation(Layer):
    """Apply a named activation.

    Args:
        name (str): one of ``backend.ACTIVATIONS``.
        alpha (float, optional): LeakyReLU's negative slope or ELU's alpha.
    Shape:
        x: (N, *) -> y: (N, *)
    Saved for backward:
        y (workspace) and, for activations whose derivative needs the input, x (by reference).
    """

    def __init__(self, name: str, alpha: float | None = None):
        super().__init__()
        self.name = check_activation(name, type(self).__name__)
        self.alpha = None if alpha is None else args.real(type(self).__name__, "alpha", alpha)

    def forward(self, x, training: bool = True):
        y = self.workspace("y", tuple(x.shape))
        self._x = x if self.name not in OUTPUT_DERIVATIVE else None
        self._y = self.ops.activation(self.name, x, y, self.alpha)
        return y

    def backward(self, dy):
        dx = self.input_grad_buffer(tuple(dy.shape), dy)
        return self.ops.activation_backward(self.name, dy, self._x, self._y, dx, self.alpha)

    def extra_repr(self):
        if type(self) is Activation:
            return repr(self.name)
        return "" if self.alpha is None else f"{self.alpha}"

    def get_config(self):
        return {"name": self.name, "alpha": self.alpha}


def _named(cls_name: str, act: str, doc: str, takes_alpha: float | None = None) -> type:
    """A fixed-activation layer class (``ReLU()``, ``LeakyReLU(alpha)``, ...)."""
    if takes_alpha is None:
        def __init__(self):
            Activation.__init__(self, act)

        def get_config(self):
            return {}
    else:
        def __init__(self, alpha: float = takes_alpha):
            Activation.__init__(self, act, alpha)

        def get_config(self):
            return {"alpha": self.alpha}
    return type(cls_name, (Activation,), {"__init__": __init__, "get_config": get_config, "__doc__": doc,
                                          "__module__": __name__})


ReLU = _named("ReLU", "relu", "max(x, 0); ReLU'(0) = 0.")
Sigmoid = _named("Sigmoid", "sigmoid", "1 / (1 + exp(-x)).")
Tanh = _named("Tanh", "tanh", "tanh(x).")
LeakyReLU = _named("LeakyReLU", "leaky_relu", "x if x > 0 else alpha x; LeakyReLU'(0) = alpha.", 0.01)
ELU = _named("ELU", "elu", "x if x > 0 else alpha (exp(x) - 1).", 1.0)
SELU = _named("SELU", "selu", "scale * ELU(x, alpha) with PyTorch's fixed scale and alpha.")
GELU = _named("GELU", "gelu", "x Phi(x), the exact erf form.")
SiLU = _named("SiLU", "silu", "x sigmoid(x).")
Softmax = _named("Softmax", "softmax", "softmax over the last axis.")
LogSoftmax = _named("LogSoftmax", "log_softmax", "log-softmax over the last axis.")
