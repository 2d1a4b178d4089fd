"""GGUF export and import: the model's tensors under their state_dict names, its architecture as metadata.

The file alone describes the model: ``general.architecture = "neuronet"``, ``general.name``, and
``neuronet.config``, a JSON string ``{"format_version", "input_shape", "model"}`` where ``model`` is
the layer tree ``{class name, get_config(), child layers (Sequential only)}``
(the description ``nnet.describe`` gives, as in ``.nnet`` files); typed keys
``neuronet.input_shape``, ``neuronet.dtype``, ``neuronet.weight_type`` and ``neuronet.param_count``
repeat the essentials for tools that do not parse JSON.

Tensors of two or more dimensions are stored in the requested type (f32, f16 or q8_0; q8_0 needs
the last dimension to be a multiple of 32 and falls back to f16 otherwise); 1-D tensors (biases,
norms) stay f32; integer buffers keep their integer type; a 0-d buffer is stored with shape (1,).
GGUF lists dimensions innermost first, so a (out, in) weight appears there as [in, out].
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_path
from .._optional import require
from ..core.layer import Layer
from ..errors import NnetFormatError
from ._gguf_check import check_gguf_layout
from ._nnet_meta import check_keys
from .nnet import _REBUILD_ERRORS, build_layer, describe, parse_input_shape

ARCH = "neuronet"
FORMAT_VERSION = 1
WEIGHT_TYPES = ("f32", "f16", "q8_0")
Q8_BLOCK = 32


# --------------------------------------------------------------------------- export
def export_gguf(model: Layer, path: str | Path, dtype: str = "f32", *, name: str | None = None) -> Path:
    """Write ``model`` (built) as a GGUF file readable by ``gguf.GGUFReader``; returns the path.

    Args:
        model: a built Sequential (or layer).
        path: the ``.gguf`` file, written atomically (nothing is left behind on error).
        dtype: storage type of tensors with two or more dimensions: "f32", "f16" or "q8_0".
        name: ``general.name`` (default: the model's class name).
    """
    gguf = require("gguf", "gguf", "export_gguf")

    if dtype not in WEIGHT_TYPES:
        raise ValueError(f"export_gguf: dtype must be one of {', '.join(WEIGHT_TYPES)}, got {dtype!r}")
    model._require_built("export_gguf")
    _check_serialisable(model)
    config = {"format_version": FORMAT_VERSION, "input_shape": list(model.input_shape),
              "model": describe(model)}
    tensors = {key: _encode(gguf, value, dtype) for key, value in model.state_dict().items()}
    with atomic_path(path, "export_gguf") as tmp:
        writer = gguf.GGUFWriter(tmp, ARCH)
        writer.add_name(name or type(model).__name__)
        writer.add_string(f"{ARCH}.config", json.dumps(config))
        if isinstance(model.input_shape[0], int):  # (a model of several inputs has them in the config)
            writer.add_array(f"{ARCH}.input_shape", [int(s) for s in model.input_shape])
        writer.add_string(f"{ARCH}.dtype", str(model.dtype))
        writer.add_string(f"{ARCH}.weight_type", dtype)
        writer.add_uint64(f"{ARCH}.param_count", int(model.num_params()))
        for key, (data, raw_type) in tensors.items():
            writer.add_tensor(key, data, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(path)


def _check_serialisable(model: Layer) -> None:
    """Raise naming the first layer whose get_config() cannot be written as JSON."""
    for prefix, layer in model.named_layers():
        try:
            json.dumps(layer.get_config())
        except (TypeError, ValueError) as err:
            where = prefix.rstrip(".") or "model"
            raise TypeError(f"export_gguf: layer {where} ({layer!r}): its configuration is not "
                            f"JSON-serialisable ({err}), so GGUF cannot describe it; nn.export_onnx "
                            "may still support it") from err


def _encode(gguf: Any, value: np.ndarray, dtype: str) -> tuple[np.ndarray, Any]:
    """(array to write, raw GGML type or None) for one state_dict entry."""
    value = np.asarray(value)
    if value.ndim == 0:
        value = value.reshape(1)
    if not np.issubdtype(value.dtype, np.floating):
        return np.ascontiguousarray(value), None
    if value.ndim < 2 or dtype == "f32":
        return np.ascontiguousarray(value, dtype=np.float32), None
    if dtype == "q8_0" and value.shape[-1] % Q8_BLOCK == 0:
        q8 = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(np.ascontiguousarray(value, dtype=np.float32), q8), q8
    return np.ascontiguousarray(value, dtype=np.float16), None


# --------------------------------------------------------------------------- import
# what the third-party GGUF parser raises on a malformed file; all become NnetFormatError
_PARSE_ERRORS = (ValueError, LookupError, TypeError, ArithmeticError, AttributeError, struct.error,
                 UnicodeDecodeError, NotImplementedError)
CONFIG_KEYS = {"format_version", "input_shape", "model"}


def _read_config(path: str | Path) -> tuple[dict, Any]:
    """The checked ``neuronet.config`` and the open reader (tensors memory-mapped, nothing read yet)."""
    gguf = require("gguf", "gguf", "load_gguf")

    reader = _open(gguf, path)
    where = f"load_gguf: {str(path)!r}"
    field = reader.fields.get(f"{ARCH}.config")
    if field is None:
        raise NnetFormatError(f"{where} has no '{ARCH}.config' metadata; it was not written by "
                              "nn.export_gguf")
    try:
        config = json.loads(field.contents())
    except (*_PARSE_ERRORS, RecursionError) as err:
        raise NnetFormatError(f"{where}: '{ARCH}.config' is not valid JSON ({err!s:.200})") from None
    if not isinstance(config, dict) or config.get("format_version") != FORMAT_VERSION:
        raise NnetFormatError(f"{where}: unsupported {ARCH}.config format_version "
                              f"{config.get('format_version') if isinstance(config, dict) else None!r:.80}")
    check_keys(config, CONFIG_KEYS, f"{ARCH}.config", where, required=CONFIG_KEYS)
    config["input_shape"] = parse_input_shape(config["input_shape"], f"{where}: {ARCH}.config")
    return config, reader


def _tensor(t: Any, path) -> np.ndarray:
    import gguf

    try:
        if t.tensor_type in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32):
            return np.array(t.data, dtype=np.float32)
        if np.issubdtype(t.data.dtype, np.integer) and t.data.dtype != np.uint8:
            return np.array(t.data)
        return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    except _PARSE_ERRORS as err:
        raise NnetFormatError(f"load_gguf: {str(path)!r}: tensor {t.name!r:.80} of type "
                              f"{getattr(t.tensor_type, 'name', t.tensor_type)} cannot be read ({err!s:.200})"
                              ) from None


def load_gguf(path: str | Path) -> Layer:
    """Rebuild the model ``export_gguf`` saved: architecture from the metadata, weights from the tensors.

    The layer tree is declared first and every declared parameter and buffer is compared (name and
    NumPy shape, not only the element count) with the file's tensors before anything is allocated.
    Raises NnetFormatError for a malformed or inconsistent file, FileNotFoundError for a missing one.
    """
    config, reader = _read_config(path)
    where = f"load_gguf: {str(path)!r}"
    model = build_layer(config["model"], f"{where}: {ARCH}.config model")
    try:
        model.build(config["input_shape"], _root=False)
    except _REBUILD_ERRORS as e:
        raise NnetFormatError(f"{where}: the architecture does not build for input shape "
                              f"{config['input_shape']}: {e!s:.300}") from None
    expected = {name: shape for name, _, _, shape, _ in model.param_specs()}
    for prefix, layer in model.named_layers():
        expected.update({prefix + k: tuple(v.shape) for k, v in layer._buffer_init.items()})
    # GGUF lists dimensions innermost first
    stored = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise NnetFormatError(f"{where}: the architecture needs {len(expected)} tensors, the file has "
                              f"{len(stored)}; missing {missing[:10]}, unexpected {unexpected[:10]}")
    for name, want in expected.items():
        if stored[name] != want and not (want == () and stored[name] == (1,)):  # 0-d buffers: (1,)
            raise NnetFormatError(f"{where}: tensor {name!r} has shape {list(stored[name])}, the "
                                  f"architecture needs {list(want)}")
    state = {t.name: _tensor(t, path).reshape(expected[t.name]) for t in reader.tensors}
    model._allocate()
    model.load_state_dict(state)
    return model


def _open(gguf: Any, path: str | Path) -> Any:
    if not Path(path).is_file():
        raise FileNotFoundError(f"load_gguf: no such file {str(path)!r}")
    check_gguf_layout(path, f"load_gguf: {str(path)!r}")  # no count the file cannot hold reaches the parser
    try:
        return gguf.GGUFReader(path)
    except _PARSE_ERRORS as err:
        raise NnetFormatError(f"load_gguf: {str(path)!r} is not a readable GGUF file ({err!s:.200})"
                              ) from None
