"""YAML training configs: validate against a schema (errors name the key path and the allowed values),
fill in defaults, and turn the ``type:`` entries into neuronet objects.

    model:        {layers: [{type: Dense, in_features: 64, out_features: 10}, ...], dtype: float32,
                   inputs: {name: shape}, outputs: name | [names]}
    training:     {epochs, batch_size, optimizer: {type: Adam, lr: 0.001}, loss, metrics, callbacks, seed}
    dataset:      {source: digits|mnist|fashion_mnist|cifar10|csv|text, path, splits: {test, validation},
                   label_column, block_size, limit, download}
    preprocessing: {normalization: auto|none|scale|standardize, scale, flatten,
                    augmentation: {shift, rotate, flip}}
    output:       {dir, model, history, plot}
    hardware:     {device: auto|cpu|numpy|torch|cuda|mps, threads, workers: N|auto}
    export:       {formats: [onnx, gguf]}

A layer entry is ``{type: LayerName, name: label, ...arguments}``; a Sequential, Residual or Remat entry
lists its children under ``layers:``. With ``model.inputs`` the model is a functional graph (``nn.Model``):
each entry reads the output of the entry before it, or those ``inputs:`` names (model inputs or earlier
entries' ``name``; a list calls the layer on a list, as ``Add``), and ``model.outputs`` names the outputs
(default: the last entry's).

Relative paths (``dataset.path``, ``output.dir``) are relative to the current directory.
"""

from __future__ import annotations

import copy
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

FORMAT_VERSION = 1
SOURCES = ("digits", "mnist", "fashion_mnist", "cifar10", "csv", "text")
NORMALIZATIONS = ("auto", "none", "scale", "standardize")
DEVICES = ("auto", "cpu", "numpy", "torch", "cuda", "mps")
EXPORT_FORMATS = ("onnx", "gguf")


@dataclass(frozen=True)
class Field:
    """One leaf of the schema: accepted Python types, default, allowed values and an extra check."""

    types: tuple
    default: Any = None
    choices: tuple | None = None
    check: Any = None  # (predicate, "what it must be")


def _positive(v) -> bool:
    return v > 0


def _fraction(v) -> bool:
    return 0.0 <= v < 1.0


NUMBER = (int, float)
SCHEMA: dict = {
    "format_version": Field((int,), FORMAT_VERSION, (FORMAT_VERSION,)),
    "model": {
        "layers": Field((list,), None, check=(bool, "a non-empty list of {type: LayerName, ...arguments}")),
        "dtype": Field((str,), "float32", ("float32", "float64")),
        "inputs": Field((dict,), None, check=(bool, "a non-empty mapping of input name to shape")),
        "outputs": Field((str, list), None, check=(bool, "an entry's name or a non-empty list of names")),
    },
    "training": {
        "epochs": Field((int,), 10, check=(_positive, "a positive integer")),
        "batch_size": Field((int,), 32, check=(_positive, "a positive integer")),
        "optimizer": Field((str, dict), {"type": "Adam", "lr": 0.001}),
        "loss": Field((str, dict), "CrossEntropyLoss"),
        "metrics": Field((list,), ["accuracy"]),
        "callbacks": Field((list,), []),
        "seed": Field((int,), 0),
    },
    "dataset": {
        "source": Field((str,), None, SOURCES),
        "path": Field((str,), None),
        "splits": {
            "test": Field(NUMBER, 0.2, check=(_fraction, "a fraction in [0, 1)")),
            "validation": Field(NUMBER, 0.0, check=(_fraction, "a fraction in [0, 1)")),
        },
        "label_column": Field((int, str), -1),
        "block_size": Field((int,), 64, check=(_positive, "a positive integer")),
        "limit": Field((int,), 0, check=(lambda v: v >= 0, "0 (all samples) or a positive integer")),
        "download": Field((bool,), True),
    },
    "preprocessing": {
        "normalization": Field((str,), "auto", NORMALIZATIONS),
        "scale": Field(NUMBER, 255.0, check=(_positive, "a positive number")),
        "flatten": Field((bool,), False),
        "augmentation": {
            "shift": Field((int,), 0, check=(lambda v: v >= 0, "a number of pixels >= 0")),
            "rotate": Field(NUMBER, 0.0, check=(lambda v: 0 <= v <= 180, "degrees in [0, 180]")),
            "flip": Field((bool,), False),
        },
    },
    "output": {
        "dir": Field((str,), None),
        "model": Field((str,), "model.nnet"),
        "history": Field((str,), "history.csv"),
        "plot": Field((str, bool), False),
    },
    "hardware": {
        "device": Field((str,), "auto", DEVICES),
        "threads": Field((int,), 0, check=(lambda v: v >= 0, "0 (library default) or a positive integer")),
        "workers": Field((int, str), 1, check=(lambda v: v == "auto" or (isinstance(v, int) and v > 0),
                                               "a positive integer or 'auto'")),
    },
    "export": {
        "formats": Field((list,), []),
    },
}


MAX_NODES = 100_000  # a config's YAML nodes counted with aliases expanded (an alias bomb has billions)


def load_config(path: str | os.PathLike) -> dict:
    """Read a YAML config (safe loader: no code runs) and return it validated, with defaults.

    Raises ConfigError for invalid YAML, an alias bomb or recursive alias (more than ``MAX_NODES``
    nodes once aliases are expanded), or a config that fails validation; OSError for an unreadable file.
    """
    try:
        raw = safe_yaml(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e})") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return validate(raw if raw is not None else {})


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` that first counts nodes, aliases expanded, and refuses more than MAX_NODES."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _count_nodes(node, {}, set())
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {str(e)[:500]}") from None
    except RecursionError:
        raise ConfigError("not a usable config: YAML nested too deeply") from None
    finally:
        loader.dispose()


def _count_nodes(node, sizes: dict, open_: set) -> int:
    """Nodes under ``node`` with aliases expanded (memoised per node), refusing cycles and MAX_NODES."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise ConfigError("not a usable config: a YAML alias refers to a node that contains it")
    open_.add(key)
    total = 1
    if isinstance(node.value, list):
        for item in node.value:
            for child in item if isinstance(item, tuple) else (item,):
                total += _count_nodes(child, sizes, open_)
                if total > MAX_NODES:
                    raise ConfigError(f"not a usable config: more than {MAX_NODES} YAML nodes once aliases "
                                      "are expanded (an alias bomb?)")
    open_.discard(key)
    sizes[key] = total
    return total


def validate(raw: Any) -> dict:
    """Check ``raw`` against ``SCHEMA`` and return a full config (every key present)."""
    from ..metrics import METRICS

    cfg = _validate(raw, SCHEMA, "")
    if cfg["model"]["layers"] is None:
        raise ConfigError("model.layers: required (a list of {type: LayerName, ...arguments})")
    if cfg["dataset"]["source"] is None:
        raise ConfigError(f"dataset.source: required; allowed: {', '.join(SOURCES)}")
    if cfg["dataset"]["source"] in ("csv", "text") and cfg["dataset"]["path"] is None:
        raise ConfigError(f"dataset.path: required for source {cfg['dataset']['source']!r} (a file)")
    for i, fmt in enumerate(cfg["export"]["formats"]):
        if fmt not in EXPORT_FORMATS:
            raise ConfigError(
                f"export.formats[{i}]: {fmt!r:.80} is not allowed; allowed: {', '.join(EXPORT_FORMATS)}"
            )
    for i, name in enumerate(cfg["training"]["metrics"]):
        if name not in METRICS:
            raise ConfigError(
                f"training.metrics[{i}]: unknown metric {name!r:.80}; allowed: {', '.join(METRICS)}"
            )
    return cfg


def _validate(raw: Any, schema: dict, path: str) -> dict:
    where = path or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(schema), key=str)
    if unknown:
        raise ConfigError(f"{_join(path, str(unknown[0])[:80])}: unknown key; allowed keys here: "
                          f"{', '.join(schema)}")
    out = {}
    for key, spec in schema.items():
        here = _join(path, key)
        if isinstance(spec, dict):
            out[key] = _validate(raw.get(key), spec, here)
            continue
        value = raw.get(key, copy.deepcopy(spec.default))
        if value is None:
            out[key] = None
            continue
        if isinstance(value, bool) and bool not in spec.types or not isinstance(value, spec.types):
            names = " or ".join(
                "number" if t is float else t.__name__
                for t in spec.types
                if t is not int or float not in spec.types
            )
            raise ConfigError(f"{here}: expected {names}, got {value!r:.80}")
        if spec.choices is not None and value not in spec.choices:
            raise ConfigError(
                f"{here}: {value!r:.80} is not allowed; allowed: {', '.join(map(str, spec.choices))}"
            )
        if spec.check is not None and not spec.check[0](value):
            raise ConfigError(f"{here}: must be {spec.check[1]}, got {value!r:.80}")
        out[key] = value
    return out


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# --------------------------------------------------------------------------------------------- objects
def construct(registry: dict, spec: Any, where: str, aliases: dict | None = None, args: tuple = ()) -> Any:
    """An instance from ``"Name"`` or ``{type: Name, **arguments}``, looked up in ``registry`` (``args``:
    positional arguments before them).

    Errors name the key path, the allowed type names and, for bad arguments, the accepted ones.
    """
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: expected a type name or {{type: Name, ...arguments}}, got {spec!r:.80}")
    name, kwargs = spec["type"], {k: v for k, v in spec.items() if k != "type"}
    key = (aliases or {}).get(str(name).lower().replace("-", "_"), name)
    registry = {k: v for k, v in registry.items() if not k.startswith("_")}  # no private bases
    cls = registry.get(key)
    if cls is None:
        allowed = sorted(set(registry) | set(aliases or {}))
        raise ConfigError(f"{where}.type: unknown {name!r:.80}; allowed: {', '.join(allowed)}")
    params = inspect.signature(cls).parameters
    accepted = [p for p, v in params.items() if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
    if args:  # the child of a wrapper (Residual, Remat: its ``child_name``) is not an argument a config names
        accepted = [p for p in accepted if p != getattr(cls, "child_name", None)]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown and not any(v.kind == v.VAR_KEYWORD for v in params.values()):
        raise ConfigError(
            f"{where}.{str(unknown[0])[:80]}: {name} has no argument {unknown[0]!r:.80}; "
            f"its arguments: {', '.join(accepted)}"
        )
    if not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(f"{where} ({name}): argument names must be strings, got {list(kwargs)!r:.80}")
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError, LookupError, ArithmeticError, AttributeError, RecursionError) as e:
        raise ConfigError(f"{where} ({name}): {e!s:.300}; its arguments: {', '.join(accepted)}") from None


def build_model(cfg: dict):
    """The model ``cfg["model"]`` describes (not yet built): a Sequential of ``layers``, or with ``inputs``
    a functional ``Model`` whose entries name what they read."""
    from ..model import Model, Sequential

    spec = {"inputs": None, "outputs": None, "dtype": "float32"} | cfg["model"]
    if spec["inputs"] is None:
        for i, entry in enumerate(spec["layers"]):
            if isinstance(entry, dict) and "inputs" in entry:
                raise ConfigError(f"model.layers[{i}].inputs: only in a functional model (give "
                                  "model.inputs: {name: shape})")
        if spec["outputs"] is not None:
            raise ConfigError("model.outputs: only in a functional model (give model.inputs: {name: shape})")
        layers = [_layer(entry, f"model.layers[{i}]") for i, entry in enumerate(spec["layers"])]
        return Sequential(*layers, dtype=spec["dtype"])
    inputs = _model_inputs(spec["inputs"])
    tensors, last = dict(inputs), next(iter(inputs.values()))
    for i, entry in enumerate(spec["layers"]):
        where = f"model.layers[{i}]"
        entry = dict(entry) if isinstance(entry, dict) else entry
        reads = entry.pop("inputs", None) if isinstance(entry, dict) else None
        layer = _layer(entry, where)
        if reads is None:
            x = last
        elif isinstance(reads, list) and reads:
            x = [_tensor(tensors, r, f"{where}.inputs[{k}]") for k, r in enumerate(reads)]
        else:
            x = _tensor(tensors, reads, f"{where}.inputs")
        try:
            last = layer(x)
        except (TypeError, ValueError, LookupError) as e:  # (NeuronetError is a ValueError)
            raise ConfigError(f"{where} ({entry['type']}): {e!s:.300}") from None
        if layer.layer_name is not None:
            if layer.layer_name in tensors:
                raise ConfigError(f"{where}.name: {layer.layer_name!r} already names an input or an entry")
            tensors[layer.layer_name] = last
    outputs = spec["outputs"]
    if outputs is None:
        out = last
    elif isinstance(outputs, list):
        out = [_tensor(tensors, o, f"model.outputs[{k}]") for k, o in enumerate(outputs)]
    else:
        out = _tensor(tensors, outputs, "model.outputs")
    xs = list(inputs.values())
    try:
        return Model(xs if len(xs) > 1 else xs[0], out, dtype=spec["dtype"])
    except (TypeError, ValueError) as e:  # (an input no output uses, ...: NeuronetError is a ValueError)
        raise ConfigError(f"model: {e!s:.300}") from None


def _model_inputs(spec: dict) -> dict:
    """``model.inputs``, {name: shape without the batch}, as symbolic inputs."""
    from ..model import Input

    inputs = {}
    for name, shape in spec.items():
        where = f"model.inputs.{str(name)[:80]}"
        if not (isinstance(name, str) and name.isidentifier()):
            raise ConfigError(f"{where}: an input's name must be an identifier, got {name!r:.80}")
        if not (isinstance(shape, list) and shape and all(type(d) is int and d > 0 for d in shape)):
            raise ConfigError(f"{where}: expected a shape without the batch, a list of positive integers "
                              f"such as [1, 28, 28], got {shape!r:.80}")
        inputs[name] = Input(tuple(shape), name=name)
    return inputs


def _tensor(tensors: dict, name: Any, where: str):
    """The output ``name`` refers to (a model input or an earlier entry's ``name``)."""
    if not isinstance(name, str) or name not in tensors:
        known = ", ".join(tensors) or "none"
        raise ConfigError(f"{where}: {name!r:.80} is not a model input nor an earlier entry's name; "
                          f"known: {known}")
    return tensors[name]


def _layer(entry: Any, where: str, depth: int = 0):
    """A layer from ``{type: LayerName, ...arguments}``; one made of layers (Sequential, Residual, Remat)
    takes its children from ``layers:`` (a wrapper's several children as one Sequential)."""
    from ..core.layer import LAYERS
    from ..io.nnet import MAX_DEPTH, takes_layers
    from ..model import Sequential

    if not isinstance(entry, dict) or "type" not in entry:
        raise ConfigError(f"{where}: expected {{type: LayerName, ...arguments}}, got {entry!r:.80}")
    if depth > MAX_DEPTH:
        raise ConfigError(f"{where}: layers nested deeper than {MAX_DEPTH}")
    entry = dict(entry)
    label = entry.pop("name", None)
    if label is not None and not (isinstance(label, str) and label.isidentifier() and len(label) <= 128):
        raise ConfigError(f"{where}.name: must be an identifier, got {label!r:.80}")
    cls = LAYERS.get(entry["type"]) if isinstance(entry["type"], str) else None
    children = entry.pop("layers", None)
    if cls is None or not takes_layers(cls):
        if children is not None:
            raise ConfigError(f"{where}.layers: only a Sequential, Residual or Remat lists layers")
        layer = construct(LAYERS, entry, where)
        layer.layer_name = label
        return layer
    if hasattr(cls, "from_graph"):
        raise ConfigError(f"{where}.type: a Model inside model.layers; write its layers here instead (with "
                          "model.inputs and each entry's inputs:)")
    if not isinstance(children, list) or not children:
        raise ConfigError(f"{where}.layers: required, a non-empty list of {{type: LayerName, ...}}, got "
                          f"{children!r:.80}")
    layers = [_layer(c, f"{where}.layers[{i}]", depth + 1) for i, c in enumerate(children)]
    if cls is not Sequential and len(layers) > 1:
        layers = [Sequential(*layers)]
    layer = construct(LAYERS, entry, where, args=tuple(layers))
    layer.layer_name = label
    return layer


def compile_model(model, cfg: dict) -> None:
    from ..losses import LOSSES
    from ..model.training import LOSS_ALIASES, OPTIMIZER_ALIASES
    from ..optim import OPTIMIZERS

    training = cfg["training"]
    optimizer = construct(OPTIMIZERS, training["optimizer"], "training.optimizer", OPTIMIZER_ALIASES)
    loss = construct(LOSSES, training["loss"], "training.loss", LOSS_ALIASES)
    model.compile(optimizer=optimizer, loss=loss, metrics=training["metrics"])


def build_callbacks(cfg: dict) -> list:
    """``training.callbacks``: any public neuronet Callback (EarlyStopping, ReduceLROnPlateau, ...)."""
    import neuronet

    from ..callbacks import Callback

    public = {name: getattr(neuronet, name) for name in neuronet.__all__}
    registry = {
        name: obj
        for name, obj in public.items()
        if isinstance(obj, type)
        and issubclass(obj, Callback)
        and name not in ("Callback", "History", "ProgressBar")
    }
    return [
        construct(registry, spec, f"training.callbacks[{i}]")
        for i, spec in enumerate(cfg["training"]["callbacks"])
    ]
