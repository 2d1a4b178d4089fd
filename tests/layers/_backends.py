"""A model trained a few steps on the NumPy and the torch backend: the same losses and weights."""

import numpy as np

import neuronet as nn


def assert_backends_train_alike(make_model, input_shape, loss, x, y, steps: int = 3) -> None:
    """Build ``make_model()`` on each backend from the same seed, take ``steps`` Adam steps on (x, y) and
    compare the losses (rtol 1e-9) and every state_dict entry (rtol 1e-7, atol 1e-10)."""
    runs = []
    for backend in ("numpy", "torch"):
        nn.manual_seed(0)
        model = make_model()
        model.build(input_shape)
        model.to(backend)
        model.compile(optimizer=nn.Adam(1e-2), loss=loss)
        losses = [model.train_step(model.ops.asarray(x), model.ops.asarray(y)) for _ in range(steps)]
        runs.append((model, losses))
    (a, la), (b, lb) = runs
    np.testing.assert_allclose(la, lb, rtol=1e-9)
    for key, value in a.state_dict().items():
        np.testing.assert_allclose(b.state_dict()[key], value, rtol=1e-7, atol=1e-10, err_msg=key)
