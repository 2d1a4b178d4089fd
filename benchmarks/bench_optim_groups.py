"""The optimizer step with parameter groups / frozen layers vs one group (float32 Adam, NumPy backend).

The update walks a table of spans of the flat buffer (one span per run of neighbouring parameters with
the same group; frozen ones left out) in one fused Numba call. Engines, each in its own process:

    mlp-1-group        MLP 784-512-256-10 (535,818 parameters), no groups: one span
    mlp-bias-groups    the same with {"*.bias": weight_decay 0}: 6 spans, 2 groups
    mlp-mask           the alternative design: a per-element uint8 group index read by the kernel
    mlp-frozen-first   the first layer frozen: 4 spans over 33% of the buffer
    deep-1-group       50 x Dense(100, 100) (505,000 parameters), one span
    deep-bias-groups   the same with a bias group: 100 spans
"""

from __future__ import annotations

import harness
import numba
import numpy as np

BIAS = [{"params": "*.bias", "weight_decay": 0.0}]


def _mlp(nn):
    return nn.Sequential(nn.Dense(784, 512, activation="relu"), nn.Dense(512, 256, activation="relu"),
                         nn.Dense(256, 10))


def _deep(nn):
    return nn.Sequential(*[nn.Dense(100, 100, activation="relu") for _ in range(50)])


def _step(make, groups=None, freeze_first=False):
    def build():
        import neuronet as nn

        model = make(nn)
        model.build(_input(model))
        if freeze_first:
            model[0].trainable = False
        opt = nn.AdamW(1e-3, weight_decay=0.01, **({"groups": groups} if groups else {}))
        model.compile(opt, nn.CrossEntropyLoss())
        rng = np.random.default_rng(0)
        model.flat_grads[:] = rng.standard_normal(model.num_params()).astype(np.float32)
        return lambda: opt.step(model.flat_params, model.flat_grads)
    return build


def _input(model):
    return (model.layers[0].in_features,)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _adam_masked(p, g, m, v, group, coef, beta2, c1, c2, bc2_sqrt, eps):
    """Adam with per-element group indices (255: frozen), the design not taken."""
    for i in range(p.size):
        k = group[i]
        if k == 255:
            continue
        decay, l2, step_size = coef[k, 0], coef[k, 1], coef[k, 2]
        pi = p[i]
        gi = g[i] + l2 * pi
        mi = m[i] + c1 * (gi - m[i])
        vi = v[i] * beta2 + c2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = pi * decay - step_size * (mi / (np.sqrt(vi) / bc2_sqrt + eps))


def _mask():
    import neuronet as nn

    model = _mlp(nn)
    model.build((784,))
    n = model.num_params()
    group = np.zeros(n, np.uint8)
    offset = 0
    for name, value in model.named_parameters():
        if name.endswith("bias"):
            group[offset:offset + value.size] = 1
        offset += value.size
    rng = np.random.default_rng(0)
    p, g = model.flat_params, rng.standard_normal(n).astype(np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    f = np.float32
    state = {"t": 0}

    def step():
        state["t"] += 1
        bc1 = 1 - 0.9 ** state["t"]
        coef = np.array([(1 - 1e-3 * 0.01, 0.0, 1e-3 / bc1), (1.0, 0.0, 1e-3 / bc1)], np.float32)
        _adam_masked(p, g, m, v, group, coef, f(0.999), f(0.1), f(0.001), f(np.sqrt(1 - 0.999 ** state["t"])),
                     f(1e-8))
    return step


ENGINES = {
    "mlp-1-group": _step(_mlp),
    "mlp-bias-groups": _step(_mlp, BIAS),
    "mlp-mask": _mask,
    "mlp-frozen-first": _step(_mlp, freeze_first=True),
    "deep-1-group": _step(_deep),
    "deep-bias-groups": _step(_deep, BIAS),
}

if __name__ == "__main__":
    harness.main(ENGINES, title="Adam step: one group vs parameter groups vs a per-element mask",
                 steps=200, warmup=20)
