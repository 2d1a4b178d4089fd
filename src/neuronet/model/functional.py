"""Functional models: ``nn.Model(inputs, outputs)``, a graph of layers (Keras's functional API).

    inp = nn.Input((16,))
    h = nn.Dense(16, 32, activation="relu")(inp)
    out = nn.Dense(32, 4)(nn.Add()([h, nn.Dense(32, 32)(h)]))
    model = nn.Model(inputs=inp, outputs=out)

The graph is recorded by calling layers on symbolic tensors (core/graph.py); ``Model`` orders the
calls topologically (by call order), numbers the tensors (inputs first, then one per call) and runs:

- forward: every call in order, each output kept by reference (it lives in its layer's workspace);
- backward: the calls in reverse, skipping those that neither hold parameters nor lead to something
  that does (train_step), and telling a layer when its dL/dx is not needed. A tensor feeding several
  calls gets the SUM of their gradients, in a preallocated workspace buffer of the model.

A layer called several times is one set of weights: the first call runs on the layer itself, every
further call on a shallow clone that shares the parameter and gradient views (so gradients add up)
but keeps its own workspace and saved activations.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ..core import layer as layer_module
from ..core.graph import SymbolicTensor, call_layer, is_symbolic
from ..core.layer import Layer
from ..errors import ConfigError, ShapeError
from ..losses import LOSSES, Loss
from .data_adapter import DataList, as_array
from .totals import Totals
from .training import LOSS_ALIASES, OPTIMIZER_ALIASES, Trainer, _resolve


def Input(shape, name: str | None = None) -> SymbolicTensor:  # noqa: N802 (Keras's spelling)
    """A model input: a symbolic batch ``(N, *shape)`` (``shape`` without the batch axis)."""
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    if not shape or min(shape) < 1:
        raise ShapeError(f"Input: shape must be positive sizes without the batch axis, got {shape}")
    if name is not None and not (isinstance(name, str) and name.isidentifier()):
        raise ValueError(f"Input: name must be an identifier, got {name!r}")
    return SymbolicTensor(shape, None, name)


class _Step:
    """One layer call: ``layer`` indexes ``Model.layers``; tensors are numbered inputs first."""

    __slots__ = ("layer", "inputs", "listed", "output")

    def __init__(self, layer: int, inputs: list[int], listed: bool, output: int):
        self.layer, self.inputs, self.listed, self.output = layer, inputs, listed, output


class Model(Trainer, Layer):
    """A graph of layers from ``inputs`` to ``outputs`` (symbolic tensors, or lists of them).

    Args:
        inputs (SymbolicTensor | list[SymbolicTensor]): ``nn.Input(...)`` tensors, one or a list.
        outputs (SymbolicTensor | list[SymbolicTensor]): tensors computed from them by calling layers,
            one or a list.
        dtype (str, optional): "float32" (default) or "float64" for everything in the model.

    ``forward`` takes one array or a list (one per input) and returns one array or a list (one per
    output); ``backward`` mirrors it. ``Model.layers`` are the distinct layers in the order they were
    first called; the state_dict key of layer ``i`` is ``"i.<param>"``, or ``"<name>.<param>"`` for a
    layer made with ``name=``.
    """

    def __init__(self, inputs, outputs, dtype: str = "float32"):
        Layer.__init__(self)
        Trainer.__init__(self)
        self._multi_in = isinstance(inputs, (list, tuple))
        self._multi_out = isinstance(outputs, (list, tuple))
        self._inputs = _tensors(inputs, "inputs")
        self._outputs = _tensors(outputs, "outputs")
        self.dtype = np.dtype(dtype)
        self._trace()
        self.build(tuple(t.shape for t in self._inputs) if self._multi_in else self._inputs[0].shape)

    # ----------------------------------------------------------------- the graph
    def _trace(self) -> None:
        """Collect the calls the outputs depend on, in call order, and number layers and tensors."""
        declared = {id(t): i for i, t in enumerate(self._inputs)}
        if len(declared) != len(self._inputs):
            raise ValueError("Model: the same Input is listed twice in inputs")
        nodes, used, stack = {}, set(), [(t, f"output {i}") for i, t in enumerate(self._outputs)]
        while stack:
            t, needed_by = stack.pop()
            if t.node is None:
                if id(t) not in declared:
                    raise ShapeError(f"Model: {needed_by} depends on the input {t.describe()}, which is not "
                                     "in inputs; pass it in Model(inputs=[...])")
                used.add(id(t))
            elif id(t.node) not in nodes:
                nodes[id(t.node)] = t.node
                stack.extend((src, needed_by) for src in t.node.inputs)
        for i, t in enumerate(self._inputs):
            if id(t) not in used:
                raise ShapeError(f"Model: no output depends on input {i} ({t.describe()}); "
                                 "remove it from inputs or use it")
        order = sorted(nodes.values(), key=lambda n: n.order)
        self.layers: list[Layer] = []
        index: dict[int, int] = {}
        tensor_id = dict(declared)
        self._steps: list[_Step] = []
        for node in order:
            if id(node.layer) not in index:
                index[id(node.layer)] = len(self.layers)
                self.layers.append(node.layer)
            tensor_id[id(node.output)] = len(self._inputs) + len(self._steps)
            self._steps.append(_Step(index[id(node.layer)], [tensor_id[id(t)] for t in node.inputs],
                                     node.listed, tensor_id[id(node.output)]))
        self._output_ids = [tensor_id[id(t)] for t in self._outputs]
        self.layer_keys = [layer.layer_name or str(i) for i, layer in enumerate(self.layers)]
        if len(set(self.layer_keys)) != len(self.layer_keys):
            dup = sorted({k for k in self.layer_keys if self.layer_keys.count(k) > 1})
            raise ConfigError(f"Model: several layers are named {dup}; layer names must be unique")
        names = [self._name_of(t, i) for i, t in enumerate(self._outputs)]
        self.output_names = [n if names.count(n) == 1 else f"out{i}" for i, n in enumerate(names)]
        self.input_names = [t.name or f"input_{i}" for i, t in enumerate(self._inputs)]
        n = len(self._inputs) + len(self._steps)
        self._values: list[Any] = [None] * n
        self._grads: list[Any] = [None] * n
        self._nones: list[Any] = [None] * n
        self._consumers = [0] * n
        for step in self._steps:
            for t in step.inputs:
                self._consumers[t] += 1
        for t in self._output_ids:
            self._consumers[t] += 1
        self._sum_names = [f"dsum{t}" for t in range(n)]
        self._summed, self._no_sums = [False] * n, [False] * n  # t's gradient in its sum buffer yet
        self._runners_for = None
        # Shared dL/dx (share_input_grads): the slot (index into _slots) each waiting gradient is in, and
        # how many waiting gradients each slot holds; a step that reads a model input keeps its own
        # workspace, for that gradient leaves the model.
        self._slot_of: list[int] = [-1] * n
        self._no_slots: list[int] = [-1] * n
        self._slot_users: list[int] = []
        self._slots: list[tuple[str]] = []  # each slot's name, as the _grad_slots a layer is given
        n_in = len(self._inputs)
        self._slot_steps = [all(t >= n_in for t in step.inputs) for step in self._steps]

    def _name_of(self, t: SymbolicTensor, i: int) -> str:
        layer = t.node.layer if t.node is not None else None
        return (layer.layer_name if layer is not None else t.name) or f"out{i}"

    def graph_config(self) -> dict:
        """The graph as JSON: inputs (name, shape), calls (layer index, input tensor ids), outputs.

        Tensor ids count the inputs first, then one per call in order; ``.nnet`` files and the ONNX
        exporter read this (never code).
        """
        return {
            "inputs": [{"name": t.name, "shape": list(t.shape)} for t in self._inputs],
            "nodes": [{"layer": s.layer, "inputs": list(s.inputs), "list": s.listed} for s in self._steps],
            "outputs": list(self._output_ids),
            "multi_input": self._multi_in, "multi_output": self._multi_out,
        }

    @classmethod
    def from_graph(cls, layers: list, graph: dict, **config) -> Model:
        """Rebuild from ``graph_config()`` and the layers it indexes, by calling them symbolically."""
        if not isinstance(graph, dict) or not all(isinstance(graph.get(k), list)
                                                  for k in ("inputs", "nodes", "outputs")):
            raise ValueError("graph must be {'inputs': [...], 'nodes': [...], 'outputs': [...]}")
        tensors = []
        for spec in graph["inputs"]:
            if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list):
                raise ValueError(f"graph input must be {{'name', 'shape'}}, got {spec!r:.80}")
            tensors.append(Input(spec["shape"], spec.get("name")))
        n_inputs = len(tensors)
        for k, node in enumerate(graph["nodes"]):
            if not isinstance(node, dict) or not _index(node.get("layer"), len(layers)) or \
                    not isinstance(node.get("inputs"), list) or not node["inputs"] or \
                    not all(_index(t, len(tensors)) for t in node["inputs"]):
                raise ValueError(f"graph node {k} must name a layer and earlier tensors, got {node!r:.120}")
            args = [tensors[t] for t in node["inputs"]]
            tensors.append(call_layer(layers[node["layer"]], args if node.get("list") else args[0]))
        outs = graph["outputs"]
        if not outs or not all(_index(t, len(tensors)) for t in outs):
            raise ValueError(f"graph outputs must be tensor ids, got {outs!r:.80}")
        inputs = tensors[:n_inputs] if graph.get("multi_input", n_inputs > 1) else tensors[0]
        outputs = [tensors[t] for t in outs] if graph.get("multi_output", len(outs) > 1) else tensors[outs[0]]
        return cls(inputs, outputs, **config)

    # ----------------------------------------------------------------- building
    def setup(self, input_shape):
        shapes = list(input_shape) if self._multi_in else [input_shape]
        want = [t.shape for t in self._inputs]
        if [tuple(s) for s in shapes] != want:
            raise ShapeError(f"Model: built for inputs {', '.join(map(_dims, want))}, got "
                             f"{', '.join(map(_dims, shapes))}")
        shape_of = want + [None] * len(self._steps)
        built = set()
        for step in self._steps:
            layer = self.layers[step.layer]
            shape = tuple(shape_of[t] for t in step.inputs) if step.listed else shape_of[step.inputs[0]]
            if step.layer in built:
                if layer.input_shape != shape:
                    raise ShapeError(f"Model: shared layer {layer!r} was built for "
                                     f"{_dims(layer.input_shape)}, called on {_dims(shape)}")
                shape_of[step.output] = layer.output_shape
            else:
                built.add(step.layer)
                shape_of[step.output] = self.add_child(self.layer_keys[step.layer], layer, shape)
        self.__dict__.pop("_plans_at", None)
        outs = [shape_of[t] for t in self._output_ids]
        return tuple(outs) if self._multi_out else outs[0]

    @property
    def _plans(self) -> dict:
        """The backward plans by ``input_grad``; re-made when any layer's ``trainable`` changes."""
        cached = self.__dict__.get("_plans_at")
        if cached is None or cached[0] != layer_module.TRAINABLE_VERSION:
            cached = self._plans_at = (layer_module.TRAINABLE_VERSION,
                                       {flag: self._plan(flag) for flag in (True, False)})
        return cached[1]

    def _has_trainable_params(self, layer: Layer) -> bool:
        """Whether backward must reach ``layer`` for its weights (frozen layers' need not)."""
        return layer.num_trainable_params() > 0

    def _plan(self, input_grad: bool) -> list[tuple[int, bool]]:
        """(step index, whether its dL/dx is needed) in backward order, leaving out steps that need no run."""
        n_in = len(self._inputs)
        needs = [input_grad] * n_in + [False] * len(self._steps)
        trains = [self._has_trainable_params(layer) for layer in self.layers]
        for step in self._steps:
            needs[step.output] = trains[step.layer] or any(needs[t] for t in step.inputs)
        if not input_grad:
            self._needs_train = needs  # which inputs of a merge layer want their dL/dx
        return [(k, any(needs[t] for t in step.inputs)) for k, step in reversed(list(enumerate(self._steps)))
                if needs[step.output]]

    def build(self, input_shape, dtype: Any = None, ops=None, *, _root: bool = True) -> tuple:
        out = super().build(input_shape, dtype, ops, _root=_root)
        if self.optimizer is not None:
            self.optimizer.reset()
        return out

    def _runners(self) -> list[Layer]:
        """The object that runs each call: the layer itself the first time, a clone for a shared layer."""
        if self._runners_for is not self.params:  # (re)built or moved since: clone again
            seen: set[int] = set()
            runners = []
            for step in self._steps:
                layer = self.layers[step.layer]
                runners.append(_clone(layer) if step.layer in seen else layer)
                seen.add(step.layer)
            self._runner_list, self._runners_for = runners, self.params
        return self._runner_list

    # ----------------------------------------------------------------- computation
    def _input_list(self, x) -> list:
        n = len(self._inputs)
        if isinstance(x, DataList):
            x = x.arrays
        if not self._multi_in:
            return [x[0] if isinstance(x, (list, tuple)) and len(x) == 1 and hasattr(x[0], "shape") else x]
        if not isinstance(x, (list, tuple)) or len(x) != n:
            got = f"{len(x)} arrays" if isinstance(x, (list, tuple)) else f"one {type(x).__name__}"
            raise ShapeError(f"Model: expected a list of {n} inputs ({', '.join(self.input_names)}), "
                             f"got {got}")
        return x

    def _prepare(self, x, i: int):
        ops = self.ops
        if not ops.ready(x, self.dtype):
            x = ops.asarray(x)
            if ops.is_floating(x) and ops.dtype_name(x) != str(self.dtype):
                x = ops.asarray(x, self.dtype)
        if tuple(x.shape[1:]) != self._inputs[i].shape:
            raise ShapeError(f"Model: input {i} ({self.input_names[i]}) expects (N, "
                             f"{', '.join(map(str, self._inputs[i].shape))}), got {tuple(x.shape)}")
        return x

    def forward(self, x, training: bool = True):
        """Run every call in order; ``x`` is one array (N, ...) or a list, one per input."""
        xs = self._input_list(x)
        values = self._values
        for i, xi in enumerate(xs):
            values[i] = self._prepare(xi, i)
        if len(xs) > 1 and len({v.shape[0] for v in values[:len(xs)]}) > 1:
            sizes = [v.shape[0] for v in values[:len(xs)]]
            raise ShapeError(f"Model: inputs have different batch sizes {sizes}")
        for step, layer in zip(self._steps, self._runners(), strict=True):
            arg = [values[t] for t in step.inputs] if step.listed else values[step.inputs[0]]
            values[step.output] = layer.forward(arg, training=training)
        if self._multi_out:
            return [values[t] for t in self._output_ids]
        return values[self._output_ids[0]]

    def _add_grad(self, t: int, d, slot: int = -1) -> None:
        """Add one consumer's dL/d(tensor t). The first is held by reference (``slot``: the shared
        temporary d is in, which it then holds until it is read), the second is added to it into t's
        sum buffer (the first's temporary is then free), later ones into that buffer. A model input's
        gradient leaves the model: it is never left in a shared temporary, and with several consumers
        it is summed in its buffer from the first."""
        grads, slot_of = self._grads, self._slot_of
        held = grads[t]
        if held is None and (t >= len(self._inputs) or (self._consumers[t] == 1 and slot < 0)):
            grads[t] = d
            if slot >= 0:
                slot_of[t] = slot
                self._slot_users[slot] += 1
        elif held is None:
            buf = grads[t] = self.workspace(self._sum_names[t], tuple(d.shape))
            self.ops.copy_(buf, d)
        elif t < len(self._inputs) or self._summed[t]:
            self.ops.add(held, d, out=held)
        else:
            grads[t] = self.workspace(self._sum_names[t], tuple(d.shape))
            self.ops.add(held, d, out=grads[t])
            self._summed[t] = True
            if slot_of[t] >= 0:  # the first gradient is read: its temporary no longer holds one
                self._slot_users[slot_of[t]] -= 1
                slot_of[t] = -1

    def share_input_grads(self, depth: int) -> None:
        # A step's dL/dx waits in ``_grads`` until the producer of its tensor runs backward, and branches
        # interleave in the plan: each call gets, in ``backward``, a temporary of this depth that no waiting
        # gradient is in (``_free_slot``), rather than a fixed pair as in Sequential.
        self._slot_depth = depth
        for layer in self.layers:
            layer.share_input_grads(depth + 1)

    def _free_slot(self) -> int:
        """The first shared temporary that holds no waiting gradient (a new one when all do)."""
        users = self._slot_users
        for k, count in enumerate(users):
            if count == 0:
                return k
        users.append(0)
        self._slots.append((f"grad{self._slot_depth}.m{len(users) - 1}",))
        return len(users) - 1

    def _slot_in(self, d, dy, dy_slot: int, slot: int, layer: Layer) -> int:
        """The slot the dL/dx ``d`` that ``layer`` returned lives in: its dy's when passed through, the one
        it was given when it used it (the temporary as ``input_grad_buffer`` asks for it: by the layer's
        dtype, which on the torch backend is not the tensor's), else -1 (a workspace of its own)."""
        if dy_slot >= 0 and self.ops.may_share_memory(d, dy):
            return dy_slot
        given = self.ops.temporary(self._slots[slot][0], (1,), layer.dtype) if slot >= 0 else None
        return slot if given is not None and self.ops.may_share_memory(d, given) else -1

    def backward(self, dy, input_grad: bool = True):
        """Back-propagate dL/d(outputs) (a list for several outputs); returns dL/d(inputs).

        With ``input_grad=False`` (train_step) only what leads to parameters runs and None is returned.
        """
        input_grad = input_grad and self.needs_input_grad
        dys = dy if self._multi_out else [dy]
        if len(dys) != len(self._output_ids):
            raise ShapeError(f"Model.backward: expected {len(self._output_ids)} gradients (one per output), "
                             f"got {len(dys)}")
        grads, runners, steps = self._grads, self._runners(), self._steps
        grads[:] = self._nones
        self._summed[:] = self._no_sums
        slot_of, users = self._slot_of, self._slot_users
        slot_of[:] = self._no_slots
        for k in range(len(users)):
            users[k] = 0
        for t, d in zip(self._output_ids, dys, strict=True):
            self._add_grad(t, d)
        plan = self._plans[input_grad]
        needs = None if input_grad else self._needs_train
        ready = self.grad_ready
        sharing = "_slot_depth" in self.__dict__
        for k, need_dx in plan:
            step, layer = steps[k], runners[k]
            dy, dy_slot = grads[step.output], slot_of[step.output]
            if not need_dx:
                with layer.input_grad_needed(False):
                    layer.backward(dy)
            else:
                slot = self._free_slot() if sharing and self._slot_steps[k] else -1
                layer._grad_slots = self._slots[slot] if slot >= 0 else None
                try:
                    dx = layer.backward(dy)
                finally:
                    layer._grad_slots = None
            if ready is not None and layer is self.layers[step.layer]:
                ready(layer)  # its first call is backward's last visit: the gradients are final
            if need_dx:
                if not step.listed:
                    self._add_grad(step.inputs[0], dx, self._slot_in(dx, dy, dy_slot, slot, layer))
                else:
                    for t, d in zip(step.inputs, dx, strict=True):
                        if needs is None or needs[t]:
                            self._add_grad(t, d, self._slot_in(d, dy, dy_slot, slot, layer))
            if dy_slot >= 0:  # read: the gradient of this step's output no longer waits
                users[dy_slot] -= 1
                slot_of[step.output] = -1
        if not input_grad:
            return None
        dxs = grads[:len(self._inputs)]
        return dxs if self._multi_in else dxs[0]

    def check_input(self, x) -> None:
        for i, xi in enumerate(self._input_list(x)):
            if tuple(xi.shape[1:]) != self._inputs[i].shape:
                raise ShapeError(f"Model: input {i} ({self.input_names[i]}) expects (N, "
                                 f"{', '.join(map(str, self._inputs[i].shape))}), got {tuple(xi.shape)}")

    def __call__(self, x, training: bool = False):
        if is_symbolic(x):
            return call_layer(self, x)
        return self.forward(x, training=training)

    # ----------------------------------------------------------------- training
    def compile(self, optimizer: Any = "adam", loss: Any = "cross_entropy", metrics=None, loss_weights=None,
                cuda_graph: bool = False, mixed_precision: str | None = None, workers: int | str = 1):
        """As ``Sequential.compile``; with several outputs ``loss``, ``loss_weights`` and ``metrics``
        may be lists (one per output) or dicts keyed by output name; one loss or metric list applies to
        every output. The reported loss is the weighted sum; each output's own is ``<name>_loss``.
        """
        from ..metrics import resolve
        from ..optim import OPTIMIZERS

        self.optimizer = _resolve("optimizer", optimizer, OPTIMIZERS, OPTIMIZER_ALIASES)
        self.optimizer.bind(self)  # parameter names for its groups, and which layers are frozen
        self._compile_options(cuda_graph, mixed_precision, workers)
        names = self.output_names
        if isinstance(loss, PerOutputLoss):
            self.loss = loss
        else:
            losses = [_resolve("loss", spec, LOSSES, LOSS_ALIASES)
                      for spec in self._per_output(loss, "loss", lambda v: not isinstance(v, (list, dict)))]
            weights = self._per_output(1.0 if loss_weights is None else loss_weights, "loss_weights",
                                       lambda v: isinstance(v, (int, float)))
            plain = not self._multi_out and weights[0] == 1.0
            self.loss = losses[0] if plain else PerOutputLoss(losses, weights)
        if not self._multi_out:
            self.metric_fns = resolve(metrics)
            return self
        self.metric_fns = {}
        if isinstance(metrics, (list, tuple)) and all(isinstance(m, str) for m in metrics):
            metrics = [_metrics_of(metrics, o, names) for o in names]
        per = self._per_output(metrics or [], "metrics", lambda v: all(isinstance(m, str) for m in v))
        for k, (name, ms) in enumerate(zip(names, per, strict=True)):
            for metric, fn in resolve(ms).items():
                self.metric_fns[f"{name}_{metric}"] = (k, fn)
        return self

    def _per_output(self, value, what: str, single) -> list:
        names = self.output_names
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(names))
            if unknown:
                raise ConfigError(f"compile: {what} names outputs {unknown}; the outputs are {names}")
            return [value.get(n, [] if what == "metrics" else None) for n in names]
        if isinstance(value, (list, tuple)) and not single(value):
            if len(value) != len(names):
                raise ConfigError(f"compile: {what} has {len(value)} entries for {len(names)} outputs "
                                  f"{names}")
            return list(value)
        return [value] * len(names)

    def _data(self, data, name: str):
        several = self._multi_in if name.startswith("x") else self._multi_out
        if not several:
            if isinstance(data, (list, tuple)) and len(data) == 1 and hasattr(data[0], "shape"):
                data = data[0]
            return as_array(data, name)
        count = len(self._inputs) if name.startswith("x") else len(self._output_ids)
        if isinstance(data, DataList):
            return data
        if not isinstance(data, (list, tuple)) or len(data) != count:
            got = f"{len(data)} arrays" if isinstance(data, (list, tuple)) else f"one {type(data).__name__}"
            raise ShapeError(f"Model: {name} must be a list of {count} arrays (one per "
                             f"{'input' if name.startswith('x') else 'output'}), got {got}")
        arrays = [as_array(a, f"{name}[{i}]") for i, a in enumerate(data)]
        if len({len(a) for a in arrays}) != 1:
            raise ShapeError(f"Model: the arrays of {name} have different lengths {[len(a) for a in arrays]}")
        return DataList(arrays)

    def train_step(self, x, y, sample_weight=None, *, workers: int | str | None = None) -> float:
        return Trainer.train_step(self, self._data(x, "x"), self._data(y, "y"), sample_weight,
                                  workers=workers)

    def _totals(self) -> Totals:
        if not self._multi_out:
            return Trainer._totals(self)
        return Totals(self.metric_fns, self.ops, ("loss", *(f"{o}_loss" for o in self.output_names)))

    def loss_parts(self) -> tuple:
        return tuple(self.loss.values) if self._multi_out else ()

    # ----------------------------------------------------------------- files and description
    def save(self, path) -> None:
        """Write the graph (as JSON nodes and edges), weights and training state to a ``.nnet`` file."""
        from ..io.nnet import save

        save(self, path)

    def summary(self, print_fn=print) -> str:
        """Keras's table: layer (type), output shape, parameters, and which layers feed it."""
        self._require_built("summary")
        n_in = len(self._inputs)
        producer = [f"{name}" for name in self.input_names] + [None] * len(self._steps)
        calls = [0] * len(self.layers)
        rows = [("Layer (type)", "Output shape", "Param #", "Connected to")]
        for i, t in enumerate(self._inputs):
            rows.append((f"{self.input_names[i]} (Input)", _dims(t.shape, batch="None"), "0", ""))
        for k, step in enumerate(self._steps):
            layer, key = self.layers[step.layer], self.layer_keys[step.layer]
            producer[n_in + k] = f"{key}[{calls[step.layer]}]"
            first = calls[step.layer] == 0
            calls[step.layer] += 1
            rows.append((f"{key} ({type(layer).__name__})", _dims(layer.output_shape, batch="None"),
                         f"{layer.num_params():,}" if first else "(shared)",
                         ", ".join(producer[t] for t in step.inputs)))
        outputs = "Outputs: " + ", ".join(f"{o} <- {producer[t]}"
                                          for o, t in zip(self.output_names, self._output_ids, strict=True))
        return self._summary_table(rows, [outputs], print_fn)

    def extra_repr(self):
        return (f"inputs={[t.shape for t in self._inputs]}, outputs={len(self._outputs)}, "
                f"layers={len(self.layers)}")

    def get_config(self):
        return {"dtype": str(self.dtype)}

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, key) -> Layer:
        """A layer by its index in ``layers`` or by its name."""
        if isinstance(key, str):
            if key not in self.layer_keys:
                raise KeyError(f"Model has no layer named {key!r}; layers: {self.layer_keys}")
            return self.layers[self.layer_keys.index(key)]
        return self.layers[key]


class PerOutputLoss(Loss):
    """One loss per output of a model, combined as ``sum(weight_k * loss_k)``; ``values`` keeps each.

    Args:
        losses: Loss instances (or ``{"type": name, "config": {...}}`` dicts, as files store them).
        weights: one float per loss.
    """

    def __init__(self, losses: list, weights: list | None = None):
        super().__init__()
        self.losses = [_loss(item) for item in losses]
        self.weights = [1.0] * len(self.losses) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.losses):
            raise ConfigError(f"PerOutputLoss: {len(self.losses)} losses but {len(self.weights)} weights")
        self.values = [0.0] * len(self.losses)
        self._dys: list = [None] * len(self.losses)

    def forward(self, pred, target=None) -> float:
        targets = target.arrays if isinstance(target, DataList) else target
        preds = pred if isinstance(pred, (list, tuple)) else [pred]
        if not isinstance(targets, (list, tuple)) or len(targets) != len(self.losses) or \
                len(preds) != len(self.losses):
            raise ShapeError(f"PerOutputLoss: expected {len(self.losses)} predictions and targets "
                             "(one per output)")
        total = 0.0
        for k, (loss, p, t) in enumerate(zip(self.losses, preds, targets, strict=True)):
            self.values[k] = loss.forward(p, t)
            total += self.weights[k] * self.values[k]
        return total

    def per_sample(self, n: int):
        """sum_k weight_k times output k's per-sample losses (None where one of them does not split)."""
        parts = [loss.per_sample(n) for loss in self.losses]
        if any(p is None for p in parts):
            return None
        return sum(w * p for w, p in zip(self.weights, parts, strict=True))

    def backward(self):
        for k, loss in enumerate(self.losses):
            dy = loss.backward()
            if self.weights[k] != 1.0:
                dy *= self.weights[k]
            self._dys[k] = dy
        return self._dys if len(self._dys) > 1 else self._dys[0]

    def get_config(self):
        return {"losses": [{"type": type(loss).__name__, "config": loss.get_config()}
                           for loss in self.losses],
                "weights": list(self.weights)}


def _loss(item) -> Loss:
    if isinstance(item, Loss):
        return item
    if isinstance(item, dict) and item.get("type") in LOSSES and item["type"] != "PerOutputLoss" and \
            isinstance(item.get("config", {}), dict):
        return LOSSES[item["type"]](**item.get("config", {}))
    raise ConfigError(f"PerOutputLoss: expected a Loss or {{'type', 'config'}}, got {item!r:.80}")


def _metrics_of(flat: list[str], output: str, outputs: list[str]) -> list[str]:
    """From a flat list: the metrics of every output, plus "<output>_<metric>" ones for this output."""
    picked = []
    for m in flat:
        owner = next((o for o in outputs if m.startswith(f"{o}_")), None)
        if owner is None:
            picked.append(m)
        elif owner == output:
            picked.append(m[len(output) + 1:])
    return picked


def _tensors(value, what: str) -> list[SymbolicTensor]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(t, SymbolicTensor) for t in items):
        raise TypeError(f"Model: {what} must be symbolic tensors (nn.Input(...) and layers called on them), "
                        f"got {[type(t).__name__ for t in items]}")
    return items


def _index(value, size: int) -> bool:
    return type(value) is int and 0 <= value < size


def _clone(layer: Layer) -> Layer:
    """A copy of ``layer`` (and its sub-layers) sharing parameters, gradients, buffers and backend,
    with empty workspaces: what one more call of a shared layer runs on."""
    memo: dict[int, Any] = {}
    for _, sub in layer.named_layers():
        memo[id(sub.ops)] = sub.ops
        for table in (sub.params, sub.grads, sub.buffers):
            for value in table.values():
                memo[id(value)] = value
        for key in ("_workspace", "_workspace_views", "_workspace_dtypes"):
            if key in sub.__dict__:
                memo[id(sub.__dict__[key])] = {}
    return copy.deepcopy(layer, memo)


def _dims(shape: tuple, batch: str = "N") -> str:
    if shape and not isinstance(shape[0], int):
        return "[" + ", ".join(_dims(s, batch) for s in shape) + "]"
    return f"({batch}, {', '.join(map(str, shape))})"
