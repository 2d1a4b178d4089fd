"""Conv1D/Conv2D padding="same"/"valid", dilation and groups, and ConvTranspose2D: against PyTorch on both
backends in float32 and float64, numerical gradients, zero-allocation steps, .nnet round trips, errors."""

import numpy as np
import pytest
import torch
from _backends import assert_backends_train_alike

import neuronet as nn
from neuronet.testing import assert_step_allocates_nothing, check_gradients, compare_with_torch

# PyTorch's own note that it pads a copy for an even "same" kernel (our reference, not our code).
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")

DTYPES = {"float64": dict(atol=1e-9, rtol=1e-7), "float32": dict(atol=2e-5, rtol=2e-4)}


def compare(layer, module, x, backend, dtype):
    layer.build(x.shape[1:], dtype=dtype)
    layer.to(backend)
    compare_with_torch(layer, module, x.astype(dtype), dtype=dtype, **DTYPES[dtype])


# (in, out, kernel, stride, padding, dilation, groups, bias, input (C, H, W), batch)
CONV2D_CASES = [
    (3, 4, 3, 1, "same", 1, 1, True, (3, 6, 7), 2),
    (2, 3, 4, 1, "same", 1, 1, True, (2, 6, 5), 2),            # even kernel: asymmetric padding
    (2, 3, (2, 3), 1, "same", (2, 1), 1, False, (2, 7, 6), 2),  # even dilated kernel, total pad odd
    (3, 4, 3, 1, "valid", 1, 1, True, (3, 5, 6), 2),
    (2, 4, 3, 2, 1, 2, 1, True, (2, 9, 8), 2),                  # dilation with stride and padding
    (4, 6, 3, 1, 1, 1, 2, True, (4, 5, 6), 2),                  # groups
    (4, 4, 3, 2, 1, 1, 4, True, (4, 7, 6), 3),                  # depthwise
    (3, 6, (3, 1), 1, (1, 0), (1, 1), 3, False, (3, 5, 4), 2),  # depthwise multiplier 2
    (6, 4, 3, 1, "same", 2, 2, True, (6, 7, 7), 1),             # everything at once
    (2, 3, 1, 1, 1, 1, 1, True, (2, 4, 5), 2),                  # padding wider than the kernel reaches
    (4, 3, 3, 1, (1, 2), 1, 1, True, (4, 5, 6), 2),             # 2 columns of padding on each side
    (3, 20, 3, 1, 1, 1, 1, True, (3, 6, 6), 2),                 # NumPy: dweight in full-width panels
    (8, 32, 3, 1, 1, 1, 2, False, (8, 6, 5), 2),                # groups of 16 outputs: narrow panels
    (4, 48, 3, 1, "same", (1, 2), 2, True, (4, 5, 6), 2),       # groups of 24 outputs: full-width panels
    # strided: the NumPy backend's phase planes (conv_layout)
    (3, 5, 1, 2, 0, 1, 1, True, (3, 7, 6), 2),                  # a 1x1 downsampling: one phase read
    (2, 3, 2, 3, 1, 1, 1, True, (2, 8, 10), 2),                 # stride 3 > kernel: phases no tap reads
    (3, 4, (3, 4), (2, 3), (2, 1), (1, 2), 1, False, (3, 9, 11), 2),  # strides, dilations, pads differ
    (4, 40, 3, 2, 1, 1, 2, True, (4, 7, 9), 2),                 # groups of 20 outputs, odd sizes
    (3, 16, 5, 2, 0, 1, 1, True, (3, 12, 12), 2),               # windows leave the last row and column
    (2, 3, 5, 2, 2, 1, 1, True, (2, 5, 37), 1),                 # rows of two pair_rows blocks, left pad even
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV2D_CASES)
def test_conv2d_options_match_torch(case, dtype, backend):
    cin, cout, k, s, p, d, g, bias, shape, n = case
    torch.manual_seed(0)
    module = torch.nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=bias)
    layer = nn.Conv2D(cin, cout, k, stride=s, padding=p, bias=bias, dilation=d, groups=g)
    compare(layer, module, np.random.default_rng(1).standard_normal((n, *shape)), backend, dtype)



@pytest.mark.parametrize("input_grad", [True, False], ids=["with_dx", "without_dx"])
@pytest.mark.parametrize("case", CONV2D_CASES, ids=str)
def test_conv2d_on_row_blocks_matches_torch(case, input_grad, rows_on_threads, conv_path):
    """The NumPy backend's implicit paths on three blocks of images, with an activation: implicit GEMMs
    (each block's dweight apart, summed at the end) and, as a stride-1 first layer (no input gradient
    wanted), the direct weight gradient (the blocks' dweight and dbias summed)."""
    cin, cout, k, s, p, d, g, bias, shape, _ = case
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g,
                                                 bias=bias), torch.nn.GELU())
    layer = nn.Conv2D(cin, cout, k, stride=s, padding=p, bias=bias, dilation=d, groups=g, activation="gelu")
    layer.build(shape, dtype="float64")
    layer.needs_input_grad = input_grad
    compare_with_torch(layer, module, np.random.default_rng(1).standard_normal((5, *shape)), dtype="float64",
                       name_map={"0.weight": "weight", "0.bias": "bias"}, check_input_grad=input_grad,
                       **DTYPES["float64"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p,d,g,length", [(4, 1, "same", 1, 1, 9), (3, 1, "same", 3, 1, 11),
                                              (3, 2, 2, 2, 1, 12), (5, 1, "valid", 1, 2, 8),
                                              (3, 1, 1, 1, 4, 6)])
def test_conv1d_options_match_torch(k, s, p, d, g, length, dtype, backend):
    torch.manual_seed(0)
    module = torch.nn.Conv1d(4, 8, k, stride=s, padding=p, dilation=d, groups=g)
    layer = nn.Conv1D(4, 8, k, stride=s, padding=p, dilation=d, groups=g)
    compare(layer, module, np.random.default_rng(2).standard_normal((2, 4, length)), backend, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv1d_many_channels_short_sequence_matches_torch(dtype, backend):
    """32 channels over 20 steps: on NumPy the forward's and dx's products run with the positions as rows
    (a short sequence fills the 32-column panels worse than its channels do)."""
    from neuronet.backend import numpy_ops

    assert numpy_ops._pixel_rows(32, 1, 21, 20, np.dtype(dtype))  # the path under test
    torch.manual_seed(0)
    module = torch.nn.Conv1d(32, 32, 3, padding=1)
    compare(nn.Conv1D(32, 32, 3, padding=1), module, np.random.default_rng(5).standard_normal((3, 32, 20)),
            backend, dtype)


def test_depthwise_weight_layout_is_pytorchs():
    layer = nn.Conv2D(8, 16, 3, groups=8)
    layer.build((8, 5, 5))
    assert layer.params["weight"].shape == (16, 1, 3, 3)
    assert np.abs(layer.params["weight"]).max() <= 1 / 3  # fan_in = 1 * 3 * 3


def test_conv_options_with_activation_match_torch(backend):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding="same", dilation=2, groups=2),
                                 torch.nn.GELU())
    layer = nn.Conv2D(4, 4, 3, padding="same", activation="gelu", dilation=2, groups=2)
    layer.build((4, 6, 6), dtype="float64")
    layer.to(backend)
    compare_with_torch(layer, module, np.random.default_rng(3).standard_normal((2, 4, 6, 6)),
                       name_map={"0.weight": "weight", "0.bias": "bias"}, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("layer,shape", [
    (nn.Conv2D(4, 6, 4, padding="same", dilation=(1, 2), groups=2, activation="tanh"), (4, 5, 6)),
    (nn.Conv2D(3, 3, 3, stride=2, padding=1, groups=3), (3, 6, 5)),
    (nn.Conv1D(2, 4, 2, padding="same", dilation=3, groups=2), (2, 7)),
])
def test_conv_options_gradcheck(layer, shape):
    check_gradients(layer, np.random.default_rng(4).standard_normal((2, *shape)))


# --------------------------------------------------------------------------- ConvTranspose2D
# (in, out, kernel, stride, padding, output_padding, dilation, groups, bias, input (C, H, W), batch)
TRANSPOSE_CASES = [
    (3, 2, 3, 1, 0, 0, 1, 1, True, (3, 4, 5), 2),
    (2, 3, 4, 2, 1, 0, 1, 1, True, (2, 5, 4), 2),     # the usual 2x upsampling
    (2, 3, 3, 2, 1, 1, 1, 1, True, (2, 4, 4), 2),     # output_padding
    (2, 2, (3, 2), (2, 3), (1, 0), (1, 2), 1, 1, False, (2, 3, 4), 1),
    (2, 4, 3, 1, 2, 0, 2, 1, True, (2, 5, 5), 2),     # dilation
    (2, 2, 3, 1, 0, 1, 2, 1, True, (2, 4, 3), 1),     # output_padding >= stride, < dilation
    (4, 6, 3, 2, 1, 1, 1, 2, True, (4, 3, 4), 2),     # groups
    (3, 3, 2, 2, 0, 0, 1, 3, True, (3, 3, 3), 2),     # depthwise
    (3, 2, 3, 3, 1, 2, 1, 1, True, (3, 4, 3), 2),     # stride above the kernel's reach: pixels no tap writes
    (2, 4, (4, 3), (3, 2), (2, 1), (0, 1), (1, 2), 1, True, (2, 3, 4), 3),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", TRANSPOSE_CASES)
def test_conv_transpose2d_matches_torch(case, dtype, backend):
    cin, cout, k, s, p, op, d, g, bias, shape, n = case
    torch.manual_seed(0)
    module = torch.nn.ConvTranspose2d(cin, cout, k, stride=s, padding=p, output_padding=op, groups=g,
                                      bias=bias, dilation=d)
    layer = nn.ConvTranspose2D(cin, cout, k, stride=s, padding=p, output_padding=op, bias=bias, dilation=d,
                               groups=g)
    x = np.random.default_rng(5).standard_normal((n, *shape))
    compare(layer, module, x, backend, dtype)
    assert layer.output_shape == tuple(module(torch.zeros(1, *shape, dtype=module.weight.dtype)).shape[1:])


def test_conv_transpose2d_layout_and_init_are_pytorchs():
    layer = nn.ConvTranspose2D(6, 4, 3, groups=2)
    layer.build((6, 5, 5))
    assert layer.params["weight"].shape == (6, 2, 3, 3) and layer.params["bias"].shape == (4,)
    bound = 1 / np.sqrt(2 * 9)  # PyTorch's fan_in of a transposed conv: weight.size(1) * kh * kw
    assert bound * 0.8 < np.abs(layer.params["weight"]).max() <= bound


@pytest.mark.parametrize("layer,shape", [
    (nn.ConvTranspose2D(2, 3, 3, stride=2, padding=1, output_padding=1), (2, 3, 4)),
    (nn.ConvTranspose2D(4, 2, 2, stride=(1, 2), dilation=2, groups=2, bias=False), (4, 3, 3)),
])
def test_conv_transpose2d_gradcheck(layer, shape):
    check_gradients(layer, np.random.default_rng(6).standard_normal((2, *shape)))


def test_conv_transpose_is_the_adjoint_of_conv():
    """<conv(x), y> = <x, conv_transpose(y)> with the same weight: the two layers share one mechanism."""
    conv = nn.Conv2D(3, 4, 3, stride=2, padding=1, bias=False, dilation=1, groups=1)
    conv.build((3, 7, 6), dtype="float64")
    up = nn.ConvTranspose2D(4, 3, 3, stride=2, padding=1, bias=False)
    up.build(conv.output_shape, dtype="float64")
    up.load_state_dict({"weight": conv.params["weight"]})
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((2, *conv.output_shape))
    assert up.output_shape == (3, 7, 5)  # the floor rule lost column 6: output_padding recovers it
    lhs = np.sum(conv.forward(x) * y)
    up2 = nn.ConvTranspose2D(4, 3, 3, stride=2, padding=1, output_padding=(0, 1), bias=False)
    up2.build(conv.output_shape, dtype="float64")
    up2.load_state_dict({"weight": conv.params["weight"]})
    np.testing.assert_allclose(lhs, np.sum(x * up2.forward(y)), rtol=1e-12)


# --------------------------------------------------------------------------- models: steps, backends, files
def encoder_decoder(dtype="float32"):
    return nn.Sequential(
        nn.Conv2D(2, 4, 3, padding="same", activation="relu"),
        nn.Conv2D(4, 4, 3, stride=2, padding=1, groups=4, dilation=1),
        nn.Conv2D(4, 8, 2, padding="same", dilation=2, groups=2, activation="gelu"),
        nn.ConvTranspose2D(8, 4, 4, stride=2, padding=1),
        nn.Conv2D(4, 1, 1), dtype=dtype)


def test_encoder_decoder_train_step_allocates_nothing():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((8, 2, 12, 12)).astype(np.float32)
    y = rng.standard_normal((8, 1, 12, 12)).astype(np.float32)
    model = encoder_decoder()
    model.compile(optimizer=nn.Adam(1e-3), loss=nn.MSELoss())
    assert_step_allocates_nothing(lambda: model.train_step(x, y))


def test_encoder_decoder_numpy_and_torch_backends_agree():
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((4, 2, 8, 8)), rng.standard_normal((4, 1, 8, 8))
    assert_backends_train_alike(lambda: encoder_decoder("float64"), (2, 8, 8), nn.MSELoss(), x, y)


def test_encoder_decoder_round_trips_through_nnet(tmp_path):
    model = encoder_decoder()
    model.build((2, 8, 8))
    x = np.random.default_rng(10).standard_normal((3, 2, 8, 8)).astype(np.float32)
    model.save(tmp_path / "ed.nnet")
    loaded = nn.load(tmp_path / "ed.nnet")
    assert [layer.get_config() for layer in loaded.layers] == [layer.get_config() for layer in model.layers]
    assert repr(loaded) == repr(model)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_get_config_rebuilds_each_layer():
    for layer in (nn.Conv2D(4, 6, (3, 2), padding="same", dilation=(2, 1), groups=2, activation="relu"),
                  nn.Conv1D(2, 4, 3, stride=2, padding="valid", dilation=2, groups=2, bias=False),
                  nn.ConvTranspose2D(4, 2, 3, stride=2, padding=1, output_padding=1, dilation=1, groups=2)):
        again = type(layer)(**layer.get_config())
        assert again.get_config() == layer.get_config() and repr(again) == repr(layer)


# --------------------------------------------------------------------------- errors
def test_same_padding_with_stride_names_layer_and_argument():
    with pytest.raises(nn.errors.ConfigError, match=r"Conv2D\(3, 8\).*padding='same'.*stride 1.*stride=2"):
        nn.Conv2D(3, 8, 3, stride=2, padding="same")
    with pytest.raises(nn.errors.ConfigError, match=r"Conv1D\(3, 8\).*padding='same'.*stride=3"):
        nn.Conv1D(3, 8, 3, stride=3, padding="same")
    with pytest.raises(nn.errors.ConfigError, match=r"Conv2D\(3, 8\).*padding.*'full'"):
        nn.Conv2D(3, 8, 3, padding="full")


def test_groups_must_divide_the_channels():
    with pytest.raises(nn.errors.ConfigError, match=r"Conv2D\(6, 4\).*in_channels \(6\).*divisible by "
                                                    r"groups.*groups=4"):
        nn.Conv2D(6, 4, 3, groups=4)
    with pytest.raises(nn.errors.ConfigError, match=r"Conv1D\(4, 6\).*out_channels \(6\).*groups=4"):
        nn.Conv1D(4, 6, 3, groups=4)
    with pytest.raises(nn.errors.ConfigError, match=r"ConvTranspose2D\(3, 4\).*groups=2"):
        nn.ConvTranspose2D(3, 4, 3, groups=2)
    with pytest.raises(nn.errors.ConfigError, match="groups=0"):
        nn.Conv2D(2, 2, 3, groups=0)


def test_conv_transpose_bad_arguments_and_shapes():
    with pytest.raises(nn.errors.ConfigError, match=r"ConvTranspose2D\(2, 3\).*output_padding.*smaller than "
                                                    r"stride or dilation.*output_padding=2, stride=2"):
        nn.ConvTranspose2D(2, 3, 3, stride=2, output_padding=2)
    with pytest.raises(nn.errors.ConfigError, match="dilation"):
        nn.Conv2D(2, 3, 3, dilation=0)
    with pytest.raises(nn.ShapeError, match=r"ConvTranspose2D\(2, 3, kernel_size=3\).*\(N, 2, H, W\)"
                                            r".*\(N, 4, 5\)"):
        nn.ConvTranspose2D(2, 3, 3).build((4, 5))
    with pytest.raises(nn.ShapeError, match=r"ConvTranspose2D.*empty output"):
        nn.ConvTranspose2D(2, 3, 1, padding=1).build((2, 1, 1))
    with pytest.raises(nn.ShapeError, match=r"Conv2D\(2, 3, kernel_size=3, dilation=3\).*smaller.*dilation"):
        nn.Conv2D(2, 3, 3, dilation=3).build((2, 6, 9))
