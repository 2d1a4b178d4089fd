"""Adagrad over the flat parameter array, one fused update (torch.optim.Adagrad)."""

from __future__ import annotations

from .optimizer import Optimizer, _check_number


class Adagrad(Optimizer):
    """Adagrad as ``torch.optim.Adagrad``.

    g = grad + weight_decay p;  clr = lr / (1 + (t - 1) lr_decay);  s += g^2;  p -= clr g / (sqrt(s) + eps)

    Args:
        lr (float): learning rate. Default: ``1e-2``.
        lr_decay (float): learning-rate decay per step. Default: ``0``.
        weight_decay (float): L2 penalty. Default: ``0``.
        eps (float): added to the denominator. Default: ``1e-10``.
        clip_norm (float, optional): global-norm gradient clipping (see Optimizer).
        groups (list[dict], optional): parameter groups with their own lr / weight_decay (see Optimizer).
    State:
        ``sum`` (torch's state name), the running sum of squared gradients, flat like the parameters.
    """

    state_names = ("sum",)

    def __init__(self, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0, eps: float = 1e-10,
                 clip_norm: float | None = None, groups: list[dict] | None = None):
        super().__init__(lr, clip_norm, groups)
        self.lr_decay = _check_number(self, "lr_decay", lr_decay)
        self.weight_decay = _check_number(self, "weight_decay", weight_decay)
        self.eps = _check_number(self, "eps", eps)

    def update(self, params, grads, spans):
        settings = self.group_settings()
        decay = 1.0 + (self.iterations - 1) * self.lr_decay
        self.ops.adagrad_step(params, grads, self.state["sum"], self._scratch, spans,
                              lr=tuple(lr / decay for lr in settings["lr"]),
                              weight_decay=settings["weight_decay"], eps=self.eps)

    def get_config(self):
        return {**super().get_config(), "lr_decay": self.lr_decay, "weight_decay": self.weight_decay,
                "eps": self.eps}
