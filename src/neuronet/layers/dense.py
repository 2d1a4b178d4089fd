"""Dense: y = act(x @ weight.T + bias), the matmul, bias and activation fused (PyTorch: nn.Linear)."""

from __future__ import annotations

from ..backend import OUTPUT_DERIVATIVE, check_activation
from ..core import args
from ..core import initializers as init
from ..core.grad_mode import backward_after_no_grad, is_grad_enabled
from ..core.layer import Layer


class Dense(Layer):
    """Fully connected layer on the last axis.

    y = act(x @ weight.T + bias)

    Args:
        in_features (int): size of the last input axis.
        out_features (int): size of the last output axis.
        activation (str, optional): one of ``backend.ACTIVATIONS``, fused into forward and backward.
        bias (bool, optional): add a learned bias. Default: ``True``.
    Shape:
        x: (N, *, in_features) -> y: (N, *, out_features)
    Parameters:
        weight (out_features, in_features), bias (out_features) — PyTorch's layout and init.
    Saved for backward:
        x (by reference), y (workspace) and, for activations whose derivative needs it, z = x W^T + b
        (under ``nn.no_grad()`` not: y is then written over z).
    """

    def __init__(self, in_features: int, out_features: int, activation: str | None = None, bias: bool = True):
        super().__init__()
        self.in_features = args.size("Dense", "in_features", in_features)
        self.out_features = args.size("Dense", "out_features", out_features)
        self.activation = check_activation(activation, f"Dense({in_features}, {out_features})")
        self.use_bias = bool(bias)

    def setup(self, input_shape):
        bound = init.fan_in_uniform(self.in_features)
        self.add_param("weight", (self.out_features, self.in_features), bound)
        if self.use_bias:
            self.add_param("bias", (self.out_features,), bound)
        return (*input_shape[:-1], self.out_features)

    @property
    def input_spec(self):
        return (..., self.in_features)

    def forward(self, x, training: bool = True):
        self._x_shape = x.shape
        self._x = x.reshape(-1, self.in_features)  # (M, in), M = all leading positions
        m = self._x.shape[0]
        y = self.workspace("y", (m, self.out_features))
        keep_z = self.activation not in OUTPUT_DERIVATIVE and is_grad_enabled()  # (GELU's derivative reads z)
        z = self.workspace("z", (m, self.out_features)) if keep_z else y
        self.ops.linear(self._x, self.params["weight"], self.params.get("bias"), self.activation, z, y)
        self._z = z if keep_z or self.activation in OUTPUT_DERIVATIVE else None
        self._y = y
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dy):
        ops, m, g = self.ops, self._x.shape[0], self.grads
        dy = dy.reshape(m, self.out_features)
        db = g.get("bias") if self.trainable else None  # frozen: no weight gradients at all
        if self.activation == "linear":
            dz = dy
            if db is not None:
                ops.sum_rows_acc(dz, db)  # db += sum over rows of dz
        else:  # dz = dy * act'(z) and db += sum over rows of dz, in one pass
            if self._z is None:
                raise backward_after_no_grad(self, f"pre-activation for {self.activation!r}")
            dz = self.temporary("dz", (m, self.out_features))
            ops.activation_backward(self.activation, dy, self._z, self._y, dz, bias_grad=db)
        dw = g["weight"] if self.trainable else None  # dW += dz^T x
        dx = self.input_grad_buffer((m, self.in_features), dy) if self.needs_input_grad else None  # dz W
        scratch = None if dw is None else self.temporary("dw", g["weight"].shape)
        ops.linear_grads(dz, self._x, self.params["weight"], dw, dx, scratch)
        return None if dx is None else dx.reshape(self._x_shape)

    def recompute_output(self):
        """y = act(z) again from the kept pre-activation and return y: for a container that shares y's
        buffer (``share_workspaces``) and needs it back before the next layer's backward reads it. Only
        where y has a buffer of its own (an activation whose derivative reads z, such as GELU). Shaped as
        forward returned it: a dropout mask over it is (N, *, out_features), and off the CPU
        ``apply_mask`` broadcasts rather than walking flat memory."""
        if self.activation in OUTPUT_DERIVATIVE:
            raise RuntimeError(f"{self!r}: recompute_output needs z kept apart from y; {self.activation!r} "
                               "computes y over z")
        y = self.ops.activation(self.activation, self._z, self._y)
        return y.reshape(*self._x_shape[:-1], self.out_features)

    def reserve(self, rows: int) -> None:
        """Allocate the workspaces of a batch of up to ``rows`` positions now, computing nothing (a MoE
        sizes its experts for the worst routing this way)."""
        shape = (rows, self.out_features)
        self.workspace("y", shape)
        if self.activation not in OUTPUT_DERIVATIVE:
            self.workspace("z", shape)
        if self.activation != "linear":
            self.temporary("dz", shape)
        self.temporary("dw", (self.out_features, self.in_features))
        self.workspace("dx", (rows, self.in_features))

    def extra_repr(self):
        act = "" if self.activation == "linear" else f", activation={self.activation!r}"
        return f"{self.in_features}, {self.out_features}{act}" + ("" if self.use_bias else ", bias=False")

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "activation": self.activation, "bias": self.use_bias}
