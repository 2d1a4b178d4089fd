"""ONNX export of the convolution family: Conv with dilations/group/asymmetric pads, ConvTranspose, Resize,
MaxPool/AveragePool (1-D and 2-D, ceil_mode, count_include_pad) run in onnxruntime like model.predict."""

import numpy as np
import pytest

import neuronet as nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def assert_runs_like_predict(model, x, tmp_path):
    path = nn.export_onnx(model, tmp_path / "model.onnx", x.shape[1:])
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got, want = session.run(None, {"input": x})[0], model.predict(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    return onnx.load(str(path))


def floats(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_conv2d_dilation_groups_and_same_padding(tmp_path):
    model = nn.Sequential(
        nn.Conv2D(4, 6, 4, padding="same", dilation=1, groups=2, activation="relu"),   # asymmetric pads
        nn.Conv2D(6, 6, 3, padding="same", dilation=(2, 3), groups=6),                  # depthwise, dilated
        nn.Conv2D(6, 4, (3, 2), stride=2, padding="valid", dilation=(1, 2), bias=False),
        nn.Conv2D(4, 2, 3, stride=(1, 2), padding=(2, 1), dilation=2, groups=2))
    proto = assert_runs_like_predict(model, floats(3, 4, 11, 12), tmp_path)
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in convs[0].attribute}
    assert attrs["group"] == 2 and list(attrs["pads"]) == [1, 1, 2, 2]


def test_conv1d_options(tmp_path):
    model = nn.Sequential(nn.Conv1D(3, 6, 4, padding="same", groups=3),
                          nn.Conv1D(6, 4, 3, dilation=2, padding=1),
                          nn.Conv1D(4, 4, 2, stride=2, padding="valid", groups=4, activation="tanh"))
    assert_runs_like_predict(model, floats(2, 3, 13), tmp_path)


@pytest.mark.parametrize("kwargs", [dict(stride=2, padding=1), dict(stride=2, padding=1, output_padding=1),
                                    dict(stride=(2, 3), padding=(0, 1), output_padding=(1, 2), bias=False),
                                    dict(stride=1, padding=1, dilation=2, groups=2),
                                    dict(stride=1, dilation=2, output_padding=1)])
def test_conv_transpose2d(kwargs, tmp_path):
    model = nn.Sequential(nn.ConvTranspose2D(4, 6, 3, **kwargs), nn.ReLU(),
                          nn.ConvTranspose2D(6, 2, 4, stride=2, padding=1))
    assert_runs_like_predict(model, floats(2, 4, 5, 6), tmp_path)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("scale", [2, 3, (2, 3), 1.5])
def test_upsample_resize(mode, scale, tmp_path):
    model = nn.Sequential(nn.Conv2D(2, 3, 3, padding=1), nn.Upsample(scale, mode))
    proto = assert_runs_like_predict(model, floats(2, 2, 5, 6), tmp_path)
    assert [n.op_type for n in proto.graph.node].count("Resize") == 1


@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("include", [True, False])
def test_pools_with_ceil_mode_and_count_include_pad(ceil, include, tmp_path):
    model = nn.Sequential(nn.MaxPool2D(3, 2, 1, ceil_mode=ceil), nn.AvgPool2D(3, 2, 1, ceil_mode=ceil,
                                                                               count_include_pad=include),
                          nn.AvgPool2D(2, ceil_mode=ceil, count_include_pad=include))
    assert_runs_like_predict(model, floats(2, 3, 14, 11), tmp_path)


@pytest.mark.parametrize("ceil", [False, True])
def test_pools_1d(ceil, tmp_path):
    model = nn.Sequential(nn.Conv1D(2, 3, 3, padding="same"), nn.MaxPool1D(3, 2, 1, ceil_mode=ceil),
                          nn.AvgPool1D(2, ceil_mode=ceil),
                          nn.AvgPool1D(3, 2, 1, ceil_mode=ceil, count_include_pad=False))
    assert_runs_like_predict(model, floats(2, 2, 23), tmp_path)
