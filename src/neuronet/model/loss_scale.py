"""Dynamic loss scaling for float16 mixed precision (``compile(mixed_precision="float16")``).

float16 keeps about 5 significant bits of exponent range below 1: gradients under ~6e-8 flush to zero
in a float16 product. As ``torch.amp.GradScaler``, the loss gradient is multiplied by ``scale`` before
backward, so the products see large values; before the optimizer step the float32 gradients are
divided by it again. A step whose gradients overflowed (inf or NaN) is skipped and the scale halved;
after ``growth_interval`` clean steps in a row it doubles.
"""

from __future__ import annotations

from typing import Any


class DynamicLossScale:
    """The loss scale and its schedule (PyTorch's GradScaler defaults)."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.clean_steps = 0  # finite steps since the scale last changed

    def unscale_(self, ops: Any, grads: Any) -> bool:
        """grads /= scale when they are all finite (returns True); else leaves them, halves the scale
        and returns False (the caller skips the step). One reduction and one host read per step."""
        if not bool(ops.xp.isfinite(grads).all()):
            self.scale *= self.backoff_factor
            self.clean_steps = 0
            return False
        grads *= 1.0 / self.scale
        self.clean_steps += 1
        if self.clean_steps == self.growth_interval:
            self.scale *= self.growth_factor
            self.clean_steps = 0
        return True
