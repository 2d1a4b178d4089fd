"""Compare a layer with its PyTorch counterpart: outputs, input gradient and every parameter gradient."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..core.layer import Layer


def compare_with_torch(layer: Layer, module, x: np.ndarray, *, torch_forward: Callable | None = None,
                       training: bool = True, atol: float = 1e-5, rtol: float = 1e-4, dtype: str = "float64",
                       seed: int = 0, dy: np.ndarray | None = None, check_input_grad: bool = True,
                       name_map: dict[str, str] | None = None) -> dict:
    """Load ``module``'s weights into ``layer`` and check forward and backward agree.

    ``torch_forward(module, x_tensor) -> tensor`` adapts modules whose call differs (tuples,
    masks); by default ``module(x)``. ``name_map`` maps torch parameter names to ours where they
    differ. Returns a dict of the compared arrays for further checks.
    """
    import torch

    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    module = module.to(torch_dtype)
    module.train(training)
    if not layer.built or str(layer.dtype) != dtype:
        layer.build(x.shape[1:], dtype=dtype)
    name_map = name_map or {}
    ours = {name_map.get(k, k): v for k, v in module.state_dict().items()}
    layer.load_state_dict(ours, strict=True)

    floating = np.issubdtype(x.dtype, np.floating)
    xt = torch.tensor(x, dtype=torch_dtype if floating else torch.int64, requires_grad=floating)
    yt = torch_forward(module, xt) if torch_forward else module(xt)
    y = np.asarray(layer.ops.to_numpy(layer.forward(layer.ops.asarray(x.astype(dtype) if floating else x),
                                                    training=training)))
    np.testing.assert_allclose(y, yt.detach().numpy(), atol=atol, rtol=rtol, err_msg=f"{layer!r}: forward")
    if dy is None:
        dy = np.random.default_rng(seed).standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(dy, dtype=torch_dtype))
    layer.zero_grad()
    dx = layer.backward(layer.ops.asarray(dy.copy()))
    result = {"y": y, "dx": None}
    if floating and check_input_grad:
        dx = np.asarray(layer.ops.to_numpy(dx))
        np.testing.assert_allclose(dx, xt.grad.numpy(), atol=atol, rtol=rtol,
                                   err_msg=f"{layer!r}: input grad")
        result["dx"] = dx
    for tname, p in module.named_parameters():
        ours_name = name_map.get(tname, tname)
        got = np.asarray(layer.ops.to_numpy(layer.grads[ours_name]))
        want = np.zeros(tuple(p.shape)) if p.grad is None else p.grad.numpy()
        np.testing.assert_allclose(got, want, atol=atol, rtol=rtol, err_msg=f"{layer!r}: grad of {ours_name}")
    return result
