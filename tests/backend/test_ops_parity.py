"""Every op of every backend against the reference: the base ``Ops`` (plain NumPy) is the specification;
``NumpyOps`` (Numba) and ``TorchOps`` must give the same results on the same float64 inputs, forward and
backward partner alike, including what they write into their in-place arguments."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from neuronet.backend import ACTIVATIONS, NEW, OUTPUT_DERIVATIVE, NumpyOps, Ops, Spans
from neuronet.backend.conv_geometry import ConvGeometry, conv_output_size

torch = pytest.importorskip("torch")
from neuronet.backend.torch_ops import TorchOps  # noqa: E402

BACKENDS = {"numpy": NumpyOps(), "torch": TorchOps("cpu")}
CASES: dict[str, tuple] = {}  # name -> (make(rng) -> dict of NumPy inputs, run(ops, inputs) -> outputs)


def case(name: str, make):
    def register(run):
        CASES[name] = (make, run)
        return run
    return register


def randn(rng, *shape):
    return rng.standard_normal(shape)


def scratch_of(ops):
    """A Layer.workspace stand-in: one buffer per name, kept between calls."""
    store = {}

    def scratch(name, shape):
        if name not in store or tuple(store[name].shape) != tuple(shape):
            store[name] = ops.zeros(shape, "float64")
        return store[name]
    return scratch


# ----------------------------------------------------------------- primitives
@case("copy_ fill_ add transpose swapaxes item arange", lambda r: {"x": randn(r, 2, 3, 4)})
def _(ops, a):
    y = ops.zeros((2, 3, 4), "float64")
    ops.copy_(y, a["x"])
    t = ops.transpose(y, (2, 0, 1)) * 1.0
    s = ops.swapaxes(y, 0, 2) * 1.0
    f = ops.empty((3,), "float64")
    ops.fill_(f, 2.5)
    total = ops.empty((2, 3, 4), "float64")
    ops.add(y, a["x"] * 0.5, out=total)
    ops.add(total, y, out=total)  # in place, as a gradient sum
    return y, t, s, f, total, np.array(ops.item(y[1, 2, 3])), ops.arange(5)


@case("where", lambda r: {"x": randn(r, 4, 5), "y": randn(r, 4, 5)})
def _(ops, a):
    out = ops.empty((4, 5), "float64")
    ops.where(a["x"] > 0, a["x"], a["y"], out)
    out2 = ops.empty((4, 5), "float64")
    ops.where(a["x"] > 0, a["x"], 0.0, out2)
    return out, out2


@case("may_share_memory", lambda r: {"x": randn(r, 6, 7), "y": randn(r, 6, 7)})
def _(ops, a):
    x, y = a["x"], a["y"]
    return np.array([ops.may_share_memory(x, x[2:]), ops.may_share_memory(x, y)])


@case("dropout_mask apply_mask", lambda r: {"x": randn(r, 6, 7)})
def _(ops, a):
    mask = ops.dropout_mask(0.7, np.random.default_rng(3), ops.empty((6, 7), "bool"), "float64")
    out, x = ops.empty((6, 7), "float64"), a["x"]
    ops.apply_mask(x, mask, 1 / 0.7, out)
    ops.apply_mask(x, mask, 1 / 0.7, x)  # in place
    return mask, out, x


@case("gather_rows scatter_add_rows",
      lambda r: {"table": randn(r, 5, 3), "index": np.array([4, 0, 0, 2, 4, 4]), "rows": randn(r, 6, 3)})
def _(ops, a):
    out = ops.empty((6, 3), "float64")
    ops.gather_rows(a["table"], a["index"], out)
    ops.scatter_add_rows(a["table"], a["index"], a["rows"])
    return out, a["table"]


def log_softmax(z):
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@case("softmax_target_grad", lambda r: {"logp": log_softmax(randn(r, 6, 5)), "coef": r.random((6, 1))})
def _(ops, a):
    flat = ops.asarray(np.arange(6) * 5 + np.array([3, 0, 0, 4, 4, 1]), "int64")
    out = ops.empty((6, 5), "float64")
    ops.softmax_target_grad(a["logp"], flat, a["coef"], out)
    return out, a["coef"]


@case("class_labels class_weights",
      lambda r: {"t": np.array([3, -100, 0, 4, 4, 1]), "weight": r.random(5), "scores": randn(r, 6, 5)})
def _(ops, a):
    """With and without class weights; ignore_index -100 (position 1) reads class 0 with weight 0."""
    t, scores = ops.asarray(a["t"], "int64"), a["scores"]
    rows = ops.asarray(np.arange(6), "int64")
    label, keep, w_row = ops.empty((6,), "int64"), ops.empty((6,), "float64"), ops.empty((6,), "float64")
    flat = ops.empty((6,), "int64")
    lo, hi = ops.class_labels(t, -100, label, keep)
    total, picked = ops.class_weights(label, a["weight"], keep, rows, scores, w_row, flat)
    plain = ops.class_weights(label, None, keep, rows, scores, keep, flat)
    none = ops.class_labels(t[:0], -100, label[:0], keep[:0])
    assert ops.class_labels(t, -100, label, keep, bounds=False) is None
    values = [ops.item(v) for v in (lo, hi, total, picked, *plain, *none)]
    return label, keep, w_row, flat, np.array(values)


@case("matmul matmul_acc sum_rows_acc sum_of_squares",
      lambda r: {"a": randn(r, 4, 3), "b": randn(r, 3, 5), "acc": randn(r, 4, 5), "bias": randn(r, 5)})
def _(ops, a):
    out = ops.empty((4, 5), "float64")
    ops.matmul(a["a"], a["b"], out=out)
    ops.matmul_acc(a["a"], a["b"], a["acc"], ops.empty((4, 5), "float64"))
    ops.sum_rows_acc(out.reshape(2, 2, 5), a["bias"])
    return out, a["acc"], a["bias"], np.array(ops.sum_of_squares(a["b"].reshape(-1)))


@case("linear", lambda r: {"x": randn(r, 4, 3), "w": randn(r, 5, 3), "bias": randn(r, 5)})
def _(ops, a):
    """With a bias and an activation, written over z, and without a bias."""
    z, y, plain = (ops.empty((4, 5), "float64") for _ in range(3))
    assert ops.linear(a["x"], a["w"], a["bias"], "tanh", z, y) is y
    in_place = ops.empty((4, 5), "float64")
    ops.linear(a["x"], a["w"], a["bias"], "relu", in_place, in_place)
    ops.linear(a["x"], a["w"], None, "linear", plain, plain)
    return z, y, in_place, plain


@case("clip_norm_", lambda r: {"big": randn(r, 50), "small": randn(r, 50) * 0.01})
def _(ops, a):
    """Scaled to norm 1 (minus eps) where it is larger; left as it is where it is within."""
    for x in (a["big"], a["small"]):
        ops.clip_norm_(x, 1.0, 1e-6)
    return a["big"], a["small"]


@case("linear_grads",
      lambda r: {"dz": randn(r, 6, 5), "x": randn(r, 6, 3), "w": randn(r, 5, 3), "dw": randn(r, 5, 3)})
def _(ops, a):
    """Both products, then each alone (the other None); dw accumulates, dx is written."""
    dx, scratch = ops.empty((6, 3), "float64"), ops.empty((5, 3), "float64")
    ops.linear_grads(a["dz"], a["x"], a["w"], a["dw"], dx, scratch)
    dw_once = ops.asarray(np.array(ops.to_numpy(a["dw"])), "float64")
    ops.linear_grads(a["dz"], a["x"], a["w"], a["dw"], None, scratch)
    dx_alone = ops.empty((6, 3), "float64")
    ops.linear_grads(a["dz"], a["x"], a["w"], None, dx_alone, scratch)
    return dx, dw_once, a["dw"], dx_alone


def regions_on(monkeypatch, threads: int, **thresholds) -> list[int]:
    """NumPy's row threads as if there were ``threads`` cores, numpy_ops' ``thresholds`` set (e.g.
    PAIR_WORK=0); returns the list that records each region's number of tasks."""
    from neuronet.backend import numpy_ops

    for name, value in thresholds.items():
        monkeypatch.setattr(numpy_ops, name, value)
    monkeypatch.setattr("neuronet.backend.blas_threads.threads", lambda: threads)
    regions: list[int] = []
    run_blocks = NumpyOps.run_blocks
    monkeypatch.setattr(NumpyOps, "run_blocks", lambda self, tasks: (regions.append(len(tasks)),
                                                                      run_blocks(self, tasks)))
    return regions


def test_linear_grads_at_once_on_two_threads(monkeypatch):
    """The NumPy backend's two products at once (one row-thread region of two tasks) agree with the
    reference, the weight gradient accumulated."""
    regions = regions_on(monkeypatch, 2, PAIR_WORK=0)
    check(*CASES["linear_grads"], backends={"numpy": NumpyOps()})
    assert regions == [2]


# ----------------------------------------------------------------- convolution and pooling
GEOM = ConvGeometry(in_size=(7, 6), kernel=(3, 3), stride=(2, 1), padding=((1, 0), (1, 1)), dilation=(1, 2),
                    groups=2, out_size=(conv_output_size(7, 3, 2, 1, 0), conv_output_size(6, 3, 1, 1, 1, 2)))


@case("conv2d conv2d_backward pad2d im2col col2im",
      lambda r: {"x": randn(r, 2, 4, 7, 6), "w": randn(r, 6, 2, 3, 3), "b": randn(r, 6),
                 "dy": randn(r, 2, 6, *GEOM.out_size), "dw": randn(r, 6, 2, 3, 3), "db": randn(r, 6)})
def _(ops, a):
    """Into given buffers, and as new arrays (``NEW``: what a layer asks where ``ops.fresh_outputs``)."""
    scratch = scratch_of(ops)
    out = ops.empty((2, 6, *GEOM.out_size), "float64")
    assert ops.conv2d(a["x"], a["w"], a["b"], GEOM, out, scratch) is out
    dx = ops.empty((2, 4, 7, 6), "float64")
    assert ops.conv2d_backward(a["dy"], a["x"], a["w"], GEOM, dx, a["dw"], a["db"], scratch) is dx
    made = ops.conv2d(a["x"], a["w"], a["b"], GEOM, NEW, scratch)
    made_dx = ops.conv2d_backward(a["dy"], a["x"], a["w"], GEOM, NEW, None, None, scratch)
    return out, dx, a["dw"], a["db"], made, made_dx


# Stride 1: the NumPy backend's implicit GEMMs (one group and three), and without dx its direct weight
# gradient (three channels, one group).
SHIFTED = [ConvGeometry(in_size=(7, 6), kernel=(3, 2), padding=((2, 1), (1, 2)), dilation=(2, 1), groups=g,
                        out_size=(conv_output_size(7, 3, 1, 2, 1, 2), conv_output_size(6, 2, 1, 1, 2)))
           for g in (1, 3)]


@case("conv2d conv2d_backward (stride 1, with and without dx)",
      lambda r: {"x": randn(r, 3, 3, 7, 6), "b": randn(r, 6), "dy": randn(r, 3, 6, *SHIFTED[0].out_size),
                 **{f"{name}{g.groups}": randn(r, 6, 3 // g.groups, 3, 2) for g in SHIFTED
                    for name in ("w", "dw", "dw_alone")},
                 **{f"{name}{g.groups}": randn(r, 6) for g in SHIFTED for name in ("db", "db_alone")}})
def _(ops, a):
    scratch, results = scratch_of(ops), []
    for geom in SHIFTED:
        w, g = a[f"w{geom.groups}"], geom.groups
        out = ops.empty((3, 6, *geom.out_size), "float64")
        ops.conv2d(a["x"], w, a["b"], geom, out, scratch)
        dx = ops.empty((3, 3, 7, 6), "float64")
        ops.conv2d_backward(a["dy"], a["x"], w, geom, dx, a[f"dw{g}"], a[f"db{g}"], scratch)
        ops.conv2d_backward(a["dy"], a["x"], w, geom, None, a[f"dw_alone{g}"], a[f"db_alone{g}"], scratch)
        results += [out, dx, a[f"dw{g}"], a[f"db{g}"], a[f"dw_alone{g}"], a[f"db_alone{g}"],
                    ops.conv2d(a["x"], w, a["b"], geom, NEW, scratch),
                    ops.conv2d_backward(a["dy"], a["x"], w, geom, NEW, None, None, scratch)]
    return tuple(results)


@case("im2col col2im (reference layout)", lambda r: {"x": randn(r, 2, 3, 7, 6)})
def _(ops, a):
    padded = ops.pad2d(a["x"], GEOM, scratch_of(ops))
    cols = ops.empty((3, 3, 3, 2, *GEOM.out_size), "float64")
    ops.im2col(padded, GEOM, cols)
    back = ops.empty((2, 3, 7, 6), "float64")
    ops.col2im(cols, GEOM, back)
    return cols, back


@pytest.mark.parametrize("size", [(8, 8)])
def test_max_pool2d_partial_windows(size):
    """ceil_mode's extra window (an 8x8 input gives 5, not 4, rows of windows) on every backend."""
    check(lambda r: {"x": randn(r, 2, 3, *size), "dy": randn(r, 2, 3, 5, 5)}, _max_pool)


@case("max_pool2d max_pool2d_backward", lambda r: {"x": randn(r, 2, 3, 7, 7), "dy": randn(r, 2, 3, 5, 5)})
def _max_pool(ops, a):
    x = a["x"]
    oh = 5 if x.shape[2] == 8 else 4
    out, index = ops.empty((2, 3, oh, oh), "float64"), ops.empty((2, 3, oh, oh), "int64")
    ops.max_pool2d(x, (3, 3), (2, 2), (1, 1), out, index)
    dx = ops.empty(tuple(x.shape), "float64")
    ops.max_pool2d_backward(a["dy"][:, :, :oh, :oh], index, dx)
    return out, index, dx


@case("max_pool2d maxima alone", lambda r: {"x": randn(r, 2, 3, 7, 7)})
def _max_pool_values(ops, a):
    """index=None (inference under no_grad): the 2x2 kernel's own version and the general one's."""
    outs = []
    for kernel, stride, padding, size in [((2, 2), (2, 2), (0, 0), 3), ((3, 3), (2, 2), (1, 1), 4)]:
        out = ops.empty((2, 3, size, size), "float64")
        outs.append(ops.max_pool2d(a["x"], kernel, stride, padding, out, None))
    return tuple(outs)


# 2x2 / stride 2 on 7x7 (the NumPy kernel's unrolled case, the last row and column unread), 3x3 / stride 2 /
# padding 1 on 8x8 with a table of divisors (count_include_pad=False), the same with ceil_mode's extra
# window, and 3x3 windows tiling 7x7 (the kernel's offset-by-offset case, the last row and column unread).
AVG_POOLS = [((2, 2), (2, 2), (0, 0), 7, 3, False), ((3, 3), (2, 2), (1, 1), 8, 4, True),
             ((3, 3), (2, 2), (1, 1), 8, 5, True), ((3, 3), (3, 3), (0, 0), 7, 2, True)]


@case("avg_pool2d avg_pool2d_backward", lambda r: {"x": randn(r, 2, 3, 8, 8), "dy": randn(r, 2, 3, 5, 5),
                                                   "table": 1.0 / (1.0 + np.abs(randn(r, 5, 5)))})
def _(ops, a):
    results = []
    for kernel, stride, padding, size, o, table in AVG_POOLS:
        inverse = ops.asarray(np.array(ops.to_numpy(a["table"]))[:o, :o] if table else np.full((o, o), 0.25))
        out, dx = ops.empty((2, 3, o, o), "float64"), ops.empty((2, 3, size, size), "float64")
        assert ops.avg_pool2d(a["x"][:, :, :size, :size], kernel, stride, padding, inverse, out) is out
        assert ops.avg_pool2d_backward(a["dy"][:, :, :o, :o], kernel, stride, padding, inverse, dx) is dx
        results += [out, dx]
    return tuple(results)


# ----------------------------------------------------------------- activations
def _activation_case(name):
    def make(r):
        return {"z": randn(r, 4, 6), "dy": randn(r, 4, 6), "bias": randn(r, 6), "db": randn(r, 6)}

    def run(ops, a):
        alpha = 0.2 if name in ("leaky_relu", "elu") else None
        z = a["z"] * 1.0
        y = ops.empty((4, 6), "float64")
        ops.activation(name, z, y, alpha, bias=a["bias"])  # z += bias, then act
        dz = ops.empty((4, 6), "float64")
        ops.activation_backward(name, a["dy"], None if name in OUTPUT_DERIVATIVE else z, y, dz, alpha,
                                bias_grad=a["db"])
        plain = ops.empty((4, 6), "float64")
        ops.activation(name, a["z"], plain, alpha)
        in_place, d_in_place = a["z"] * 1.0, a["dy"] * 1.0  # a Dense layer's ReLU overwrites its z
        ops.activation(name, in_place, in_place, alpha)
        ops.activation_backward(name, d_in_place, None if name in OUTPUT_DERIVATIVE else a["z"], plain,
                                d_in_place, alpha)
        return z, y, dz, a["db"], plain, in_place, d_in_place
    CASES[f"activation activation_backward {name}"] = (make, run)


for _name in ACTIVATIONS:
    _activation_case(_name)


# ----------------------------------------------------------------- norms and attention
@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_norm_rows(center, bias, backends=BACKENDS):
    def run(ops, a):
        out, mean, rstd = ops.empty((5, 6), "float64"), ops.empty((5,), "float64"), ops.empty((5,), "float64")
        ops.norm_rows(a["x"], a["w"], a["b"] if bias else None, 1e-5, center, out, mean, rstd)
        dx = ops.empty((5, 6), "float64")
        ops.norm_rows_backward(a["dy"], a["x"], a["w"], mean, rstd, center, dx, a["dw"],
                               a["db"] if bias else None)
        # out=NEW and dx=NEW (a backend with fresh_outputs keeps its kernels' own results): the same values
        fresh = ops.norm_rows(a["x"], a["w"], a["b"] if bias else None, 1e-5, center, NEW, mean, rstd)
        fresh_dx = ops.norm_rows_backward(a["dy"], a["x"], a["w"], mean, rstd, center, NEW, a["dw"],
                                          a["db"] if bias else None)
        return out, rstd, dx, a["dw"], a["db"], fresh, fresh_dx
    check(lambda r: {k: randn(r, *s) for k, s in
                     dict(x=(5, 6), w=(6,), b=(6,), dy=(5, 6), dw=(6,), db=(6,)).items()}, run, backends)


@case("batch_norm_stats batch_norm batch_norm_training batch_norm_backward",
      lambda r: {k: randn(r, *s) for k, s in dict(x=(3, 4, 5), w=(4,), b=(4,), dy=(3, 4, 5)).items()})
def _(ops, a):
    stats = [ops.empty((4,), "float64") for _ in range(8)]
    mean, var, rstd, dw, db, t_mean, t_var, t_rstd = stats
    ops.batch_norm_stats(a["x"], mean, var)
    ops.copy_(rstd, var)
    rstd **= -0.5
    out, relu_out, dx, dx_eval, t_out, t_relu = (ops.empty((3, 4, 5), "float64") for _ in range(6))
    ops.batch_norm(a["x"], mean, rstd, a["w"], a["b"], out)
    ops.batch_norm(a["x"], mean, rstd, a["w"], a["b"], relu_out, True)
    ops.batch_norm_training(a["x"], a["w"], a["b"], 1e-3, t_out, t_mean, t_var, t_rstd)
    results = [mean, var, out, relu_out, t_out * 1.0, t_mean * 1.0, t_var * 1.0, t_rstd * 1.0]
    ops.batch_norm_training(a["x"], a["w"], a["b"], 1e-3, t_relu, t_mean, t_var, t_rstd, True)
    results.append(t_relu)
    for fused in (None, relu_out):  # plain, then the gradients through the fused ReLU
        for training, grad in ((True, dx), (False, dx_eval), (True, None)):
            ops.batch_norm_backward(a["dy"], a["x"], mean, rstd, a["w"], training, grad, dw, db, fused)
            results += [dw * 1.0, db * 1.0] + ([grad * 1.0] if grad is not None else [])
    return results


@case("group_norm group_norm_backward",
      lambda r: {k: randn(r, *s) for k, s in
                 dict(x=(2, 6, 5), w=(6,), b=(6,), dy=(2, 6, 5), dw=(6,), db=(6,)).items()})
def _(ops, a):
    out, mean, rstd = ops.empty((2, 6, 5), "float64"), ops.empty((6,), "float64"), ops.empty((6,), "float64")
    ops.group_norm(a["x"], a["w"], a["b"], 3, 1e-5, out, mean, rstd)
    dx = ops.empty((2, 6, 5), "float64")
    ops.group_norm_backward(a["dy"], a["x"], a["w"], mean, rstd, 3, dx, a["dw"], a["db"])
    return out, mean, rstd, dx, a["dw"], a["db"]


@case("attention_softmax attention_softmax_backward",
      lambda r: {"s": randn(r, 2, 3, 4, 4), "dp": randn(r, 2, 3, 4, 4)})
def _(ops, a):
    p, pc = ops.empty((2, 3, 4, 4), "float64"), ops.empty((2, 3, 4, 4), "float64")
    ops.attention_softmax(a["s"] * 1.0, p, False, 0.5)
    ops.attention_softmax(a["s"] * 1.0, pc, True, 0.5)
    ds = ops.empty((2, 3, 4, 4), "float64")
    ops.attention_softmax_backward(a["dp"], pc, ds, 0.5)
    in_place, ds_in_place = a["s"] * 1.0, a["dp"] * 1.0  # as the attention layer calls them
    ops.attention_softmax(in_place, in_place, True, 0.5)
    ops.attention_softmax_backward(ds_in_place, in_place, ds_in_place, 0.5)
    return p, pc, ds, in_place, ds_in_place


ATT_B, ATT_H, ATT_HD = 2, 3, 20  # with T = 40 and Tq = 13: partial row tiles, several panels (NR 16 here)


def _heads(ops, rows, t, parts):
    """The attention layer's views: (B*T, parts*H*hd) rows as ``parts`` (B, H, T, hd) strided views."""
    split = rows.reshape(ATT_B, t, parts, ATT_H, ATT_HD)
    return [ops.swapaxes(split[:, :, i], 1, 2) for i in range(parts)]


def _attention_inputs(r):
    b, h, hd = ATT_B, ATT_H, ATT_HD
    return {"qkv": randn(r, b * 40, 3 * h * hd), "q": randn(r, b * 13, h * hd),
            "kv": randn(r, b * 40, 2 * h * hd), "do": randn(r, b * 40, h * hd),
            "do_cross": randn(r, b * 13, h * hd),
            "mask": r.random((b, h, 40, 40)) < 0.7, "mask_cross": r.random((b, h, 13, 40)) < 0.7}


@case("attention attention_backward", _attention_inputs)
def _(ops, a):
    """Self-attention (T 40: causal and not, with and without dropout) and cross-attention (Tq 13, Tk 40) on
    the layer's strided head views; the gradients written into views of one (rows, 3 dim) buffer; the
    output again with no probabilities kept (probs None: ``nn.no_grad``), from a scratch that held NaN."""
    scratch, results = scratch_of(ops), []
    own = _heads(ops, a["qkv"], 40, 3)
    cross = [*_heads(ops, a["q"], 13, 1), *_heads(ops, a["kv"], 40, 2)]
    for (q, k, v), causal, mask, do in ((own, True, None, a["do"]), (own, True, a["mask"], a["do"]),
                                        (own, False, None, a["do"]),
                                        (cross, False, a["mask_cross"], a["do_cross"])):
        tq, tk = q.shape[2], k.shape[2]
        probs = ops.empty((ATT_B, ATT_H, tq, tk), "float64")
        out = ops.zeros((ATT_B * tq, ATT_H * ATT_HD), "float64")
        ops.attention(q, k, v, probs, _heads(ops, out, tq, 1)[0], causal, 0.3, mask, 1 / 0.7, scratch)
        out_alone = ops.zeros((ATT_B * tq, ATT_H * ATT_HD), "float64")
        ops.fill_(scratch("attention.probs", tuple(probs.shape)), float("nan"))
        ops.attention(q, k, v, None, _heads(ops, out_alone, tq, 1)[0], causal, 0.3, mask, 1 / 0.7, scratch)
        dq_rows = ops.zeros((ATT_B * tq, ATT_H * ATT_HD), "float64")
        dkv_rows = ops.zeros((ATT_B * tk, 2 * ATT_H * ATT_HD), "float64")
        dq, (dk, dv) = _heads(ops, dq_rows, tq, 1)[0], _heads(ops, dkv_rows, tk, 2)
        ops.attention_backward(_heads(ops, do, tq, 1)[0], probs, q, k, v, dq, dk, dv, causal, 0.3, mask,
                               1 / 0.7, scratch)
        results += [probs, out, out_alone, dq_rows, dkv_rows]
    return tuple(results)


def test_fused_attention_ignores_what_its_scratch_held():
    """The NumPy backend's causal products leave the scores' tiles above the diagonal unwritten: whatever
    its scratch held there before (NaN here, read first by the causal cases) must not reach the gradients."""
    ops = NumpyOps()
    for name, shape in (("attention.weights", (40, 40)), ("attention.keys", (3, ATT_HD, 16)),
                        ("attention.rows", (2, 40, 16)), ("attention.probs", (1, 1, 40, 40))):
        ops.temporary(name, shape, "float64").fill(np.nan)
    check(*CASES["attention attention_backward"], backends={"numpy": ops})


# ----------------------------------------------------------------- recurrent cells
@case("lstm_cell lstm_cell_backward",
      lambda r: {k: randn(r, *s) for k, s in
                 dict(gates=(3, 8), gh=(3, 8), bias=(8,), c_prev=(3, 2), dh=(3, 2), dc=(3, 2)).items()})
def _(ops, a):
    c, tanh_c, h = (ops.empty((3, 2), "float64") for _ in range(3))
    ops.lstm_cell(a["gates"], a["gh"], a["bias"], a["c_prev"], c, tanh_c, h)
    dgates = ops.empty((3, 8), "float64")
    ops.lstm_cell_backward(a["gates"], a["c_prev"], tanh_c, a["dh"], a["dc"], dgates)
    return a["gates"], c, tanh_c, h, dgates, a["dc"]


def prepacked(ops, w):
    """``w`` as the ``*_steps`` loops read it (``Ops.prepack``)."""
    return ops.prepack(w, ops.empty(ops.prepacked_shape(tuple(w.shape), "float64"), "float64"))


# 20 hidden units: 5 column panels of 16 float64 per step product forward (4H = 80), 2 backward (the second
# partial); a block of 7 rows: a tile of 6 rows and one of 1 (packed_gemm); 3 input features
RNN_STEPS, RNN_BATCH, RNN_HIDDEN, RNN_BLOCK, RNN_INPUT = 4, 9, 20, slice(1, 8), 3


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_dout", [False, True])
def test_lstm_steps(reverse, with_dout):
    """A block of 7 rows (of a batch of 9) through 4 steps and back, on views as the layer passes them."""
    def run(ops, a):
        steps, n, hid, rows = RNN_STEPS, RNN_BATCH, RNN_HIDDEN, RNN_BLOCK
        h, c = ops.zeros((steps + 1, n, hid), "float64"), ops.zeros((steps + 1, n, hid), "float64")
        gates = ops.empty((steps, n, 4 * hid), "float64")
        ops.fill_(gates, np.nan)  # an output only: what it held must not be read
        tanh_c, gh = ops.zeros((steps, n, hid), "float64"), ops.empty((7, 4 * hid), "float64")
        w_ih_t, w_hh_t = prepacked(ops, a["w_ih"].T), prepacked(ops, a["w_hh"].T)
        ops.lstm_steps(a["seq"], w_ih_t, gates, h, c, tanh_c, w_hh_t, a["bias"], gh, reverse, rows)
        dgates, dc = ops.zeros((steps, n, 4 * hid), "float64"), ops.zeros((n, hid), "float64")
        dh, dout = a["dh"], a["dout"] if with_dout else None
        dw_ih, dw_hh, dbias = a["dw_ih"], a["dw_hh"], a["dbias"]  # added to what they hold
        w_hh = prepacked(ops, a["w_hh"])
        ops.lstm_steps_backward(a["seq"], h, gates, c, tanh_c, dh, dc, dgates, w_hh, dout, reverse, rows,
                                dw_ih, dw_hh, dbias)
        return gates, h, c, tanh_c, dgates, dh, dc, dw_ih, dw_hh, dbias
    width = 4 * RNN_HIDDEN
    check(lambda r: {k: randn(r, *s) for k, s in dict(
        seq=(RNN_STEPS, RNN_BATCH, RNN_INPUT), w_ih=(width, RNN_INPUT), w_hh=(width, RNN_HIDDEN),
        bias=(width,), dh=(RNN_BATCH, RNN_HIDDEN), dout=(RNN_STEPS, RNN_BATCH, RNN_HIDDEN),
        dw_ih=(width, RNN_INPUT), dw_hh=(width, RNN_HIDDEN), dbias=(width,)).items()}, run)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_dout", [False, True])
def test_gru_steps(reverse, with_dout):
    """test_lstm_steps for the GRU."""
    def run(ops, a):
        steps, n, hid, rows = RNN_STEPS, RNN_BATCH, RNN_HIDDEN, RNN_BLOCK
        h, hn = ops.zeros((steps + 1, n, hid), "float64"), ops.zeros((steps, n, hid), "float64")
        gates = ops.empty((steps, n, 3 * hid), "float64")
        ops.fill_(gates, np.nan)  # an output only: what it held must not be read
        w_ih_t, w_hh_t = prepacked(ops, a["w_ih"].T), prepacked(ops, a["w_hh"].T)
        ops.gru_steps(a["seq"], w_ih_t, gates, h, hn, w_hh_t, a["b_ih"], a["b_hh"],
                      ops.empty((7, 3 * hid), "float64"), reverse, rows)
        dgx, dgh = ops.zeros((steps, n, 3 * hid), "float64"), ops.zeros((steps, n, 3 * hid), "float64")
        dh, dout = a["dh"], a["dout"] if with_dout else None
        grads = [a[name] for name in ("dw_ih", "dw_hh", "db_ih", "db_hh")]  # added to what they hold
        ops.gru_steps_backward(a["seq"], h, gates, hn, dh, dgx, dgh, prepacked(ops, a["w_hh"]), dout,
                               ops.empty((7, hid), "float64"), reverse, rows, *grads)
        return gates, h, hn, dgx, dgh, dh, *grads
    width = 3 * RNN_HIDDEN
    check(lambda r: {k: randn(r, *s) for k, s in dict(
        seq=(RNN_STEPS, RNN_BATCH, RNN_INPUT), w_ih=(width, RNN_INPUT), w_hh=(width, RNN_HIDDEN),
        b_ih=(width,), b_hh=(width,), dh=(RNN_BATCH, RNN_HIDDEN), dout=(RNN_STEPS, RNN_BATCH, RNN_HIDDEN),
        dw_ih=(width, RNN_INPUT), dw_hh=(width, RNN_HIDDEN), db_ih=(width,), db_hh=(width,)).items()}, run)


@case("gru_cell gru_cell_backward",
      lambda r: {k: randn(r, *s) for k, s in
                 dict(gates=(3, 6), gh=(3, 6), b_ih=(6,), b_hh=(6,), h_prev=(3, 2), dh=(3, 2)).items()})
def _(ops, a):
    hn, h = ops.empty((3, 2), "float64"), ops.empty((3, 2), "float64")
    ops.gru_cell(a["gates"], a["gh"], a["b_ih"], a["b_hh"], a["h_prev"], hn, h)
    dgx, dgh, dh_direct = (ops.empty(shape, "float64") for shape in ((3, 6), (3, 6), (3, 2)))
    ops.gru_cell_backward(a["gates"], hn, a["h_prev"], a["dh"], dgx, dgh, dh_direct)
    return a["gates"], hn, h, dgx, dgh, dh_direct


# ----------------------------------------------------------------- optimizer updates
SPANS = Spans.of([(0, 5, 0), (7, 12, 1)])  # 5..7 frozen
LR, WD = (0.1, 0.01), (0.0, 0.1)
STEPS = {
    "adam_step": (("m", "v"), [dict(beta1=0.9, beta2=0.99, eps=1e-8, step=3, decoupled=d) for d in (0, 1)]),
    "sgd_step": (("buf",), [dict(momentum=0.9, dampening=0.1, nesterov=n, first=f) for n, f in
                            ((False, True), (False, False), (True, False))]),
    "rmsprop_step": (("square_avg", "grad_avg", "buf"),
                     [dict(alpha=0.9, eps=1e-8, momentum=m, centered=c)
                      for m, c in ((0.0, False), (0.5, True))]),
    "adagrad_step": (("state_sum",), [dict(eps=1e-10)]),
    "nadam_step": (("m", "v"), [dict(beta1=0.9, beta2=0.99, eps=1e-8, step=2, mu=0.9, mu_next=0.91,
                                     mu_product=0.8)]),
}


def _step_case(name, k, kw):
    used = {"grad_avg": kw.get("centered"), "buf": kw.get("momentum")}  # state an update without them lacks
    state = [s for s in STEPS[name][0] if used.get(s, True)]

    def make(r):
        return {"p": randn(r, 12), "g": randn(r, 12), **{s: np.abs(randn(r, 12)) for s in state}}

    def run(ops, a):
        scratch = ops.zeros((ops.update_scratch, 12), "float64")
        args = [a.get(s) for s in STEPS[name][0]]  # None for unused state
        getattr(ops, name)(a["p"], a["g"], *args, scratch, SPANS, lr=LR, weight_decay=WD, **kw)
        return a["p"], *(a[s] for s in state)
    CASES[f"{name} {k}"] = (make, run)


for _name, (_, _kws) in STEPS.items():
    for _k, _kw in enumerate(_kws):
        _step_case(_name, _k, _kw)


@pytest.mark.parametrize("name", sorted(k for k in CASES if k.split()[0] in STEPS))
@pytest.mark.parametrize("threads", [2, 3])
def test_optimizer_updates_in_span_blocks(name, threads, monkeypatch):
    """The NumPy backend's updates with their spans cut into blocks on the row threads (a cut inside a
    span and, with three, at a span's end and across the frozen gap) agree with the reference."""
    regions = regions_on(monkeypatch, threads, BULK_SPLIT_WORK=0)
    check(*CASES[name], backends={"numpy": NumpyOps()})
    assert regions == [threads]


def test_fill_in_blocks(monkeypatch):
    """A large contiguous fill runs in blocks on the row threads and reaches every element; a strided view
    is filled where it lies and nowhere else."""
    regions = regions_on(monkeypatch, 2, BULK_SPLIT_WORK=4)
    ops, x = NumpyOps(), np.zeros((3, 7))
    ops.fill_(x, 1.5)
    np.testing.assert_array_equal(x, np.full((3, 7), 1.5))
    ops.fill_(x[:, ::2], -2.0)
    np.testing.assert_array_equal(x[:, ::2], -2.0)
    np.testing.assert_array_equal(x[:, 1::2], 1.5)
    assert regions == [2]


def test_add_in_blocks(monkeypatch):
    """A large contiguous add runs in blocks on the row threads, also in place; a broadcast or strided one
    runs where it lies; each equals NumPy's."""
    regions = regions_on(monkeypatch, 2, BULK_SPLIT_WORK=4)
    rng = np.random.default_rng(0)
    ops, a, b = NumpyOps(), rng.standard_normal((3, 7)), rng.standard_normal((3, 7))
    out = np.empty_like(a)
    ops.add(a, b, out=out)
    np.testing.assert_array_equal(out, a + b)
    held = a.copy()
    ops.add(held, b, out=held)
    np.testing.assert_array_equal(held, a + b)
    assert regions == [2, 2]
    ops.add(a, b[0], out=out)
    np.testing.assert_array_equal(out, a + b[0])
    ops.add(a[:, ::2], b[:, ::2], out=out[:, ::2])
    np.testing.assert_array_equal(out[:, ::2], (a + b)[:, ::2])
    assert regions == [2, 2]


def test_copy_in_blocks(monkeypatch):
    """A large contiguous copy runs in blocks of its leading axis, a broadcast source too; one overlapping
    its destination, a strided destination and a 0-d one are copied as assignment does."""
    regions = regions_on(monkeypatch, 2, BULK_SPLIT_WORK=4)
    rng = np.random.default_rng(0)
    ops, src, x = NumpyOps(), rng.standard_normal((3, 7)), np.zeros((3, 7))
    ops.copy_(x, src)
    np.testing.assert_array_equal(x, src)
    ops.copy_(x, src[1])  # broadcast along the rows
    np.testing.assert_array_equal(x, np.broadcast_to(src[1], (3, 7)))
    assert regions == [2, 2]
    x[...] = src
    ops.copy_(x[1:], x[:2])  # overlapping: the rows as they were before the copy
    np.testing.assert_array_equal(x[1:], src[:2])
    ops.copy_(x[:, ::2], src[:, ::2])
    np.testing.assert_array_equal(x[:, ::2], src[:, ::2])
    scalar = np.zeros(())
    ops.copy_(scalar, np.array(2.5))
    assert scalar == 2.5 and regions == [2, 2]
    with pytest.raises(ValueError):
        ops.copy_(x, src[:, :3])


# ----------------------------------------------------------------- routing
@case("topk group_by_key bincount",
      lambda r: {"x": randn(r, 5, 6), "keys": r.integers(0, 4, 20)})
def _(ops, a):
    values, indices = ops.empty((5, 2), "float64"), ops.empty((5, 2), "int64")
    ops.topk(a["x"], 2, values, indices)
    order, counts, bins = ops.empty((20,), "int64"), ops.empty((4,), "int64"), ops.empty((4,), "int64")
    ops.group_by_key(a["keys"], order, counts)
    ops.bincount(a["keys"], bins)
    return values, indices, order, counts, bins


# ----------------------------------------------------------------- the harness
def outputs(ops, make, run, seed=0):
    inputs = {k: ops.asarray(np.array(v)) for k, v in make(np.random.default_rng(seed)).items()}
    return [np.array(ops.to_numpy(o)) for o in run(ops, inputs)]


def check(make, run, backends=BACKENDS):
    expected = outputs(Ops(), make, run)
    for name, ops in backends.items():
        got = outputs(ops, make, run)
        assert len(got) == len(expected)
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-11, err_msg=f"{name}: output {i}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_backend_matches_reference(name):
    check(*CASES[name])


# Conversion and creation run in every case above (the harness converts every input and output).
HARNESS = {"empty", "zeros", "asarray", "to_numpy", "is_array", "is_floating", "dtype_name", "resolve_dtype",
           "ready"}  # (ready: test_ready_arrays_are_used_as_they_are)
SEPARATE = {"norm_rows", "norm_rows_backward",  # test_norm_rows
            "lstm_steps", "lstm_steps_backward", "gru_steps", "gru_steps_backward",  # test_*_steps
            "prepack", "prepacked_shape",  # test_*_steps; tests/backend/test_packed_gemm.py
            "lstm_sequence", "lstm_sequence_backward",  # tests/layers/test_recurrent.py (torch backend)
            "fused_attention", "fused_attention_backward",  # tests/layers/test_attention.py (test_fused_*)
            "nll_loss", "nll_loss_backward",  # tests/test_sync_free.py (test_fused_class_losses_*)
            "fused_batch_norm_training",  # tests/layers/test_batchnorm.py (test_torch_backend_running_*)
            "compute_in",  # tests/model/test_mixed_precision.py
            "row_blocks", "run_blocks",  # tests/backend/test_row_threads.py, tests/layers/test_recurrent.py
            "temporary",  # tests/backend/test_temporaries.py
            "host_twin", "from_host"}  # tests/losses/test_losses.py (the losses on CPU tensors)


def test_every_op_is_in_the_table():
    """A new op joins the table: every public method of Ops is named by a case (or the harness)."""
    public = {n for n, f in inspect.getmembers(Ops, inspect.isfunction) if not n.startswith("_")}
    named = {word for title in CASES for word in title.split()} | HARNESS | SEPARATE
    assert public - named == set()


def test_backends_override_only_what_differs():
    """An override that is the reference's own code is dead: none is a plain copy of the base method."""
    for ops in BACKENDS.values():
        for name, f in vars(type(ops)).items():
            base = getattr(Ops, name, None)
            if inspect.isfunction(f) and inspect.isfunction(base):
                code = (f.__code__.co_code, f.__code__.co_names, f.__code__.co_consts)
                assert code != (base.__code__.co_code, base.__code__.co_names, base.__code__.co_consts), \
                    f"{type(ops).__name__}.{name} repeats the reference"


CPU_KERNEL_CASES = sorted(n for n in CASES if n.startswith(("activation ", "max_pool2d", "avg_pool2d",
                                                            "linear", "batch_norm", "lstm_cell", "gru_cell",
                                                            "attention", "gather_rows", "topk", "clip_norm_",
                                                            "dropout_mask", *STEPS)))


@pytest.mark.parametrize("name", CPU_KERNEL_CASES)
def test_torch_ops_path_matches_reference(name, monkeypatch):
    """On CPU tensors the torch backend runs these through the Numba kernels (the optimizer updates as
    NumpyOps' fused passes); on CUDA/MPS through torch ops. Force the torch-op path here so that it is
    checked without a GPU."""
    import neuronet.backend.torch_ops as torch_ops

    monkeypatch.setattr(torch_ops, "_numba_ok", lambda x: False)
    monkeypatch.setattr(torch_ops, "_on_cpu", lambda x: False)
    monkeypatch.setattr(BACKENDS["torch"], "host_masks", True)  # (the device's own draws: test_dropout.py)
    check(*CASES[name], backends={"torch ops": BACKENDS["torch"]})


def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def torch_one_thread():
    yield from _torch_threads(1)


@pytest.fixture
def torch_two_threads():
    yield from _torch_threads(2)


ONE_THREAD_CASES = sorted(n for n in CASES if n.startswith(("activation ", "attention ")))


@pytest.mark.parametrize("name", ONE_THREAD_CASES)
def test_torch_ops_on_one_thread_match_reference(name, torch_one_thread, spy_host_kernels):
    """With torch on one thread the torch backend runs activations (with their bias) and attention's core
    through the NumPy backend's kernels on the tensors' memory."""
    calls = spy_host_kernels(("activation", "attention", "attention_backward"))
    check(*CASES[name], backends={"torch, one thread": BACKENDS["torch"]})
    assert calls and set(calls) <= {"activation", "attention", "attention_backward"}


@pytest.mark.parametrize("name, rows, on_host", [("gelu_tanh", 768, True), ("gelu", 16, True),
                                                  ("gelu", 512, False), ("relu", 16, False)])
def test_torch_activations_at_two_threads_run_where_faster(name, rows, on_host, torch_two_threads,
                                                           spy_host_kernels):
    """At two torch threads the tanh GELU at any size and the exact GELU below 2^17 elements run the NumPy
    backend's one-core kernel (faster there than PyTorch's on two threads), the rest PyTorch's kernels;
    the values and gradients are the reference's either way."""
    calls = spy_host_kernels(("activation", "activation_backward"))
    rng = np.random.default_rng(0)
    z, dy = rng.standard_normal((rows, 256)), rng.standard_normal((rows, 256))

    def run(ops, a):
        y, dz = ops.empty(z.shape, "float64"), ops.empty(z.shape, "float64")
        ops.activation(name, a["z"], y)
        ops.activation_backward(name, a["dy"], a["z"], y, dz)
        return y, dz
    check(lambda r: {"z": z, "dy": dy}, run, backends={"torch": BACKENDS["torch"]})
    assert calls == (["activation", "activation_backward"] if on_host else [])


@pytest.mark.parametrize("center, bias", [(True, True), (False, False)])
def test_norm_rows_torch_op_path_matches_reference(center, bias, monkeypatch):
    """LayerNorm's and RMSNorm's torch-op path (a CUDA tensor's), forced on CPU tensors."""
    import neuronet.backend.torch_ops as torch_ops

    monkeypatch.setattr(torch_ops, "_numba_ok", lambda x: False)
    test_norm_rows(center, bias, backends={"torch ops": BACKENDS["torch"]})


@pytest.mark.parametrize("center, calls", [(True, []), (False, ["norm_rows", "norm_rows_backward"] * 2)])
def test_norm_rows_at_two_torch_threads(center, calls, torch_two_threads, spy_host_kernels):
    """At two torch threads RMSNorm runs the NumPy backend's one-core kernels (PyTorch's five ops were 3-4x
    slower), LayerNorm PyTorch's fused kernels."""
    seen = spy_host_kernels(("norm_rows", "norm_rows_backward"))
    test_norm_rows(center, center, backends={"torch": BACKENDS["torch"]})
    assert seen == calls


@pytest.mark.parametrize("center, bias", [(True, True), (False, False)])
def test_norm_rows_on_one_torch_thread(center, bias, torch_one_thread, spy_host_kernels):
    """LayerNorm and RMSNorm the same way."""
    calls = spy_host_kernels(("norm_rows", "norm_rows_backward"))
    test_norm_rows(center, bias)
    assert calls == ["norm_rows", "norm_rows_backward"] * 2  # into buffers, then out=NEW


@pytest.mark.parametrize("threads", [1, 2])
def test_torch_cpu_updates_use_the_row_threads_only_on_one_torch_thread(threads, monkeypatch):
    """The torch backend's optimizer updates on CPU tensors run the NumPy backend's span blocks on the
    row threads while torch runs one thread; with more, in one block on the calling thread (the row
    workers' polling beside torch's spinning workers made the MLP's step 2.6 or 4.0 ms by process)."""
    regions = regions_on(monkeypatch, 2, BULK_SPLIT_WORK=0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check(*CASES["adam_step 0"], backends={"torch": BACKENDS["torch"]})
    finally:
        torch.set_num_threads(before)
    assert regions == ([2] if threads == 1 else [1])


def test_ready_arrays_are_used_as_they_are():
    """Ops.ready: the backend's own array of the dtype, nothing that needs a conversion or a detach."""
    f32 = np.dtype("float32")
    numpy_ops, torch_ops = BACKENDS["numpy"], BACKENDS["torch"]
    assert numpy_ops.ready(np.zeros(3, f32), f32)
    assert not numpy_ops.ready(np.zeros(3), f32) and not numpy_ops.ready([0.0], f32)
    assert not numpy_ops.ready(torch.zeros(3), f32)
    assert torch_ops.ready(torch.zeros(3), f32)
    assert not torch_ops.ready(torch.zeros(3, dtype=torch.float64), f32)
    assert not torch_ops.ready(torch.zeros(3, requires_grad=True), f32)
    assert not torch_ops.ready(np.zeros(3, f32), f32)
