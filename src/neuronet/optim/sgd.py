"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay (torch.optim.SGD)."""

from __future__ import annotations

from .optimizer import Optimizer, _check_number


class SGD(Optimizer):
    """SGD as ``torch.optim.SGD``.

    g = grad + weight_decay p;  b = g on the first step, else momentum b + (1 - dampening) g;
    p -= lr (g + momentum b if nesterov else b)      (without momentum: p -= lr g)

    Args:
        lr (float): learning rate. Default: ``1e-2``.
        momentum (float): Default: ``0``.
        nesterov (bool): Nesterov momentum (needs momentum > 0 and dampening 0). Default: ``False``.
        weight_decay (float): L2 penalty. Default: ``0``.
        dampening (float): Default: ``0``.
        clip_norm (float, optional): global-norm gradient clipping (see Optimizer).
        groups (list[dict], optional): parameter groups with their own lr / weight_decay (see Optimizer).
    State:
        ``momentum_buffer`` when momentum > 0.
    """

    def __init__(self, lr: float = 1e-2, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, dampening: float = 0.0, clip_norm: float | None = None,
                 groups: list[dict] | None = None):
        super().__init__(lr, clip_norm, groups)
        self.momentum = _check_number(self, "momentum", momentum)
        self.weight_decay = _check_number(self, "weight_decay", weight_decay)
        self.dampening = _check_number(self, "dampening", dampening, 0.0, 1.0)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("SGD: Nesterov momentum requires a momentum > 0 and zero dampening")
        self.state_names = ("momentum_buffer",) if self.momentum else ()

    def update(self, params, grads, spans):
        self.ops.sgd_step(params, grads, self.state.get("momentum_buffer"), self._scratch, spans,
                          **self.group_settings(), momentum=self.momentum, dampening=self.dampening,
                          nesterov=self.nesterov, first=self.iterations == 1)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay, "dampening": self.dampening}
