"""Adam and AdamW over the flat parameter array, one fused update (torch.optim.Adam / AdamW)."""

from __future__ import annotations

from .optimizer import Optimizer, _check_number


class Adam(Optimizer):
    """Adam with L2 weight decay added to the gradient, as ``torch.optim.Adam``.

    g = grad + weight_decay p;  m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;
    p -= lr / (1 - beta1^t) m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    Args:
        lr (float): learning rate. Default: ``1e-3``.
        betas (tuple[float, float]): decay rates of the moments, each in [0, 1). Default: ``(0.9, 0.999)``.
        eps (float): added to the denominator. Default: ``1e-8``.
        weight_decay (float): L2 penalty (decoupled in AdamW). Default: ``0``.
        clip_norm (float, optional): global-norm gradient clipping (see Optimizer).
        groups (list[dict], optional): parameter groups with their own lr / weight_decay (see Optimizer).
    State:
        ``m`` and ``v`` (torch's ``exp_avg``, ``exp_avg_sq``), flat like the parameters.
    """

    state_names = ("m", "v")
    decoupled = False

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, clip_norm: float | None = None, groups: list[dict] | None = None):
        super().__init__(lr, clip_norm, groups)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"{type(self).__name__}: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_check_number(self, "beta1", betas[0], 0.0, 1.0, hi_open=True),
                      _check_number(self, "beta2", betas[1], 0.0, 1.0, hi_open=True))
        self.eps = _check_number(self, "eps", eps)
        self.weight_decay = _check_number(self, "weight_decay", weight_decay)

    def update(self, params, grads, spans):
        self.ops.adam_step(params, grads, self.state["m"], self.state["v"], self._scratch, spans,
                           **self.group_settings(), beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
                           step=self.iterations, decoupled=self.decoupled)

    def get_config(self):
        return {**super().get_config(), "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay}


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``: p *= 1 - lr weight_decay, then Adam.

    Same arguments as Adam; weight_decay defaults to ``0.01``.
    """

    decoupled = True

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, clip_norm: float | None = None,
                 groups: list[dict] | None = None):
        super().__init__(lr, betas, eps, weight_decay, clip_norm, groups)
