"""Stochastic gradient descent with momentum, Nesterov and weight decay (torch.optim.SGD)."""

from __future__ import annotations

from .optimizer import Optimizer


class SGD(Optimizer):
    """SGD as ``torch.optim.SGD``; state: the momentum buffer (when momentum > 0)."""

    def __init__(self, lr: float = 1e-2, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, dampening: float = 0.0, clip_norm: float | None = None):
        super().__init__(lr, clip_norm)
        if momentum < 0 or weight_decay < 0:
            raise ValueError("SGD: momentum and weight_decay must be >= 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum requires a momentum and zero dampening")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.weight_decay, self.dampening = float(weight_decay), float(dampening)
        self.state_names = ("momentum_buffer",) if momentum else ()

    def update(self, params, grads):
        self.ops.sgd_step(params, grads, self.state.get("momentum_buffer"), self._scratch, lr=self.lr,
                          momentum=self.momentum, dampening=self.dampening, nesterov=self.nesterov,
                          weight_decay=self.weight_decay, first=self.iterations == 1)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay, "dampening": self.dampening}
