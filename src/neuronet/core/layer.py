"""The Layer protocol: declare parameters in ``setup``, compute in ``forward``, differentiate in ``backward``.

A layer never allocates its parameters itself. ``setup(input_shape)`` declares them (name, shape,
initializer); whoever is the root of the tree (a model, or the layer alone) then allocates ONE flat
parameter array and ONE flat gradient array and hands every layer views into them. Arrays a layer
keeps between forward and backward live in its workspace: named buffers allocated on first use and
grown only when a larger batch arrives, so a steady-state step allocates nothing.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..backend import NEW, Ops, default_ops
from ..errors import ConfigError, ShapeError
from . import graph, input_spec
from . import random as nnrandom
from .grad_mode import backward_after_no_grad, is_grad_enabled

Initializer = Callable[[np.random.Generator, tuple, np.dtype], np.ndarray]

# Layer classes by the name files and configs use: neuronet's own public layers (registered on
# definition) and custom layers registered with ``register_layer``. The YAML configs, .nnet files and
# exporters look them up here; a user class never lands here by merely subclassing Layer, so it cannot
# shadow a built-in of the same name.
LAYERS: dict[str, type[Layer]] = {}
_NAMES: dict[type, str] = {}  # the reverse map: the name a registered class is saved under


def register_layer(cls: type[Layer] | None = None, *, name: str | None = None):
    """Register a custom layer class so that ``nn.load`` and YAML configs can rebuild it by name.

    Use as ``@nn.register_layer``, ``@nn.register_layer(name="my_pkg.Block")`` or
    ``nn.register_layer(Block)``; the class is returned unchanged. It is saved under ``name``, by
    default its class name, or ``"<module>.<ClassName>"`` when a built-in layer already has that name
    (built-ins are never replaced). Registering again under the same name replaces the previous custom
    class (a re-run notebook cell). Its ``get_config()`` must return the constructor's arguments.
    """
    def add(cls: type[Layer]) -> type[Layer]:
        if not (isinstance(cls, type) and issubclass(cls, Layer)):
            raise TypeError(f"register_layer: expected a Layer subclass, got {cls!r}")
        key = name or cls.__name__
        holder = LAYERS.get(key)
        if holder is not None and holder is not cls and _is_builtin(holder):
            if name is not None:
                raise ConfigError(f"register_layer: {name!r} is the name of a built-in layer; choose another")
            key = f"{cls.__module__}.{cls.__name__}"
        if not all(part.isidentifier() for part in key.split(".")):
            raise ConfigError(f"register_layer: {key!r} is not a dotted Python name")
        LAYERS[key] = cls
        _NAMES[cls] = key
        return cls

    return add if cls is None else add(cls)


def layer_name(cls: type) -> str:
    """The name ``cls`` is saved under: its registered name, else ``"<module>.<ClassName>"`` (which
    ``nn.load`` refuses until the class is registered)."""
    return _NAMES.get(cls) or f"{cls.__module__}.{cls.__name__}"


FLOAT_DTYPES = ("float32", "float64")


def float_dtype(dtype: Any, who: str) -> np.dtype:
    """``dtype`` as a NumPy dtype, if it is one neuronet computes in; a ConfigError naming them otherwise."""
    try:
        checked = np.dtype(dtype)
    except TypeError:  # e.g. "bfloat16", which NumPy does not know
        checked = None
    if checked is None or checked.name not in FLOAT_DTYPES:
        raise ConfigError(f"{who}: dtype {str(dtype)!r} is not supported; models compute in "
                          f"{' or '.join(FLOAT_DTYPES)} on every backend (float16 and bfloat16 are not "
                          "supported: the kernels and optimizer updates would lose too much precision)")
    return checked


def _is_builtin(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "neuronet"

# Bumped whenever any layer's ``trainable`` changes, so cached frozen layouts know to look again.
TRAINABLE_VERSION = 0


class Workspace:
    """Grow-only named scratch buffers on this object's backend (shared by layers and losses)."""

    ops: Ops
    dtype: np.dtype

    def workspace(self, name: str, shape: tuple, dtype: Any = None) -> Any:
        """A buffer of ``shape``: a view of the prefix of a buffer kept under ``name``.

        The backing buffer is allocated the first time and re-allocated only when a larger one is
        asked for; its contents are whatever was last written there. A name ``share_workspaces`` gave
        away is this thread's ``ops.temporary`` instead.
        """
        shared = self._shared_as(name)
        if shared is not None:
            return self.ops.temporary(shared, shape, self.dtype if dtype is None else dtype)
        views = self.__dict__.setdefault("_workspace_views", {})
        hit = views.get(name)  # the same request as last time: the same view (saves slicing a tensor)
        if hit is not None and hit[0] == shape and hit[1] is dtype and hit[2] is self.ops and \
                hit[3] == self.dtype:
            return hit[4]
        store = self.__dict__.setdefault("_workspace", {})
        dtypes = self.__dict__.setdefault("_workspace_dtypes", {})  # as allocated: cheaper than asking
        n = math.prod(shape)
        want = self.dtype if dtype is None else np.dtype(dtype)
        buf = store.get(name)
        if buf is None or buf.shape[0] < n or dtypes.get(name) != want or not self.ops.is_array(buf):
            buf = store[name] = self.ops.empty((max(n, 1),), want)
            dtypes[name] = want
        view = buf[:n].reshape(shape)
        views[name] = (shape, dtype, self.ops, self.dtype, view)
        return view

    def _shared_as(self, name: str) -> str | None:
        """The temporary's name that workspace ``name`` is (``share_workspaces``; under ``nn.no_grad()`` also
        ``share_workspaces_under_no_grad``), or None: its own."""
        shared = self.__dict__.get("_shared_workspaces")
        if shared is None:
            shared = self.__dict__.get("_no_grad_workspaces")
            if shared is None or is_grad_enabled():
                return None
        return shared[0] + name if shared[1] is None or name in shared[1] else None

    def share_workspaces(self, prefix: str | None, names: frozenset | None = None) -> None:
        """Make the workspaces ``names`` of this layer (every one when None) this thread's temporaries
        ``prefix + name``, shared by every layer given the same prefix: for values that a container
        computes again before anything reads them again (``Remat``'s block, a ``TransformerBlock``'s
        feed-forward hidden layer), so that a stack of such layers holds one copy. ``prefix=None``: the
        layer's own workspaces again."""
        if prefix is None:
            self.__dict__.pop("_shared_workspaces", None)
        else:
            self.__dict__["_shared_workspaces"] = (prefix, names)
        self.__dict__.pop("_workspace_views", None)

    def temporary(self, name: str, shape: tuple) -> Any:
        """A buffer for a value that lives only within this call (``ops.temporary``: shared by every
        layer on this thread, so never hold one across a call into another layer)."""
        return self.ops.temporary(name, shape, self.dtype)

    def kernel_output(self, name: str, shape: tuple) -> Any:
        """The ``out`` to give a convolution or a norm for a result this layer keeps: its workspace
        ``name``, or ``NEW`` where the backend's kernels make their results themselves
        (``ops.fresh_outputs``), whose own array the layer then keeps (no copy). A workspace shared with
        other layers (``share_workspaces``: a ``Remat`` block's) stays one: kept results would each hold
        their own memory."""
        fresh = self.ops.fresh_outputs and self._shared_as(name) is None
        return NEW if fresh else self.workspace(name, shape)

    def kernel_input_grad(self, shape: tuple, dy) -> Any:
        """``kernel_output`` for this layer's dL/dx: ``NEW`` or ``input_grad_buffer(shape, dy)``."""
        return NEW if self.ops.fresh_outputs else self.input_grad_buffer(shape, dy)

    def input_grad_buffer(self, shape: tuple, dy) -> Any:
        """The buffer for this layer's dL/dx: its own ``"dx"`` workspace, or, when its container hands
        that gradient straight on (``Layer.share_input_grads``), the first of the temporaries the container
        named in ``_grad_slots`` that ``dy`` does not live in (a layer that passes dy through, as Flatten,
        leaves its slot's turn out). A layer asks once per backward."""
        for name in self.__dict__.get("_grad_slots") or ():
            buf = self.ops.temporary(name, shape, self.dtype)
            if not self.ops.may_share_memory(buf, dy):
                return buf
        return self.workspace("dx", shape)

    def in_row_blocks(self, n: int, loop: Callable, *scratch: tuple[str, int], min_rows: int | None = None,
                      per_block: Callable[[int], tuple] = lambda k: ()) -> None:
        """Run ``loop(rows, *buffers, *per_block(k))`` over the row blocks of ``ops.row_blocks(n, min_rows)``
        of work whose n rows never meet (a recurrent loop's batch, attention's samples), at once where the
        backend can; each block gets its own (rows, width) workspace for each (name, width) of ``scratch``,
        and whatever else ``per_block`` gives the k-th block."""
        tasks = []
        for k, rows in enumerate(self.ops.row_blocks(n, min_rows)):
            count, suffix = len(range(n)[rows]), str(k) if k else ""
            buffers = [self.workspace(name + suffix, (count, width)) for name, width in scratch]
            tasks.append(functools.partial(loop, rows, *buffers, *per_block(k)))
        self.ops.run_blocks(tasks)

    def clear_workspace(self) -> None:
        self.__dict__["_workspace"] = {}
        self.__dict__["_workspace_views"] = {}


def grad_slots(depth: int) -> tuple[str, str]:
    """The two shared dL/dx temporaries of nesting ``depth``: a chain's layers alternate between them (each
    takes the one its dy is not in; ``Layer.input_grad_buffer``)."""
    return f"grad{depth}.0", f"grad{depth}.1"


class Layer(Workspace):
    """Base class of every layer.

    Subclasses implement ``setup(input_shape) -> output_shape`` (declaring parameters with
    ``add_param``, buffers with ``add_buffer`` and sub-layers with ``add_child``), ``forward(x,
    training)`` and ``backward(dy)``. ``backward`` ACCUMULATES into ``self.grads`` and returns dL/dx.
    Shapes exclude the batch dimension.
    """

    # False while nothing consumes this layer's dL/dx (a model's first trainable layer during
    # train_step): ``backward`` may then skip computing it and return None.
    needs_input_grad: bool = True
    # Keras's ``name=`` (any layer's constructor takes it): a model's state_dict key for this layer.
    layer_name: str | None = None
    _trainable: bool = True
    # The expected input shape without the batch axis, as a pattern (see core/input_spec.py): ints exact,
    # strings name axes of size >= 1, ``...`` any number of axes; checked by ``build`` and ``check_input``.
    # None: at build anything ``setup`` accepts, afterwards exactly the built shape.
    input_spec: tuple | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if _is_builtin(cls) and not cls.__name__.startswith("_"):  # private bases are not layers to name
            LAYERS[cls.__name__] = cls
            _NAMES[cls] = cls.__name__
        if "__init__" in cls.__dict__ and "name" not in inspect.signature(cls.__init__).parameters:
            cls.__init__ = _accepting_name(cls.__init__)

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.buffers: dict[str, Any] = {}
        self.children: dict[str, Layer] = {}
        self.input_shape: tuple | None = None
        self.output_shape: tuple | None = None
        self.ops: Ops = default_ops()
        self.dtype = np.dtype("float32")
        self.flat_params = None  # set on the root only
        self.flat_grads = None
        self._param_specs: dict[str, tuple[tuple, Initializer]] = {}
        self._buffer_init: dict[str, np.ndarray] = {}

    # ----------------------------------------------------------------- declaration
    def setup(self, input_shape: tuple) -> tuple:
        """Declare parameters for ``input_shape`` and return the output shape (default: unchanged)."""
        return input_shape

    def add_param(self, name: str, shape: tuple, init: Initializer) -> None:
        self._param_specs[name] = (tuple(int(s) for s in shape), init)

    def add_buffer(self, name: str, value: np.ndarray) -> None:
        """A non-trained array kept with the layer (e.g. running statistics), saved in state_dict."""
        self._buffer_init[name] = np.asarray(value)

    def add_child(self, name: str, layer: Layer, input_shape: tuple) -> tuple:
        """Build ``layer`` as the sub-layer ``name`` and return its output shape."""
        self.children[name] = layer
        if not self._trainable:  # frozen before it was built: freeze the children it builds
            layer.trainable = False
        return layer.build(input_shape, dtype=self.dtype, ops=self.ops, _root=False)

    @property
    def built(self) -> bool:
        return self.output_shape is not None

    def build(self, input_shape, dtype: Any = None, ops: Ops | None = None, *, _root: bool = True) -> tuple:
        """Declare everything for ``input_shape`` (no batch dimension); as root, allocate and initialise.

        Returns the output shape. A layer built on its own owns its flat parameter array.
        """
        self.dtype = float_dtype(dtype or self.dtype, type(self).__name__)
        self.ops = ops or self.ops
        self.children = {}
        self._param_specs = {}
        self._buffer_init = {}
        self.input_shape, self.output_shape = _as_shape(input_shape), None  # unbuilt until setup returns
        if self.input_spec is not None:
            input_spec.check(self, self.input_spec, self.input_shape, f"(N, {_dims(self.input_shape)})")
        self.output_shape = tuple(self.setup(self.input_shape))
        if _root:
            self._allocate()
            self.share_input_grads(0)
        return self.output_shape

    def share_input_grads(self, depth: int) -> None:
        """Tell the containers inside this layer the nesting ``depth`` whose shared dL/dx temporaries
        their layers use (``input_grad_buffer``). A plain layer's children keep their own workspaces;
        Sequential, Model and TransformerBlock, which hand each child's dL/dx straight on, override this
        (``grad_slots`` names a level's pair)."""
        for child in self.children.values():
            child.share_input_grads(depth)

    # ----------------------------------------------------------------- the parameter tree
    def named_layers(self, prefix: str = "") -> Iterator[tuple[str, Layer]]:
        """(dotted prefix, layer) for this layer and every descendant, parents first; a child added under
        the name "" shares its parent's prefix (a transparent wrapper's, as ``Remat``'s block)."""
        yield prefix, self
        for name, child in self.children.items():
            yield from child.named_layers(f"{prefix}{name}." if name else prefix)

    def share_workspaces_under_no_grad(self) -> None:
        """For a container whose output is its own workspace (a residual block), at the top of its forward:
        under ``nn.no_grad()`` nothing inside it outlives the call, so every descendant's workspaces are
        then this thread's temporaries named after the descendant's path in the container, shared with
        each container of the class: a stack of N blocks holds one block's buffers in ``predict``. With
        gradients on they are the descendants' own again. The outermost such container names them: an
        inner one finds itself named and leaves them (so no two names meet within one call). Its backward
        calls ``check_activations_kept``."""
        kept = self.__dict__["_activations_kept"] = is_grad_enabled()
        if kept or "_no_grad_workspaces" in self.__dict__ or self.__dict__.get("_no_grad_names_given"):
            return
        prefix = f"no_grad:{type(self).__name__}:"
        for path, layer in self.named_layers():
            if layer is not self:
                layer.__dict__["_no_grad_workspaces"] = (prefix + path, None)
                layer.clear_workspace()  # (buffers of an earlier training, or of a forward on its own)
        self.__dict__["_no_grad_names_given"] = True

    def check_activations_kept(self) -> None:
        """At the top of the backward of a container that calls ``share_workspaces_under_no_grad``: after a
        forward under ``nn.no_grad()`` its layers' buffers belong to whichever block ran last: raise, before
        any gradient is added, rather than differentiate those."""
        if not self.__dict__.get("_activations_kept", True):
            raise backward_after_no_grad(self, "activations of its layers")

    def param_specs(self) -> Iterator[tuple[str, Layer, str, tuple, Initializer]]:
        """(dotted name, owner, local name, shape, init) in PyTorch's order: own params, then children's."""
        for prefix, layer in self.named_layers():
            for local, (shape, init) in layer._param_specs.items():
                yield prefix + local, layer, local, shape, init

    def num_params(self) -> int:
        return sum(math.prod(shape) for _, _, _, shape, _ in self.param_specs())

    @property
    def trainable(self) -> bool:
        """False freezes this layer and (set on a composite) all its descendants, as Keras' ``trainable``
        or torch's ``requires_grad_(False)``: backward skips its weight gradients (dL/dx still flows) and
        the optimizer leaves its weights and their state untouched."""
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        global TRAINABLE_VERSION
        for _, layer in self.named_layers():
            layer._trainable = bool(value)
        TRAINABLE_VERSION += 1  # optimizers and models re-read the frozen layout on their next step

    def num_trainable_params(self) -> int:
        """Parameters of the layers whose ``trainable`` is True (those the optimizer updates)."""
        return sum(math.prod(shape) for _, owner, _, shape, _ in self.param_specs() if owner.trainable)

    def _allocate(self) -> None:
        """Allocate the flat arrays, carve every view and initialise (root only)."""
        rng = nnrandom.generator()
        total = self.num_params()
        host = np.zeros(total, dtype=self.dtype)
        offset = 0
        for _, _, _, shape, init in self.param_specs():
            n = math.prod(shape)
            host[offset:offset + n] = np.asarray(init(rng, shape, self.dtype), dtype=self.dtype).reshape(-1)
            offset += n
        self.flat_params = self.ops.asarray(host)
        self.flat_grads = self.ops.zeros((total,), self.dtype)
        for _, layer in self.named_layers():
            layer.buffers = {k: self.ops.asarray(v.copy()) for k, v in layer._buffer_init.items()}
        self._bind(self.ops)

    def _bind(self, ops: Ops) -> None:
        """Point every layer's ``params``/``grads`` at views of the root's flat arrays, in spec order."""
        offset = 0

        def carve(layer: Layer) -> None:
            nonlocal offset
            layer.ops, layer.dtype = ops, self.dtype
            layer.params, layer.grads = {}, {}
            layer.clear_workspace()
            for local, (shape, _) in layer._param_specs.items():
                n = math.prod(shape)
                layer.params[local] = self.flat_params[offset:offset + n].reshape(shape)
                layer.grads[local] = self.flat_grads[offset:offset + n].reshape(shape)
                offset += n
            for cname, child in layer.children.items():
                carve(child)
                at = f"{cname}." if cname else ""  # (a transparent wrapper's block: no prefix)
                for key in child.params:  # a composite sees its descendants under dotted keys
                    layer.params[at + key] = child.params[key]
                    layer.grads[at + key] = child.grads[key]

        carve(self)

    def to(self, device: str) -> Layer:
        """Move parameters, gradients and buffers to a backend/device ("numpy", "torch", "cuda", "mps")."""
        from ..backend import get_ops

        ops = get_ops(device)
        if self.built and self.flat_params is not None:
            self.flat_params = ops.asarray(self.ops.to_numpy(self.flat_params))
            self.flat_grads = ops.asarray(self.ops.to_numpy(self.flat_grads))
            for _, layer in self.named_layers():
                layer.buffers = {k: ops.asarray(self.ops.to_numpy(v)) for k, v in layer.buffers.items()}
            self._bind(ops)
        else:
            for _, layer in self.named_layers():
                layer.ops = ops
        return self

    def zero_grad(self) -> None:
        self._require_built("zero_grad")
        self.ops.fill_(self.flat_grads, 0.0)

    def _require_built(self, what: str) -> None:
        if not self.built or self.flat_params is None:
            raise RuntimeError(f"{self!r}: {what} needs the parameters, which exist only after "
                               "build(input_shape) or a first forward")

    def named_parameters(self) -> Iterator[tuple[str, Any]]:
        """(PyTorch name, view into the flat parameter array)."""
        self._require_built("named_parameters")
        for name, *_ in self.param_specs():
            yield name, self.params[name]

    def named_buffers(self) -> Iterator[tuple[str, Any]]:
        for prefix, layer in self.named_layers():
            for key, value in layer.buffers.items():
                yield prefix + key, value

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers as NumPy copies under PyTorch's key names."""
        self._require_built("state_dict")
        out = {name: np.array(self.ops.to_numpy(v)) for name, v in self.named_parameters()}
        out.update({name: np.array(self.ops.to_numpy(v)) for name, v in self.named_buffers()})
        return out

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy NumPy arrays or torch tensors into the model, by PyTorch key name.

        Everything is checked before anything is copied. With ``strict`` a missing or unexpected
        key raises KeyError naming every such key; a mis-shaped key raises ValueError naming it and
        both shapes (also without ``strict``, which otherwise copies only the keys present in both).
        """
        self._require_built("load_state_dict")
        params = dict(self.named_parameters())
        buffers = dict(self.named_buffers())
        expected = params.keys() | buffers.keys()
        given = {key: _host(value) for key, value in state.items()}
        missing, unexpected = sorted(expected - given.keys()), sorted(given.keys() - expected)
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict into {type(self).__name__}: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        common = [key for key in given if key in expected]
        targets = {key: params[key] if key in params else buffers[key] for key in common}
        wrong = [f"{key!r} has shape {tuple(given[key].shape)}, the model expects {tuple(t.shape)}"
                 for key, t in targets.items() if tuple(given[key].shape) != tuple(t.shape)]
        if wrong:
            raise ValueError(f"load_state_dict into {type(self).__name__}: " + "; ".join(wrong))
        for key, target in targets.items():
            self.ops.copy_(target, self.ops.asarray(given[key], self.ops.dtype_name(target)))

    # ----------------------------------------------------------------- computation
    def forward(self, x, training: bool = True):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    @contextlib.contextmanager
    def input_grad_needed(self, needed: bool) -> Iterator[Layer]:
        """Within the block ``needs_input_grad`` is ``needed``; afterwards its previous value again (a
        container asks its first layer to skip dL/dx without losing what the layer's own owner set)."""
        previous, self.needs_input_grad = self.needs_input_grad, needed
        try:
            yield self
        finally:
            self.needs_input_grad = previous

    def __call__(self, x, training: bool = False):
        """Standalone use: build from the first input if needed, then forward.

        On symbolic tensors (``nn.Input``) it records a graph node for ``nn.Model`` instead.
        """
        if graph.is_symbolic(x):
            return graph.call_layer(self, x)
        if not self.built:
            self.build(tuple(x.shape[1:]))
        return self.forward(self.ops.asarray(x), training=training)

    def check_input(self, x) -> None:
        """Raise a ShapeError naming this layer when ``x`` does not fit ``input_spec`` (None: the built
        input shape)."""
        spec = self.input_spec if self.input_spec is not None else self.input_shape
        if spec is None:
            raise ShapeError(f"{self!r}: check_input before build: the layer has no input shape yet")
        input_spec.check(self, spec, tuple(x.shape[1:]), str(tuple(x.shape)))

    # ----------------------------------------------------------------- description
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def get_config(self) -> dict:
        """Constructor arguments, for files and configs: ``type(self)(**get_config())`` rebuilds it."""
        return {}


def _accepting_name(init: Callable) -> Callable:
    """Wrap a layer constructor so that it also takes Keras's ``name=`` (kept as ``layer_name``)."""
    @functools.wraps(init)
    def __init__(self, *args, name: str | None = None, **kwargs):
        init(self, *args, **kwargs)
        if name is not None:
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"{type(self).__name__}: name must be an identifier, got {name!r}")
            self.layer_name = name
    return __init__


def _as_shape(shape) -> tuple:
    """A shape as a tuple of ints, or a tuple of such shapes for a layer of several inputs."""
    if len(shape) and isinstance(shape[0], (tuple, list)):
        return tuple(_as_shape(s) for s in shape)
    return tuple(int(s) for s in shape)


def _dims(shape: tuple) -> str:
    return ", ".join(str(s) for s in shape)


def _host(value) -> np.ndarray:
    """A NumPy view/copy of a NumPy array, a torch tensor (any device) or a nested list."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
