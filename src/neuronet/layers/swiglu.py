"""SwiGLU feed-forward block (LLaMA's MLP): y = w2(silu(w1 x) * w3 x), all bias-free."""

from __future__ import annotations

from ..core.layer import Layer
from .dense import Dense


class SwiGLU(Layer):
    """Gated feed-forward network.

    a = silu(x @ w1.T),  b = x @ w3.T,  y = (a * b) @ w2.T
    Backward: d(a*b) = dy @ w2;  db = d(a*b) * a;  da = d(a*b) * b;  dx = w1-branch(da) + w3-branch(db).

    PyTorch counterpart: none in torch.nn (LLaMA's ``FeedForward``), same parameter names.

    Args:
        dim (int): input and output size.
        hidden (int): gate width.
    Shape:
        x: (N, *, dim) -> y: (N, *, dim)
    Parameters:
        w1.weight (hidden, dim), w3.weight (hidden, dim), w2.weight (dim, hidden).
    Saved for backward:
        a and b (in the sub-layers' workspaces).
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dim, self.hidden = int(dim), int(hidden)

    def setup(self, input_shape):
        gate = Dense(self.dim, self.hidden, activation="silu", bias=False)
        hidden_shape = self.add_child("w1", gate, input_shape)
        self.add_child("w2", Dense(self.hidden, self.dim, bias=False), hidden_shape)
        self.add_child("w3", Dense(self.dim, self.hidden, bias=False), input_shape)
        return input_shape

    @property
    def input_spec(self):
        return (..., self.dim)

    def forward(self, x, training: bool = True):
        w1, w2, w3 = self.children["w1"], self.children["w2"], self.children["w3"]
        self._a = w1.forward(x, training)
        self._b = w3.forward(x, training)
        gated = self.workspace("gated", tuple(self._a.shape))
        self.ops.xp.multiply(self._a, self._b, out=gated)
        return w2.forward(gated, training)

    def backward(self, dy):
        xp = self.ops.xp
        w1, w2, w3 = self.children["w1"], self.children["w2"], self.children["w3"]
        dgated = w2.backward(dy)
        d_branch = self.workspace("d_branch", tuple(dgated.shape))
        xp.multiply(dgated, self._a, out=d_branch)
        dx3 = w3.backward(d_branch)  # (w1 and w3 keep their own dL/dx: both are read below)
        xp.multiply(dgated, self._b, out=d_branch)
        dx = self.input_grad_buffer(tuple(dy.shape), dy)
        return self.ops.add(dx3, w1.backward(d_branch), out=dx)  # (one pass: no copy of dx3 first)

    def extra_repr(self):
        return f"{self.dim}, {self.hidden}"

    def get_config(self):
        return {"dim": self.dim, "hidden": self.hidden}
