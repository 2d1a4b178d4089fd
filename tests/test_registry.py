"""The layer registry: built-ins cannot be shadowed, custom layers are registered explicitly to load."""

import numpy as np
import pytest

import neuronet as nn
from neuronet.core import layer as layer_module


class Scale(nn.Layer):
    """y = factor * x: a custom layer with a constructor argument."""

    def __init__(self, factor: float = 2.0):
        super().__init__()
        self.factor = factor

    def forward(self, x, training=True):
        return x * self.factor

    def backward(self, dy):
        return dy * self.factor

    def get_config(self):
        return {"factor": self.factor}


class Dense(Scale):
    """A user class that happens to share a built-in's name."""


@pytest.fixture(autouse=True)
def _restore_registry():
    layers, names = dict(nn.LAYERS), dict(layer_module._NAMES)
    yield
    nn.LAYERS.clear(), nn.LAYERS.update(layers)
    layer_module._NAMES.clear(), layer_module._NAMES.update(names)


def _model(*extra):
    nn.manual_seed(0)
    model = nn.Sequential(nn.LAYERS["Dense"](3, 4), *extra)
    model.build((3,))
    return model


def test_a_user_class_named_like_a_builtin_does_not_replace_it(tmp_path):
    assert nn.LAYERS["Dense"] is nn.Dense and "Scale" not in nn.LAYERS
    _model().save(tmp_path / "m.nnet")
    loaded = nn.load(tmp_path / "m.nnet")
    assert type(loaded[0]) is nn.Dense


def test_private_bases_are_not_registered():
    assert not [name for name in nn.LAYERS if name.startswith("_")]
    assert {"_Pool2D", "_Conv", "_BatchNorm"}.isdisjoint(nn.LAYERS)
    assert {"MaxPool2D", "Conv2D", "BatchNorm2D", "Sequential"} <= set(nn.LAYERS)


def test_loading_an_unregistered_layer_says_how_to_register_it(tmp_path):
    _model(Scale(3.0)).save(tmp_path / "m.nnet")
    with pytest.raises(nn.errors.NnetFormatError, match=r"test_registry\.Scale.*nn\.register_layer\(Scale\)"):
        nn.load(tmp_path / "m.nnet")


@pytest.mark.parametrize("form", ["decorator", "call"])
def test_a_registered_layer_round_trips(tmp_path, form):
    assert (nn.register_layer(Scale) if form == "call" else nn.register_layer()(Scale)) is Scale
    model = _model(Scale(3.0))
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    model.save(tmp_path / "m.nnet")
    loaded = nn.load(tmp_path / "m.nnet")
    assert type(loaded[1]) is Scale and loaded[1].factor == 3.0
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_a_registered_namesake_of_a_builtin_gets_its_qualified_name(tmp_path):
    nn.register_layer(Dense)
    assert nn.LAYERS["Dense"] is nn.Dense
    assert nn.LAYERS[f"{__name__}.Dense"] is Dense
    _model(Dense(0.5)).save(tmp_path / "m.nnet")
    loaded = nn.load(tmp_path / "m.nnet")
    assert type(loaded[0]) is nn.Dense and type(loaded[1]) is Dense and loaded[1].factor == 0.5


def test_register_layer_refuses_a_builtin_name_and_non_layers():
    with pytest.raises(nn.errors.ConfigError, match="'Dense' is the name of a built-in layer"):
        nn.register_layer(Scale, name="Dense")
    with pytest.raises(TypeError, match="expected a Layer subclass"):
        nn.register_layer(int)
    assert nn.LAYERS["Dense"] is nn.Dense


def test_a_registered_layer_is_usable_in_yaml_configs():
    from neuronet.cli.config import build_model

    nn.register_layer(Scale, name="my_pkg.Scale")
    cfg = {"model": {"dtype": "float32", "layers": [{"type": "Dense", "in_features": 3, "out_features": 2},
                                                    {"type": "my_pkg.Scale", "factor": 4.0}]}}
    model = build_model(cfg)
    assert type(model[0]) is nn.Dense and type(model[1]) is Scale and model[1].factor == 4.0
