"""ONNX export: ``export_onnx(model, path, input_shape)`` writes an opset-17 graph that runs in onnxruntime.

Each layer class has one small converter, registered under its class name in ``ONNX_CONVERTERS``:
``convert(g, layer, x, prefix) -> y`` reads hyper-parameters with ``layer.get_config()`` and weights
from ``layer.params``/``layer.buffers``, appends nodes to the graph ``g`` and returns the name of its
output. Weights become initializers named by their state_dict key (``prefix + key``, with a suffix
such as ``.T`` when the layout had to change). Supporting a new layer is one new entry.

The graph is float32 (a float64 model is exported in float32) with a dynamic batch dimension; the
other input dimensions are fixed by ``input_shape``. Dropout is the identity (inference graph).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_path
from .._optional import require
from ..core.layer import Layer, ShapeError

OPSET = 17

Converter = Callable[["OnnxGraph", Layer, str, str], str]
ONNX_CONVERTERS: dict[str, Converter] = {}

# Layers whose input is integer token ids (the graph input becomes int64).
INTEGER_INPUT = {"Embedding"}


def converter(*class_names: str) -> Callable[[Converter], Converter]:
    """Register ``fn`` as the ONNX converter of the layer classes named ``class_names``."""
    def register(fn: Converter) -> Converter:
        for name in class_names:
            ONNX_CONVERTERS[name] = fn
        return fn
    return register


class OnnxGraph:
    """The nodes and initializers of one graph, with unique value names."""

    def __init__(self, opset: int = OPSET) -> None:
        from onnx import helper, numpy_helper

        self.opset = opset

        self._helper, self._numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.initializers: list = []
        self._used: set[str] = set()

    def fresh(self, hint: str) -> str:
        name, i = hint, 1
        while name in self._used:
            name, i = f"{hint}_{i}", i + 1
        self._used.add(name)
        return name

    def const(self, hint: str, value: Any, dtype: Any = np.float32) -> str:
        """An initializer holding ``value`` (float32 unless ``dtype`` says otherwise)."""
        name = self.fresh(hint)
        array = np.array(value, dtype=dtype, order="C")  # keeps 0-d scalars 0-d
        self.initializers.append(self._numpy_helper.from_array(array, name))
        return name

    def ints(self, hint: str, values: Any) -> str:
        return self.const(hint, values, np.int64)

    def param(self, layer: Layer, prefix: str, key: str, transform: Callable | None = None,
              suffix: str = "") -> str:
        """The parameter or buffer ``key`` of ``layer`` as an initializer named ``prefix + key + suffix``."""
        value = layer.params[key] if key in layer.params else layer.buffers[key]
        array = np.asarray(layer.ops.to_numpy(value), dtype=np.float32)
        return self.const(prefix + key + suffix, array if transform is None else transform(array))

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: Any) -> Any:
        """Append one node; returns its output name (or the list of names when ``outputs > 1``)."""
        names = [self.fresh(f"{op_type}_out") for _ in range(outputs)]
        node = self._helper.make_node(op_type, list(inputs), names, name=self.fresh(op_type), **attrs)
        self.nodes.append(node)
        return names[0] if outputs == 1 else names


def convert_layer(g: OnnxGraph, layer: Layer, x: str, prefix: str) -> str:
    """Run ``layer``'s converter, or raise naming the layer and the formats that can hold it."""
    fn = ONNX_CONVERTERS.get(type(layer).__name__)
    if fn is None:
        where = prefix.rstrip(".") or "model"
        raise NotImplementedError(
            f"export_onnx: layer {where} ({layer!r}) has no ONNX converter; it can be saved with "
            f"nn.export_gguf (GGUF) or model.save (.nnet). ONNX export supports: "
            f"{', '.join(sorted(ONNX_CONVERTERS))}")
    return fn(g, layer, x, prefix)


def export_onnx(model: Layer, path: str | Path, input_shape: tuple | None = None, *,
                opset: int = OPSET) -> Path:
    """Write ``model`` as an ONNX file that onnxruntime runs unchanged; returns the path.

    Args:
        model: a Sequential, a Model (or a single layer); built from ``input_shape`` when not built yet.
        path: the ``.onnx`` file, written atomically (nothing is left behind on error).
        input_shape: the input shape without the batch dimension, which stays dynamic (a list of
            shapes for a model of several inputs; optional for a built model).
        opset: the ONNX opset (17 or newer).

    The graph's inputs and outputs are "input" and "output", or "input_0", "input_1", ... and
    "output_0", ... for a functional model of several inputs or outputs.
    """
    onnx = require("onnx", "onnx", "export_onnx")
    from onnx import TensorProto, helper

    if input_shape is None:
        model._require_built("export_onnx without input_shape")
        input_shape = model.input_shape
    several = bool(input_shape) and isinstance(input_shape[0], (tuple, list))
    input_shape = tuple(tuple(int(d) for d in s) for s in input_shape) if several else \
        tuple(int(s) for s in input_shape)
    if not model.built:
        model.build(input_shape)
    elif tuple(model.input_shape) != input_shape:
        raise ShapeError(f"export_onnx: {type(model).__name__} was built for input "
                         f"(N, {_dims(model.input_shape)}), got input_shape ({_dims(input_shape)})")
    if opset < OPSET:
        raise ValueError(f"export_onnx: opset must be {OPSET} or newer (LayerNormalization), got {opset}")
    g = OnnxGraph(opset)
    in_shapes = list(input_shape) if several else [input_shape]
    in_names = [f"input_{i}" for i in range(len(in_shapes))] if several else ["input"]
    y = convert_layer(g, model, in_names if several else in_names[0], "")
    outs = y if isinstance(y, list) else [y]
    out_shapes = list(model.output_shape) if isinstance(y, list) else [model.output_shape]
    out_names = [f"output_{i}" for i in range(len(outs))] if isinstance(y, list) else ["output"]
    for value, name in zip(outs, out_names, strict=True):
        g.nodes.append(helper.make_node("Identity", [value], [name], name=name))
    in_type = TensorProto.INT64 if type(_first_leaf(model)).__name__ in INTEGER_INPUT else TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes, "neuronet",
        [helper.make_tensor_value_info(n, in_type, ["batch", *s])
         for n, s in zip(in_names, in_shapes, strict=True)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", *s])
         for n, s in zip(out_names, out_shapes, strict=True)],
        initializer=g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="neuronet", doc_string=repr(model))
    onnx.checker.check_model(proto, full_check=True)
    with atomic_path(path, "export_onnx") as tmp:
        tmp.write_bytes(proto.SerializeToString())
    return Path(path)


def _first_leaf(layer: Layer) -> Layer:
    while layer.children:
        layer = next(iter(layer.children.values()))
    return layer


def _dims(shape) -> str:
    return ", ".join(str(s) for s in shape)


# --------------------------------------------------------------------------- shared pieces
def activation(g: OnnxGraph, name: str, x: str, alpha: float | None = None) -> str:
    """``name`` from backend.ACTIVATIONS applied to ``x`` (softmaxes over the last axis)."""
    if name == "linear":
        return x
    if name in _SIMPLE:
        return g.op(_SIMPLE[name], x)
    if name == "leaky_relu":
        return g.op("LeakyRelu", x, alpha=0.01 if alpha is None else alpha)
    if name == "elu":
        return g.op("Elu", x, alpha=1.0 if alpha is None else alpha)
    if name == "selu":
        return g.op("Selu", x, alpha=1.6732632423543772, gamma=1.0507009873554805)
    if name == "gelu":  # x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
        erf = g.op("Erf", g.op("Mul", x, g.const("inv_sqrt2", 1 / math.sqrt(2))))
        return g.op("Mul", g.op("Mul", x, g.const("half", 0.5)), g.op("Add", erf, g.const("one", 1.0)))
    if name == "gelu_tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = g.op("Mul", g.op("Mul", x, x), x)
        inner = g.op("Add", x, g.op("Mul", cube, g.const("gelu_c", 0.044715)))
        t = g.op("Tanh", g.op("Mul", inner, g.const("sqrt_2_over_pi", math.sqrt(2 / math.pi))))
        return g.op("Mul", g.op("Mul", x, g.const("half", 0.5)), g.op("Add", t, g.const("one", 1.0)))
    if name == "silu":
        return g.op("Mul", x, g.op("Sigmoid", x))
    if name in ("softmax", "log_softmax"):
        return g.op("Softmax" if name == "softmax" else "LogSoftmax", x, axis=-1)
    raise NotImplementedError(f"export_onnx: activation {name!r} has no ONNX form")


_SIMPLE = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}


def linear(g: OnnxGraph, layer: Layer, prefix: str, x: str, rank: int, weight: str = "weight",
           bias: str | None = "bias") -> str:
    """x @ W^T (+ b) on the last axis of a rank-``rank`` input (Gemm for 2-D, MatMul + Add otherwise)."""
    has_bias = bias is not None and bias in layer.params
    if rank == 2:
        inputs = [x, g.param(layer, prefix, weight)] + ([g.param(layer, prefix, bias)] if has_bias else [])
        return g.op("Gemm", *inputs, transB=1)
    y = g.op("MatMul", x, g.param(layer, prefix, weight, np.transpose, ".T"))
    return g.op("Add", y, g.param(layer, prefix, bias)) if has_bias else y


def reduce_mean(g: OnnxGraph, x: str, axis: int, keepdims: int) -> str:
    """Mean over one axis (its axes moved from an attribute to an input in opset 18)."""
    if g.opset >= 18:
        return g.op("ReduceMean", x, g.ints("axes", [axis]), keepdims=keepdims)
    return g.op("ReduceMean", x, axes=[axis], keepdims=keepdims)


def reshape(g: OnnxGraph, x: str, shape: list[int]) -> str:
    """Reshape; a 0 keeps that input dimension (the dynamic batch), a -1 is inferred."""
    return g.op("Reshape", x, g.ints("shape", shape))


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, (int, np.integer)) else [int(s) for s in v]


def _ntuple(v: Any, n: int) -> list[int]:
    return [int(v)] * n if isinstance(v, (int, np.integer)) else [int(s) for s in v]


# --------------------------------------------------------------------------- containers and basics
@converter("Sequential")
def _sequential(g, layer, x, prefix):
    for name, child in layer.children.items():
        x = convert_layer(g, child, x, f"{prefix}{name}.")
    return x


@converter("Model")
def _model(g, layer, x, prefix):
    """A functional model: its calls in order over named values (x is a list for several inputs)."""
    graph = layer.graph_config()
    values = list(x) if isinstance(x, list) else [x]
    for node in graph["nodes"]:
        args = [values[t] for t in node["inputs"]]
        child = layer.layers[node["layer"]]
        values.append(convert_layer(g, child, args if node["list"] else args[0],
                                    f"{prefix}{layer.layer_keys[node['layer']]}."))
    outs = [values[t] for t in graph["outputs"]]
    return outs if graph["multi_output"] else outs[0]


@converter("Add", "Multiply")
def _merge(g, layer, xs, prefix):
    op = "Add" if type(layer).__name__ == "Add" else "Mul"
    y = xs[0]
    for x in xs[1:]:
        y = g.op(op, y, x)
    return activation(g, layer.get_config().get("activation") or "linear", y)  # Add(activation="relu")


@converter("Concatenate")
def _concatenate(g, layer, xs, prefix):
    return g.op("Concat", *xs, axis=layer.axis)


@converter("Residual")
def _residual(g, layer, x, prefix):
    return g.op("Add", x, convert_layer(g, layer.block, x, f"{prefix}block."))


@converter("Remat")
def _remat(g, layer, x, prefix):
    return convert_layer(g, layer.block, x, prefix)  # (inference: the block itself, its names unprefixed)


@converter("Dense")
def _dense(g, layer, x, prefix):
    cfg = layer.get_config()
    y = linear(g, layer, prefix, x, 1 + len(layer.input_shape))
    return activation(g, cfg["activation"], y)


@converter("Activation", "ReLU", "Sigmoid", "Tanh", "LeakyReLU", "ELU", "SELU", "GELU", "SiLU",
           "Softmax", "LogSoftmax")
def _activation_layer(g, layer, x, prefix):
    return activation(g, layer.name, x, layer.alpha)


@converter("Dropout")
def _identity(g, layer, x, prefix):
    return x


@converter("Flatten")
def _flatten(g, layer, x, prefix):
    return g.op("Flatten", x, axis=1)


@converter("Reshape")
def _reshape(g, layer, x, prefix):
    return reshape(g, x, [0, *layer.output_shape])


# --------------------------------------------------------------------------- sequences and attention
@converter("Embedding")
def _embedding(g, layer, x, prefix):
    return g.op("Gather", g.param(layer, prefix, "weight"), x, axis=0)


@converter("PositionalEncoding")
def _positional_encoding(g, layer, x, prefix):
    t = layer.input_shape[0]
    table = np.asarray(layer.ops.to_numpy(layer.table()))[:t]
    return g.op("Add", x, g.const(prefix + ("weight" if layer.get_config()["learned"] else "pe"), table))


@converter("LayerNorm", "RMSNorm")
def _norm(g, layer, x, prefix):
    eps = layer.get_config()["eps"]
    weight = g.param(layer, prefix, "weight")
    if "bias" in layer.params:
        return g.op("LayerNormalization", x, weight, g.param(layer, prefix, "bias"), axis=-1, epsilon=eps)
    mean_sq = reduce_mean(g, g.op("Mul", x, x), -1, keepdims=1)  # RMSNorm
    rms = g.op("Sqrt", g.op("Add", mean_sq, g.const("eps", eps)))
    return g.op("Mul", g.op("Div", x, rms), weight)


@converter("GroupNorm")
def _group_norm(g, layer, x, prefix):
    """(N, C, *) -> (N, G, rest): InstanceNormalization normalises each group; then the per-channel affine."""
    cfg = layer.get_config()
    groups, shape = cfg["num_groups"], layer.input_shape
    ones, zeros = g.const("gn_ones", np.ones(groups)), g.const("gn_zeros", np.zeros(groups))
    y = g.op("InstanceNormalization", reshape(g, x, [0, groups, -1]), ones, zeros, epsilon=cfg["eps"])
    per_channel = (shape[0],) + (1,) * (len(shape) - 1)  # broadcasts over the positions
    weight = g.param(layer, prefix, "weight", lambda w: w.reshape(per_channel))
    bias = g.param(layer, prefix, "bias", lambda b: b.reshape(per_channel))
    return g.op("Add", g.op("Mul", reshape(g, y, [0, *shape]), weight), bias)


@converter("MultiHeadAttention")
def _attention(g, layer, x, prefix):
    cfg = layer.get_config()
    d, h = cfg["dim"], cfg["num_heads"]
    hd, t = d // h, layer.input_shape[0]
    qkv = linear(g, layer, prefix, x, 3, "in_proj_weight", "in_proj_bias")                  # (N, T, 3D)
    heads = g.op("Transpose", reshape(g, qkv, [0, 0, 3, h, hd]), perm=[2, 0, 3, 1, 4])     # (3, N, H, T, hd)
    q, k, v = (g.op("Squeeze", s, g.ints("axis0", [0]))
               for s in g.op("Split", heads, g.ints("split3", [1, 1, 1]), outputs=3, axis=0))
    if cfg.get("rope"):
        q, k = _rope(g, q, t, hd), _rope(g, k, t, hd)
    scores = g.op("MatMul", g.op("Mul", q, g.const("scale", 1 / math.sqrt(hd))),
                  g.op("Transpose", k, perm=[0, 1, 3, 2]))                                   # (N, H, T, T)
    if cfg["causal"]:
        scores = g.op("Add", scores, g.const("causal_mask", np.triu(np.full((t, t), -np.inf), 1)))
    ctx = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)                                # (N, H, T, hd)
    ctx = reshape(g, g.op("Transpose", ctx, perm=[0, 2, 1, 3]), [0, 0, d])                 # (N, T, D)
    return convert_layer(g, layer.children["out_proj"], ctx, prefix + "out_proj.")


def _rope(g: OnnxGraph, x: str, t: int, hd: int) -> str:
    """Rotary embedding of (N, H, T, hd): [a, b] -> [a cos - b sin, b cos + a sin] (rotate-half pairing)."""
    half = hd // 2
    angle = np.arange(t)[:, None] * 10000.0 ** (-np.arange(half) * 2.0 / hd)                # (T, hd/2)
    cos, sin = g.const("rope_cos", np.cos(angle)), g.const("rope_sin", np.sin(angle))
    a, b = g.op("Split", x, g.ints("split_half", [half, half]), outputs=2, axis=-1)
    first = g.op("Sub", g.op("Mul", a, cos), g.op("Mul", b, sin))
    second = g.op("Add", g.op("Mul", b, cos), g.op("Mul", a, sin))
    return g.op("Concat", first, second, axis=-1)


@converter("TransformerBlock")
def _transformer_block(g, layer, x, prefix):
    c = layer.children
    ffn = ["ffn"] if "ffn" in c else ["linear1", "linear2"]

    def branch(names, h):
        for name in names:
            h = convert_layer(g, c[name], h, f"{prefix}{name}.")
        return h

    h = g.op("Add", x, branch(["norm1", "self_attn"], x))
    return g.op("Add", h, branch(["norm2", *ffn], h))


@converter("SwiGLU")
def _swiglu(g, layer, x, prefix):
    c = layer.children
    gate = convert_layer(g, c["w1"], x, prefix + "w1.")            # silu fused into w1
    hidden = g.op("Mul", gate, convert_layer(g, c["w3"], x, prefix + "w3."))
    return convert_layer(g, c["w2"], hidden, prefix + "w2.")


@converter("MeanPooling")
def _mean_pooling(g, layer, x, prefix):
    return reduce_mean(g, x, 1, keepdims=0)


@converter("CLSPooling", "LastToken")
def _token_pooling(g, layer, x, prefix):
    index = 0 if type(layer).__name__ == "CLSPooling" else -1
    return g.op("Gather", x, g.ints("token", index), axis=1)


@converter("GlobalAttention")
def _global_attention(g, layer, x, prefix):
    hidden = g.op("Tanh", linear(g, layer, prefix, x, 3))                               # (N, T, D)
    scores = g.op("MatMul", hidden, g.param(layer, prefix, "v"))                         # (N, T)
    weights = g.op("Unsqueeze", g.op("Softmax", scores, axis=1), g.ints("axis1", [1]))   # (N, 1, T)
    return reshape(g, g.op("MatMul", weights, x), [0, -1])                              # (N, D)


@converter("RBF")
def _rbf(g, layer, x, prefix):
    diff = g.op("Sub", g.op("Unsqueeze", x, g.ints("axis_m2", [-2])), g.param(layer, prefix, "centers"))
    dist2 = g.op("ReduceSum", g.op("Mul", diff, diff), g.ints("axis_m1", [-1]), keepdims=0)  # (..., centers)
    return g.op("Exp", g.op("Mul", dist2, g.const("neg_gamma", -layer.get_config()["gamma"])))


@converter("MoE")
def _moe(g, layer, x, prefix):
    """Every expert on every token, weighted by the top-k softmax scattered into a dense (..., E) gate."""
    from onnx import TensorProto, helper

    k = layer.get_config()["top_k"]
    logits = convert_layer(g, layer.children["gate"], x, prefix + "gate.")                        # (..., E)
    top, idx = g.op("TopK", logits, g.ints("k", [k]), outputs=2, axis=-1)
    zeros = g.op("ConstantOfShape", g.op("Shape", logits), value=helper.make_tensor("zero", TensorProto.FLOAT,
                                                                                     [1], [0.0]))
    gates = g.op("ScatterElements", zeros, idx, g.op("Softmax", top, axis=-1), axis=-1)           # (..., E)
    experts = layer.children["experts"]
    axis = g.ints("axis_m2", [-2])
    outs = [g.op("Unsqueeze", convert_layer(g, child, x, f"{prefix}experts.{name}."), axis)
            for name, child in experts.children.items()]
    stacked = g.op("Concat", *outs, axis=-2)                                            # (..., E, D)
    return g.op("Squeeze", g.op("MatMul", g.op("Unsqueeze", gates, axis), stacked), axis)


ONNX_CONVERTERS["MoEExpert"] = _sequential  # linear1 then linear2, in child order


# --------------------------------------------------------------------------- convolutions and pooling
@converter("Conv1D", "Conv2D")
def _conv(g, layer, x, prefix):
    cfg = layer.get_config()
    nd = len(layer.input_shape) - 1
    kernel, dilation = _ntuple(cfg["kernel_size"], nd), _ntuple(cfg.get("dilation", 1), nd)
    padding = cfg.get("padding", 0)
    if padding == "same":  # PyTorch's split: the odd one after
        before = [d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True)]
        pads = before + [d * (k - 1) - b for k, d, b in zip(kernel, dilation, before, strict=True)]
    else:
        pads = _ntuple(0 if padding == "valid" else padding, nd) * 2
    inputs = [g.param(layer, prefix, key) for key in ("weight", "bias") if key in layer.params]
    y = g.op("Conv", x, *inputs, kernel_shape=kernel, strides=_ntuple(cfg.get("stride", 1), nd), pads=pads,
             dilations=dilation, group=cfg.get("groups", 1))
    return activation(g, cfg.get("activation") or "linear", y)


@converter("ConvTranspose2D")
def _conv_transpose(g, layer, x, prefix):
    cfg = layer.get_config()
    pads, extra = _pair(cfg["padding"]), _pair(cfg["output_padding"])
    attrs = dict(kernel_shape=_pair(cfg["kernel_size"]), strides=_pair(cfg["stride"]),
                 dilations=_pair(cfg["dilation"]), group=cfg["groups"])
    has_bias = "bias" in layer.params
    if all(e < s for e, s in zip(extra, attrs["strides"], strict=True)):
        bias = [g.param(layer, prefix, "bias")] if has_bias else []
        return g.op("ConvTranspose", x, g.param(layer, prefix, "weight"), *bias, pads=pads * 2,
                    output_padding=extra, **attrs)
    # onnxruntime takes output_padding < stride only: cut less at the end instead, zeros past the
    # full output (no input reaches them), then the bias.
    end = [max(p - e, 0) for p, e in zip(pads, extra, strict=True)]
    y = g.op("ConvTranspose", x, g.param(layer, prefix, "weight"), pads=pads + end, **attrs)
    after = [max(e - p, 0) for p, e in zip(pads, extra, strict=True)]
    y = g.op("Pad", y, g.ints("pads", [0, 0, 0, 0, 0, 0, *after]))
    if not has_bias:
        return y
    return g.op("Add", y, g.param(layer, prefix, "bias", lambda b: b.reshape(-1, 1, 1), ".reshape"))


@converter("MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D")
def _pool(g, layer, x, prefix):
    cfg = layer.get_config()
    nd = len(layer.input_shape) - 1
    kernel = _ntuple(cfg["kernel_size"], nd)
    stride = kernel if cfg.get("stride") is None else _ntuple(cfg["stride"], nd)
    pads = _ntuple(cfg.get("padding", 0), nd) * 2
    ceil = int(cfg.get("ceil_mode", False))
    if type(layer).__name__.startswith("Max"):
        return g.op("MaxPool", x, kernel_shape=kernel, strides=stride, pads=pads, ceil_mode=ceil)
    return g.op("AveragePool", x, kernel_shape=kernel, strides=stride, pads=pads, ceil_mode=ceil,
                count_include_pad=int(cfg.get("count_include_pad", True)))


@converter("Upsample")
def _upsample(g, layer, x, prefix):
    scales = g.const("scales", [1.0, 1.0, *layer.scale_factor])
    if layer.mode == "nearest":  # output i reads input floor(i / scale)
        return g.op("Resize", x, "", scales, mode="nearest", coordinate_transformation_mode="asymmetric",
                    nearest_mode="floor")
    return g.op("Resize", x, "", scales, mode="linear", coordinate_transformation_mode="pytorch_half_pixel")


@converter("GlobalAvgPool2D")
def _global_avg_pool(g, layer, x, prefix):
    return g.op("Flatten", g.op("GlobalAveragePool", x), axis=1)


@converter("BatchNorm1D", "BatchNorm2D")
def _batchnorm(g, layer, x, prefix):
    cfg = layer.get_config()
    stats = [g.param(layer, prefix, key) for key in ("weight", "bias", "running_mean", "running_var")]
    y = g.op("BatchNormalization", x, *stats, epsilon=cfg.get("eps", 1e-5))
    return activation(g, cfg.get("activation") or "linear", y)


# --------------------------------------------------------------------------- recurrent
# PyTorch's gate blocks in ONNX's order: LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h.
_GATE_ORDER = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2]}


def _gates(w: np.ndarray, kind: str) -> np.ndarray:
    blocks = np.split(w, len(_GATE_ORDER[kind]), axis=0)
    return np.concatenate([blocks[i] for i in _GATE_ORDER[kind]], axis=0)


def rnn(g: OnnxGraph, layer: Layer, prefix: str, x: str, kind: str, cfg: dict, directions: int) -> str:
    """ONNX LSTM/GRU nodes, one per stacked layer, over batch-first x (N, T, I) (dropout: inference)."""
    suffixes = ("", "_reverse")[:directions]

    def stacked(k: int, *keys: str) -> str:  # (dirs, rows) per key, keys concatenated along the rows
        value = np.stack([np.concatenate([_gates(_host(layer, f"{key}_l{k}{s}"), kind) for key in keys])
                          for s in suffixes])
        return g.const(f"{prefix}{keys[0]}_l{k}.onnx", value)

    attrs = {"hidden_size": cfg["hidden_size"], "direction": ("forward", "bidirectional")[directions - 1]}
    if kind == "GRU":
        attrs["linear_before_reset"] = 1  # PyTorch: n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    seq = g.op("Transpose", x, perm=[1, 0, 2])                                       # (T, N, I)
    for k in range(cfg["num_layers"]):
        if k:  # (T, dirs, N, H) -> (T, N, dirs * H): the next layer's input
            seq = reshape(g, g.op("Transpose", seq, perm=[0, 2, 1, 3]), [0, 0, -1])
        w, r, b = stacked(k, "weight_ih"), stacked(k, "weight_hh"), stacked(k, "bias_ih", "bias_hh")
        seq, last = g.op(kind, seq, w, r, b, outputs=2, **attrs)
    if cfg["return_sequences"]:  # (T, dirs, N, H) -> (N, T, dirs * H)
        return reshape(g, g.op("Transpose", seq, perm=[2, 0, 1, 3]), [0, 0, -1])
    return reshape(g, g.op("Transpose", last, perm=[1, 0, 2]), [0, -1])  # (dirs, N, H) -> (N, dirs * H)


def _host(layer: Layer, key: str) -> np.ndarray:
    return np.asarray(layer.ops.to_numpy(layer.params[key]), dtype=np.float32)


@converter("LSTM", "GRU")
def _rnn_layer(g, layer, x, prefix):
    return rnn(g, layer, prefix, x, type(layer).__name__, layer.get_config(), 1)


@converter("Bidirectional")
def _bidirectional(g, layer, x, prefix):
    cfg = layer.get_config()["rnn"]
    return rnn(g, layer, prefix, x, cfg["type"], cfg, 2)
