"""RMSprop over the flat parameter array, one fused update (torch.optim.RMSprop)."""

from __future__ import annotations

from .optimizer import Optimizer, _check_number


class RMSprop(Optimizer):
    """RMSprop as ``torch.optim.RMSprop``.

    g = grad + weight_decay p;  s = alpha s + (1 - alpha) g^2;
    centered: a = alpha a + (1 - alpha) g, s' = s - a^2;
    d = sqrt(s') + eps;  with momentum: b = momentum b + g / d, p -= lr b;  else p -= lr g / d

    Args:
        lr (float): learning rate. Default: ``1e-2``.
        alpha (float): smoothing constant in [0, 1]. Default: ``0.99``.
        eps (float): added to the denominator. Default: ``1e-8``.
        weight_decay (float): L2 penalty. Default: ``0``.
        momentum (float): Default: ``0``.
        centered (bool): normalise by the estimated variance of the gradient. Default: ``False``.
        clip_norm (float, optional): global-norm gradient clipping (see Optimizer).
        groups (list[dict], optional): parameter groups with their own lr / weight_decay (see Optimizer).
    State:
        ``square_avg``; ``momentum_buffer`` when momentum > 0; ``grad_avg`` when centered.
    """

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False, clip_norm: float | None = None,
                 groups: list[dict] | None = None):
        super().__init__(lr, clip_norm, groups)
        self.alpha = _check_number(self, "alpha", alpha, 0.0, 1.0)
        self.eps = _check_number(self, "eps", eps)
        self.weight_decay = _check_number(self, "weight_decay", weight_decay)
        self.momentum = _check_number(self, "momentum", momentum)
        self.centered = bool(centered)
        self.state_names = ("square_avg", *(("momentum_buffer",) if self.momentum else ()),
                            *(("grad_avg",) if self.centered else ()))

    def update(self, params, grads, spans):
        self.ops.rmsprop_step(params, grads, self.state["square_avg"], self.state.get("grad_avg"),
                              self.state.get("momentum_buffer"), self._scratch, spans,
                              **self.group_settings(), alpha=self.alpha, eps=self.eps, momentum=self.momentum,
                              centered=self.centered)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "eps": self.eps,
                "weight_decay": self.weight_decay, "momentum": self.momentum, "centered": self.centered}
