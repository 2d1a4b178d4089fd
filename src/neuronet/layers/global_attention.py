"""GlobalAttention: additive (Bahdanau-style) attention pooling of a sequence into one vector."""

from __future__ import annotations

from ..core import args
from ..core import initializers as init
from ..core.layer import Layer


class GlobalAttention(Layer):
    """Score every step, softmax over time, return the weighted sum of the steps.

    u_t = tanh(x_t W^T + b),  s_t = v . u_t,  a = softmax_T(s),  y = sum_t a_t x_t
    (no PyTorch layer; the same as ``(softmax(tanh(F.linear(x, W, b)) @ v, dim=1)[..., None] * x).sum(1)``)

    Args:
        dim (int): feature size D.
    Shape:
        x: (N, T, D) -> y: (N, D)
    Parameters:
        weight (D, D), bias (D) (nn.Linear's init), v (D) U(-1/sqrt(D), 1/sqrt(D)).
    Saved for backward:
        x (by reference), u (N, T, D) and a (N, T) (workspace).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = args.size(type(self).__name__, "dim", dim)

    def setup(self, input_shape):
        bound = init.fan_in_uniform(self.dim)
        self.add_param("weight", (self.dim, self.dim), bound)
        self.add_param("bias", (self.dim,), bound)
        self.add_param("v", (self.dim,), bound)
        return (self.dim,)

    @property
    def input_spec(self):
        return ("T", self.dim)

    def forward(self, x, training: bool = True):
        ops, p = self.ops, self.params
        n, steps, d = x.shape
        self._x = x
        u = self.workspace("u", (n, steps, d))
        rows = u.reshape(n * steps, d)
        ops.linear(x.reshape(n * steps, d), p["weight"], p["bias"], "tanh", rows, rows)  # u = tanh(x W^T + b)
        a = self.workspace("a", (n, steps))
        ops.matmul(u, p["v"], out=a)  # scores s (N, T)
        ops.activation("softmax", a, a)
        y = self.workspace("y", (n, d))
        ops.matmul(a.reshape(n, 1, steps), x, out=y.reshape(n, 1, d))
        self._u, self._a = u, a
        return y

    def backward(self, dy):
        ops, p, g, x, u, a = self.ops, self.params, self.grads, self._x, self._u, self._a
        n, steps, d = x.shape
        # y = sum_t a_t x_t:  da_t = x_t . dy,  dx_t = a_t dy (+ the path through the scores, below)
        ds = self.workspace("ds", (n, steps))
        ops.matmul(x, dy.reshape(n, d, 1), out=ds.reshape(n, steps, 1))
        ops.activation_backward("softmax", ds, None, a, ds)
        # s_t = v . u_t:  dv = sum ds_t u_t,  du_t = ds_t v;  then through tanh and the linear map
        if self.trainable:  # frozen: no weight gradients
            dv = self.workspace("dv", (d,))
            ops.matmul(ds.reshape(1, n * steps), u.reshape(n * steps, d), out=dv.reshape(1, d))
            g["v"] += dv
        dz = self.workspace("dz", (n * steps, d))
        ops.matmul(ds.reshape(n * steps, 1), p["v"].reshape(1, d), out=dz)  # outer products as a K=1 GEMM
        ops.activation_backward("tanh", dz, None, u.reshape(n * steps, d), dz,
                                bias_grad=g["bias"] if self.trainable else None)
        if self.trainable:
            ops.matmul_acc(dz.T, x.reshape(n * steps, d), g["weight"], self.workspace("dw", (d, d)))
        if not self.needs_input_grad:
            return None
        dx = self.input_grad_buffer((n, steps, d), dy)
        ops.matmul(a.reshape(n, steps, 1), dy.reshape(n, 1, d), out=dx)
        dx_scores = self.workspace("dx_scores", (n * steps, d))
        ops.matmul(dz, p["weight"], out=dx_scores)
        dx += dx_scores.reshape(n, steps, d)
        return dx

    def extra_repr(self):
        return str(self.dim)

    def get_config(self):
        return {"dim": self.dim}
