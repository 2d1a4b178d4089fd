"""NAdam (Adam with Nesterov momentum) over the flat parameter array, one fused update (torch.optim.NAdam)."""

from __future__ import annotations

from .adam import Adam
from .optimizer import _check_number


class NAdam(Adam):
    """NAdam as ``torch.optim.NAdam`` (L2 weight decay added to the gradient).

    g = grad + weight_decay p;  mu_t = beta1 (1 - 0.5 * 0.96^(t momentum_decay));  P_t = mu_1 ... mu_t;
    m, v as Adam;  d = sqrt(v / (1 - beta2^t)) + eps;
    p -= lr (1 - mu_t) / (1 - P_t) g / d + lr mu_{t+1} / (1 - P_t mu_{t+1}) m / d

    Args:
        lr (float): learning rate. Default: ``2e-3``.
        betas (tuple[float, float]): decay rates of the moments, each in [0, 1). Default: ``(0.9, 0.999)``.
        eps (float): added to the denominator. Default: ``1e-8``.
        weight_decay (float): L2 penalty. Default: ``0``.
        momentum_decay (float): the momentum schedule's decay (psi). Default: ``4e-3``.
        clip_norm (float, optional): global-norm gradient clipping (see Optimizer).
        groups (list[dict], optional): parameter groups with their own lr / weight_decay (see Optimizer).
    State:
        ``m`` and ``v`` as Adam. The product P_t (torch's ``mu_product``) is a function of the step count
        alone, recomputed from it (in float64; torch keeps it as a float32 tensor by default).
    """

    def __init__(self, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum_decay: float = 4e-3, clip_norm: float | None = None,
                 groups: list[dict] | None = None):
        super().__init__(lr, betas, eps, weight_decay, clip_norm, groups)
        self.momentum_decay = _check_number(self, "momentum_decay", momentum_decay)
        self._mu_product = (0, 1.0)  # (step, P_step)

    def _mu(self, step: int) -> float:
        return self.betas[0] * (1.0 - 0.5 * 0.96 ** (step * self.momentum_decay))

    def mu_product(self, step: int) -> float:
        """P_step = mu_1 mu_2 ... mu_step, carried from the last step (or recomputed after a load)."""
        done, product = self._mu_product
        if done > step:
            done, product = 0, 1.0
        for t in range(done + 1, step + 1):
            product *= self._mu(t)
        self._mu_product = (step, product)
        return product

    def update(self, params, grads, spans):
        t = self.iterations
        self.ops.nadam_step(params, grads, self.state["m"], self.state["v"], self._scratch, spans,
                            **self.group_settings(), beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
                            step=t, mu=self._mu(t), mu_next=self._mu(t + 1), mu_product=self.mu_product(t))

    def get_config(self):
        return {**super().get_config(), "momentum_decay": self.momentum_decay}
