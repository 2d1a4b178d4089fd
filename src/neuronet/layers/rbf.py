"""RBF: Gaussian radial-basis units on the last axis, with trainable centres."""

from __future__ import annotations

from ..core import args
from ..core import initializers as init
from ..core.layer import Layer


class RBF(Layer):
    """Radial-basis layer: one Gaussian bump per centre.

    y_j = exp(-gamma * ||x - c_j||^2),  with ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2 (one GEMM)
    (no PyTorch layer; the same as torch.exp(-gamma * torch.cdist(x, centers) ** 2))

    Args:
        in_features (int): size of the last input axis F.
        num_centers (int): number of centres K (output features).
        gamma (float, optional): the fixed width hyper-parameter, > 0. Default: ``1.0``.
    Shape:
        x: (N, *, F) -> y: (N, *, K)
    Parameters:
        centers (K, F), initialised U(-1, 1).
    Saved for backward:
        x (by reference) and y (workspace).
    """

    def __init__(self, in_features: int, num_centers: int, gamma: float = 1.0):
        super().__init__()
        self.in_features = args.size("RBF", "in_features", in_features)
        self.num_centers = args.size("RBF", "num_centers", num_centers)
        self.gamma = args.real("RBF", "gamma", gamma, 0.0, lo_open=True)

    def setup(self, input_shape):
        self.add_param("centers", (self.num_centers, self.in_features), init.uniform(1.0))
        return (*input_shape[:-1], self.num_centers)

    @property
    def input_spec(self):
        return (..., self.in_features)

    def _squared_norms(self, a, name: str):
        """||a_i||^2 for every row of 2-D ``a``."""
        sq = self.workspace(name + "_sq", tuple(a.shape))
        self.ops.xp.square(a, out=sq)
        return self.ops.xp.sum(sq, axis=1, out=self.workspace(name + "_norm", (a.shape[0],)))

    def forward(self, x, training: bool = True):
        ops, c = self.ops, self.params["centers"]
        self._x_shape = tuple(x.shape)
        self._x = x.reshape(-1, self.in_features)  # (M, F)
        m = self._x.shape[0]
        y = self.workspace("y", (m, self.num_centers))
        ops.matmul(self._x, c.T, out=y)
        y *= -2.0
        y += self._squared_norms(self._x, "x").reshape(m, 1)
        y += self._squared_norms(c, "c")
        ops.activation("relu", y, y)  # rounding can leave tiny negatives
        y *= -self.gamma
        ops.xp.exp(y, out=y)
        self._y = y
        return y.reshape(*self._x_shape[:-1], self.num_centers)

    def backward(self, dy):
        ops, x, c, m = self.ops, self._x, self.params["centers"], self._x.shape[0]
        # g = dL/d||x - c||^2 = -gamma y dy;  dx = 2 (x sum_j g_j - g c);  dc = -2 (g^T x - c sum_m g_m)
        g = self.workspace("g", (m, self.num_centers))
        ops.xp.multiply(dy.reshape(m, self.num_centers), self._y, out=g)
        g *= -2.0 * self.gamma  # the factor 2 of both formulas folded in
        g_rows = ops.xp.sum(g, axis=1, out=self.workspace("g_rows", (m,)))
        if self.trainable:  # frozen: no weight gradients
            g_cols = ops.xp.sum(g, axis=0, out=self.workspace("g_cols", (self.num_centers,)))
            dc = self.workspace("dc", tuple(c.shape))
            ops.xp.multiply(c, g_cols.reshape(-1, 1), out=dc)
            self.grads["centers"] += dc
            ops.matmul(g.T, x, out=dc)
            self.grads["centers"] -= dc
        if not self.needs_input_grad:
            return None
        dx = self.input_grad_buffer((m, self.in_features), dy)
        ops.matmul(g, c, out=dx)
        dx *= -1.0
        dx_own = self.workspace("dx_own", (m, self.in_features))
        ops.xp.multiply(x, g_rows.reshape(m, 1), out=dx_own)
        dx += dx_own
        return dx.reshape(self._x_shape)

    def extra_repr(self):
        return f"{self.in_features}, {self.num_centers}, gamma={self.gamma}"

    def get_config(self):
        return {"in_features": self.in_features, "num_centers": self.num_centers, "gamma": self.gamma}
