"""The ``.nnet`` model file: safetensors tensors plus JSON metadata. Nothing in a file is ever executed.

Layout (a valid safetensors file, readable by ``safetensors.safe_open``):

    8 bytes   little-endian u64 N: length of the header
    N bytes   JSON header: {tensor name: {dtype, shape, data_offsets}, "__metadata__": {...}}
    rest      the tensors' bytes, back to back

Tensors: parameters and buffers under their ``state_dict`` names ("0.weight", "2.running_mean") and
the optimizer's state arrays as "optimizer.<name>" (e.g. "optimizer.m"). ``__metadata__["neuronet"]``
holds the JSON metadata:

    format_version   1
    architecture     {"type": "Sequential", "config": {...},
                      "layers": [{"type": "Dense", "config": {...}}, ...]}
    input_shape      [64]            (no batch dimension)
    dtype            "float32"
    frozen           ["0", "2.attn"]  layers with trainable=False, by state_dict prefix ("" the model)
    compile          {"optimizer": {"type", "config", "iterations", "initial_lr", "state": [names]},
                      "loss": {"type", "config"}, "metrics": [...]}   or null
    training         {"epoch": epochs completed, "rng_state": the global generator's state, "history": {...},
                      "position": where an interrupted epoch stopped, or null}
    extra            {...}   free-form JSON from the caller (the CLI keeps its preprocessing here)
    checksum         {"sha256": hex digest of the tensors (``_nnet_meta.checksum``)}

The optimizer entry also holds ``"scheduler"``: the state of the LR scheduler driving it, or null.
Unknown keys, wrong types and out-of-range values are rejected (``_nnet_meta``); so are tensors
that fail the checksum and, unless ``allow_nonfinite``, weights holding NaN or inf.

Loading rebuilds layers only through ``LAYERS`` (by class name, constructor arguments from the JSON),
checks every declared size against the file's length before reading, and compares every tensor's
name, dtype and shape with the rebuilt model before anything is allocated.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np

from .._atomic import atomic_path
from ..core import layer as layer_module
from ..core.layer import LAYERS, layer_name
from ..errors import NnetFormatError
from ..layers.wrapper import _Wrapper
from . import _nnet_meta as checks

FORMAT_VERSION = 1
MAX_HEADER_BYTES = 16 << 20
MAX_DEPTH = 16
MAX_LAYERS = 10_000  # layer objects one file may ask for (a GPT with 48 blocks has a few hundred)
_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_DTYPE_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}
_FLOAT_DTYPES = ("float16", "float32", "float64")


# --------------------------------------------------------------------------------------------- writing
def save(model, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Write ``model`` (architecture, weights, buffers, optimizer state, training position) to ``path``.

    ``extra`` (JSON-serialisable) is stored as is and comes back as ``model.extra`` from ``load``.
    """
    from .. import __version__
    from ..core import random as nnrandom

    model._require_built("save")
    tensors = {name: np.asarray(value, order="C") for name, value in model.state_dict().items()}
    if checks.first_nonfinite(tensors) is not None:
        warnings.warn(f"save: {checks.first_nonfinite(tensors)!r} holds NaN or inf; nn.load will refuse "
                      "the file unless allow_nonfinite=True", RuntimeWarning, stacklevel=3)
    compile_info = None
    opt, loss = getattr(model, "optimizer", None), getattr(model, "loss", None)  # a bare Layer has neither
    if opt is not None and loss is not None:
        for name, value in opt.state.items():
            tensors[f"optimizer.{name}"] = np.asarray(opt.ops.to_numpy(value), order="C")
        compile_info = {
            "optimizer": {"type": type(opt).__name__, "config": opt.get_config(),
                          "iterations": opt.iterations, "initial_lr": opt.initial_lr,
                          "state": list(opt.state), "scheduler": _scheduler_state(opt)},
            "loss": {"type": type(loss).__name__, "config": loss.get_config()},
            "metrics": list(model.metric_fns),
        }
    trainer = hasattr(model, "training_position")  # a Sequential; a bare Layer has no training state
    meta = {
        "format_version": FORMAT_VERSION,
        "neuronet_version": __version__,
        "architecture": describe(model),
        "input_shape": list(model.input_shape),
        "dtype": str(model.dtype),
        "frozen": [prefix.rstrip(".") for prefix, layer in model.named_layers() if not layer.trainable],
        "compile": compile_info,
        "training": {
            "epoch": int(model.epoch) if trainer else 0,
            "rng_state": nnrandom.generator().bit_generator.state,
            "history": model.full_history() if trainer else {},
            "position": model.training_position() if trainer else None,
        },
        "extra": extra if extra is not None else (model.extra if trainer else {}),
        "checksum": {"sha256": checks.checksum(tensors)},
    }
    for name, value in tensors.items():
        if value.dtype not in _DTYPE_CODES:
            raise TypeError(f"save: tensor {name!r} has dtype {value.dtype}, which .nnet files do not store")
    from safetensors.numpy import save as safetensors_bytes

    blob = safetensors_bytes(tensors, metadata={"format": "neuronet", "neuronet": json.dumps(meta)})
    with atomic_path(path, "save") as tmp:
        tmp.write_bytes(blob)


def _scheduler_state(optimizer) -> dict | None:
    return optimizer.scheduler.state_dict() if optimizer.scheduler is not None else None


def describe(layer) -> dict:
    """{"type", "config"} of a layer, plus "layers" (its children, in order) for a Sequential, a wrapper
    (Residual, Remat) or a Model, "graph" (JSON nodes and edges) for a Model and "name" for a named
    layer."""
    node = {"type": layer_name(type(layer)), "config": layer.get_config()}
    if layer.layer_name:
        node["name"] = layer.layer_name
    if takes_layers(type(layer)):
        node["layers"] = [describe(child) for child in layer.layers]
    if hasattr(layer, "graph_config"):
        node["graph"] = layer.graph_config()
    return node


def takes_layers(cls) -> bool:
    """Classes made of layers: Sequential(*layers), a wrapper (Residual(block), Remat(block)),
    Model.from_graph(layers, graph)."""
    return issubclass(cls, (LAYERS["Sequential"], _Wrapper)) or hasattr(cls, "from_graph")


# --------------------------------------------------------------------------------------------- reading
def read(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse and validate a ``.nnet`` file: returns (metadata, {name: array}).

    Raises ``NnetFormatError`` for anything that is not a well-formed neuronet file.
    """
    path = Path(path)
    size = path.stat().st_size
    where = str(path)
    if size < 8:
        raise NnetFormatError(f"{where}: truncated ({size} bytes; a .nnet file starts with an 8-byte "
                              "header length)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER_BYTES or n > size - 8:
            raise NnetFormatError(f"{where}: header length {n} is impossible (file has {size} bytes, "
                                  f"limit {MAX_HEADER_BYTES}); truncated or not a .nnet file")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise NnetFormatError(f"{where}: header is not valid JSON ({e}); truncated or not a .nnet file"
                                  ) from None
        data = bytearray(f.read())  # writable, so the arrays below can go to torch without a warning
    if not isinstance(header, dict):
        raise NnetFormatError(f"{where}: header must be a JSON object")
    raw_meta = header.pop("__metadata__", None)
    if not isinstance(raw_meta, dict) or raw_meta.get("format") != "neuronet" or \
            not isinstance(raw_meta.get("neuronet"), str):
        raise NnetFormatError(f"{where}: a safetensors file without neuronet metadata "
                              "(not written by model.save)")
    try:
        meta = json.loads(raw_meta["neuronet"])
    except (ValueError, RecursionError) as e:
        raise NnetFormatError(f"{where}: the neuronet metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise NnetFormatError(f"{where}: the neuronet metadata must be a JSON object")
    return meta, _tensors(header, data, where)


def _tensors(header: dict, data: bytearray, where: str) -> dict[str, np.ndarray]:
    """Views of ``data`` for each header entry, after checking that entries tile the data exactly."""
    spans = []
    for name, entry in header.items():
        if not _NAME.fullmatch(name) or len(name) > 256:
            raise NnetFormatError(f"{where}: invalid tensor name {name[:80]!r} "
                                  "(letters, digits, _ and dots only)")
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise NnetFormatError(f"{where}: tensor {name!r}: entry must have exactly dtype, shape and "
                                  "data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPES:
            raise NnetFormatError(f"{where}: tensor {name!r}: unsupported dtype {dtype!r}; "
                                  f"expected one of {', '.join(_DTYPES)}")
        if not _int_list(shape, 8) or not _int_list(offsets, 2) or len(offsets) != 2:
            raise NnetFormatError(f"{where}: tensor {name!r}: shape and data_offsets must be lists of "
                                  f"non-negative integers, got {shape!r}, {offsets!r}")
        begin, end = offsets
        nbytes = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
        if not begin <= end <= len(data) or end - begin != nbytes:
            raise NnetFormatError(f"{where}: tensor {name!r}: shape {shape} ({dtype}) needs {nbytes} "
                                  f"bytes but data_offsets are {offsets} in a data section of {len(data)} "
                                  "bytes (truncated or corrupt file)")
        spans.append((begin, end, name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin != position:
            raise NnetFormatError(f"{where}: tensor {name!r} starts at byte {begin}, expected {position} "
                                  "(overlapping or gapped tensors)")
        position = end
    if position != len(data):
        raise NnetFormatError(f"{where}: {len(data) - position} unexpected bytes after the last tensor")
    out = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
        count = math.prod(entry["shape"])
        out[name] = np.frombuffer(data, dtype, count=count, offset=begin).reshape(entry["shape"])
    return out


def _int_list(value, max_len: int) -> bool:
    return isinstance(value, list) and len(value) <= max_len and all(
        type(v) is int and 0 <= v < 2**53 for v in value)


# --------------------------------------------------------------------------------------------- loading
def load(path: str | os.PathLike, device: str | None = None, restore_rng: bool = True,
         allow_nonfinite: bool = False):
    """Rebuild the model saved in ``path``: architecture, weights, buffers, compile state and position.

    Args:
        path: a file written by ``model.save``.
        device (str, optional): backend/device to build on ("numpy", "torch", "cuda", ...). Default: the
            current default backend.
        restore_rng (bool, optional): put the global generator (shuffling, dropout) back where the saved
            run left it, so that continuing ``fit(..., initial_epoch=model.epoch)`` reproduces an
            uninterrupted run exactly. Default: ``True``.
        allow_nonfinite (bool, optional): load weights holding NaN or inf instead of refusing them.
            Default: ``False``.
    Returns:
        The model, with ``model.epoch`` (epochs completed), ``model.saved_history``, ``model.extra`` and
        ``model.position`` (where an interrupted epoch stopped) set; a scheduler saved with the
        optimizer resumes where it was when it is next attached to that optimizer.
    Raises:
        NnetFormatError: the file is truncated, malformed, corrupt (checksum) or inconsistent with the
            architecture it declares. OSError: the file is missing or unreadable.
    """
    from ..backend import get_ops

    where = str(path)
    meta, tensors = read(path)
    checks.check_keys(meta, checks.META_KEYS, "metadata", where)
    if meta.get("format_version") != FORMAT_VERSION:
        raise NnetFormatError(f"{where}: format_version {meta.get('format_version')!r:.80} is not supported "
                              f"(this neuronet reads version {FORMAT_VERSION})")
    checks.verify_checksum(meta, tensors, where)
    bad = None if allow_nonfinite else checks.first_nonfinite(tensors)
    if bad is not None:
        raise NnetFormatError(f"{where}: tensor {bad!r} holds NaN or inf (the saved model had diverged); "
                              "pass allow_nonfinite=True to load it anyway")
    input_shape = parse_input_shape(meta.get("input_shape"), where)
    dtype = _field(meta, "dtype", str, where)
    if dtype not in _FLOAT_DTYPES:
        raise NnetFormatError(f"{where}: dtype {dtype!r:.80} is not one of {', '.join(_FLOAT_DTYPES)}")
    compile_info = meta.get("compile")
    opt_state = _optimizer_state_names(compile_info, where)
    training = _training(meta.get("training"), where)
    extra = _dict(meta.get("extra") or {}, "extra", where)

    # declare (no allocation sized by the file), compare with the tensors, and only then allocate
    model = build_layer(_field(meta, "architecture", dict, where), f"{where}: architecture")
    try:
        model.build(input_shape, dtype, get_ops(device) if device else None, _root=False)
    except _REBUILD_ERRORS as e:
        raise NnetFormatError(f"{where}: the architecture does not build for input shape {input_shape}: "
                              f"{e!s:.300}") from None
    _set_frozen(model, meta.get("frozen") or [], where)
    _check_tensors(model, tensors, opt_state, dtype, where)
    model._allocate()
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("optimizer.")})
    if compile_info is not None:
        _compile(model, compile_info, {n: tensors[key] for n, key in opt_state.items()}, where)
    if hasattr(model, "training_position"):
        model.epoch, model.saved_history, model.extra = training["epoch"], training["history"], extra
        model.position = training["position"]
    if restore_rng and training.get("rng_state") is not None:
        _restore_rng(training["rng_state"], where)
    return model


# what a constructor or setup fed a hostile config may raise; all become NnetFormatError
_REBUILD_ERRORS = (ValueError, TypeError, LookupError, ArithmeticError, AttributeError, RecursionError)


def _optimizer_state_names(compile_info, where: str) -> dict[str, str]:
    """{state name: tensor name} of the optimizer state the file must hold, after checking compile."""
    if compile_info is None:
        return {}
    checks.check_keys(compile_info, checks.COMPILE_KEYS, "compile", where, required={"optimizer", "loss"})
    opt_meta = checks.check_keys(compile_info["optimizer"], checks.OPTIMIZER_KEYS, "compile.optimizer",
                                 where, required={"type", "state"})
    checks.check_keys(compile_info["loss"], checks.LOSS_KEYS, "compile.loss", where, required={"type"})
    names = _field(opt_meta, "state", list, where)
    if not all(isinstance(n, str) and _NAME.fullmatch(n) and len(n) < 64 for n in names):
        raise NnetFormatError(f"{where}: compile.optimizer.state must list tensor names, got {names!r:.80}")
    return {n: f"optimizer.{n}" for n in names}


def _training(value, where: str) -> dict:
    training = checks.check_keys(value if value is not None else {}, checks.TRAINING_KEYS, "training", where)
    return {"epoch": checks.count(training.get("epoch", 0), "training.epoch", where),
            "history": checks.history(training.get("history"), where),
            "position": checks.position(training.get("position"), where),
            "rng_state": training.get("rng_state")}


def _restore_rng(state, where: str) -> None:
    from ..core import random as nnrandom

    bitgen = nnrandom.generator().bit_generator
    if not isinstance(state, dict) or state.get("bit_generator") != type(bitgen).__name__:
        raise NnetFormatError(f"{where}: training.rng_state is not a {type(bitgen).__name__} state")
    try:
        bitgen.state = state
    except (ValueError, TypeError, LookupError, OverflowError) as e:
        raise NnetFormatError(f"{where}: training.rng_state is invalid: {e!s:.200}") from None


def parse_input_shape(value, where: str) -> tuple:
    """A checked ``input_shape``: 1 to 8 positive integers, or a list of such lists (one per input)."""
    several = isinstance(value, list) and bool(value) and all(isinstance(s, list) for s in value)
    if not isinstance(value, list) or len(value) > 64 or not all(
            s and _int_list(s, 8) and all(0 < d < 2**31 for d in s) for s in (value if several else [value])):
        raise NnetFormatError(f"{where}: input_shape must be a list of 1 to 8 positive integers (or a list "
                              f"of such lists, one per input), got {value!r:.200}")
    return tuple(tuple(s) for s in value) if several else tuple(value)


def _set_frozen(model, frozen, where: str) -> None:
    """Restore every layer's ``trainable`` flag from the prefixes of the frozen ones."""
    layers = {prefix.rstrip("."): layer for prefix, layer in model.named_layers()}
    if not isinstance(frozen, list) or not all(isinstance(p, str) and p in layers for p in frozen):
        raise NnetFormatError(f"{where}: metadata 'frozen' must list layer names of the model, "
                              f"got {frozen!r:.120}")
    for prefix, layer in layers.items():  # each flag alone: the setter would also set the descendants'
        layer._trainable = prefix not in frozen
    layer_module.TRAINABLE_VERSION += 1


def _field(d: dict, key: str, kind: type, where: str):
    value = d.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise NnetFormatError(f"{where}: metadata {key!r} must be a {kind.__name__}, got {value!r:.80}")
    return value


def _dict(value, key: str, where: str) -> dict:
    if not isinstance(value, dict):
        raise NnetFormatError(f"{where}: metadata {key!r} must be a JSON object, got {value!r:.80}")
    return value


def build_layer(node: dict, where: str, depth: int = 0):
    """A layer from ``{"type": name, "config": {...}[, "layers": [...]]}``, looked up only in ``LAYERS``."""
    if depth > MAX_DEPTH:
        raise NnetFormatError(f"{where}: layers nested deeper than {MAX_DEPTH}")
    if depth == 0 and _count_layers(node) > MAX_LAYERS:
        raise NnetFormatError(f"{where}: more than {MAX_LAYERS} layers")
    if not isinstance(node, dict) or not isinstance(node.get("type"), str) or \
            not isinstance(node.get("config", {}), dict):
        raise NnetFormatError(f"{where}: expected {{'type': name, 'config': {{...}}}}, got {node!r:.120}")
    checks.check_keys(node, _NODE_KEYS, "architecture node", where, required={"type"})
    name, config = node["type"], node.get("config", {})
    cls = LAYERS.get(name) if all(part.isidentifier() for part in name.split(".")) else None
    if cls is None:
        short = name.rsplit(".", 1)[-1][:80]
        raise NnetFormatError(f"{where}: unknown layer class {name[:80]!r}: not a built-in layer nor a "
                              f"registered one. If it is your own class, register it before loading: "
                              f"decorate it with @nn.register_layer (or call nn.register_layer({short})) "
                              "and import its module first")
    children = node.get("layers")
    if (children is not None) != takes_layers(cls):
        raise NnetFormatError(f"{where}: 'layers' is required for a Sequential, Residual, Remat or Model and "
                              "allowed only there")
    label = node.get("name")
    if label is not None and not (isinstance(label, str) and label.isidentifier() and len(label) <= 128):
        raise NnetFormatError(f"{where}: layer name must be an identifier, got {label!r:.80}")
    try:
        if children is None:
            layer = cls(**config)
        else:
            if not isinstance(children, list):
                raise NnetFormatError(f"{where}: 'layers' must be a list")
            layers = [build_layer(c, f"{where}.layers[{i}]", depth + 1) for i, c in enumerate(children)]
            layer = cls.from_graph(layers, node.get("graph"), **config) if hasattr(cls, "from_graph") \
                else cls(*layers, **config)
        layer.layer_name = label
        return layer
    except NnetFormatError:
        raise
    except _REBUILD_ERRORS as e:
        raise NnetFormatError(f"{where}: {name} cannot be rebuilt from config {config!r:.200}: {e!s:.300}"
                              ) from None


_NODE_KEYS = {"type", "config", "layers", "name", "graph"}


def _count_layers(node, depth: int = 0) -> int:
    children = node.get("layers") if isinstance(node, dict) else None
    if not isinstance(children, list) or depth > MAX_DEPTH:
        return 1
    return 1 + sum(_count_layers(c, depth + 1) for c in children)


def _check_tensors(model, tensors: dict, opt_state: dict, dtype: str, where: str) -> None:
    """Every declared parameter/buffer/optimizer array is in the file with its shape, and nothing else is."""
    expected = {name: (shape, dtype) for name, _, _, shape, _ in model.param_specs()}
    for prefix, layer in model.named_layers():
        for key, value in layer._buffer_init.items():
            expected[prefix + key] = (tuple(value.shape), str(value.dtype))
    total = model.num_params()
    for key in opt_state.values():
        expected[key] = ((total,), dtype)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise NnetFormatError(f"{where}: the file has {len(tensors)} tensors, the architecture needs "
                              f"{len(expected)}; missing {missing[:10]}, unexpected {unexpected[:10]}")
    for name, (shape, want_dtype) in expected.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(shape) or got.dtype != np.dtype(want_dtype):
            raise NnetFormatError(f"{where}: tensor {name!r} is {got.dtype}{list(got.shape)}, the "
                                  f"architecture needs {np.dtype(want_dtype)}{list(shape)}")


def _compile(model, info: dict, state: dict[str, np.ndarray], where: str) -> None:
    from ..losses import LOSSES
    from ..optim import OPTIMIZERS
    from ..optim.schedulers import check_state as check_scheduler_state

    opt_meta, loss_meta = info["optimizer"], _field(info, "loss", dict, where)
    metrics = info.get("metrics") or []
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise NnetFormatError(f"{where}: compile.metrics must be a list of names, got {metrics!r:.80}")
    try:
        optimizer = _instance(OPTIMIZERS, opt_meta, "optimizer", where)
        loss = _instance(LOSSES, loss_meta, "loss", where)
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    except NnetFormatError:
        raise
    except _REBUILD_ERRORS as e:
        raise NnetFormatError(f"{where}: compile information is invalid: {e!s:.300}") from None
    iterations = checks.count(opt_meta.get("iterations", 0), "compile.optimizer.iterations", where)
    optimizer.initial_lr = checks.number(opt_meta.get("initial_lr", optimizer.lr),
                                         "compile.optimizer.initial_lr", where)
    scheduler = opt_meta.get("scheduler")
    if scheduler is not None:  # picked up by the next scheduler of this type attached to the optimizer
        try:
            check_scheduler_state(scheduler)
        except ValueError as e:
            raise NnetFormatError(f"{where}: compile.optimizer.scheduler: {e}") from None
        optimizer.pending_scheduler_state = scheduler
    if state:
        optimizer._init_state(model.flat_params)  # allocates state and scratch on the model's backend
        unknown = sorted(set(state) - set(optimizer.state))
        if unknown:
            raise NnetFormatError(f"{where}: {type(optimizer).__name__} has no state {unknown}; it keeps "
                                  f"{sorted(optimizer.state)}")
        for name, value in state.items():
            optimizer.ops.copy_(optimizer.state[name], optimizer.ops.asarray(np.array(value)))
    optimizer.iterations = iterations


def _instance(registry: dict, node: dict, kind: str, where: str):
    name, config = node.get("type"), node.get("config", {})
    if not isinstance(name, str) or name not in registry or not isinstance(config, dict):
        raise NnetFormatError(f"{where}: unknown {kind} {str(name)[:80]!r}; "
                              f"known: {', '.join(sorted(registry))}")
    if not all(isinstance(k, str) and k.isidentifier() for k in config):
        raise NnetFormatError(f"{where}: {kind} config keys must be argument names, got {list(config)!r:.80}")
    return registry[name](**config)
