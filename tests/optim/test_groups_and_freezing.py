"""Parameter groups and frozen layers, step for step against torch.optim param groups and
``requires_grad=False``; frozen weights bit-identical; dL/dx unchanged; files; errors; allocations."""

import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.errors import ConfigError
from neuronet.testing import assert_step_allocates_nothing

STEPS = 8

# class name in neuronet and torch.optim, and the same keyword arguments for both (every base weight decay
# is nonzero, so that the "*.bias" group's weight_decay=0 is visible)
OPTIMIZERS = {
    "sgd": ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.05)),
    "adam": ("Adam", dict(lr=0.02, weight_decay=0.05)),
    "adamw": ("AdamW", dict(lr=0.02, weight_decay=0.1)),
    "rmsprop": ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.05)),
    "adagrad": ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.05)),
    "nadam": ("NAdam", dict(lr=0.02, weight_decay=0.05)),
}


pytestmark = pytest.mark.usefixtures("float64_default_dtype")  # see conftest.py


def _pair(seed=0):
    """A neuronet MLP and the same torch MLP (its Linear layers are torch's 0, 2, 4; ours 0, 1, 2)."""
    torch.manual_seed(seed)
    ref = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 6), torch.nn.Tanh(),
                              torch.nn.Linear(6, 3)).double()
    model = nn.Sequential(nn.Dense(5, 7, activation="tanh"), nn.Dense(7, 6, activation="tanh"),
                          nn.Dense(6, 3), dtype="float64")
    model.build((5,))
    model.load_state_dict({_ours(k): v for k, v in ref.state_dict().items()})
    return model, ref


def _ours(torch_name: str) -> str:
    i, rest = torch_name.split(".", 1)
    return f"{int(i) // 2}.{rest}"


def _data(n=16, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 5)), rng.integers(0, 3, n)


def _train_both(model, ref, topt, backend, steps=STEPS, sched=None, tsched=None):
    model.to(backend)
    x, y = _data()
    for step in range(steps):
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        topt.step()
        ours = model.train_step(x, y)
        assert ours == pytest.approx(loss.item(), rel=1e-10), f"step {step + 1}"
        if sched is not None:
            sched.step()
            tsched.step()
    for key, value in ref.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[_ours(key)], value.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=key)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_groups_match_torch_param_groups_step_for_step_with_a_scheduler(name, backend):
    cls, kwargs = OPTIMIZERS[name]
    model, ref = _pair()
    groups = [{"params": "*.bias", "weight_decay": 0.0},
              {"params": ["0.*", "1.weight"], "lr": kwargs["lr"] / 10}]
    opt = getattr(nn, cls)(**kwargs, groups=groups)
    model.compile(opt, nn.CrossEntropyLoss())
    named = dict(ref.named_parameters())
    tgroups = [{"params": [named[k] for k in ("0.bias", "2.bias", "4.bias")], "weight_decay": 0.0},
               {"params": [named["0.weight"], named["2.weight"]], "lr": kwargs["lr"] / 10},
               {"params": [named["4.weight"]]}]
    topt = getattr(torch.optim, cls)(tgroups, **kwargs)
    sched = nn.StepLR(opt, step_size=3, gamma=0.5)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=3, gamma=0.5)
    _train_both(model, ref, topt, backend, sched=sched, tsched=tsched)
    lrs = opt.group_settings()["lr"]  # (the optimizer's own, group 1, group 2)
    assert lrs == pytest.approx([topt.param_groups[i]["lr"] for i in (2, 0, 1)], rel=1e-15)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_freezing_matches_requires_grad_false_and_keeps_frozen_weights_bit_identical(name, backend):
    cls, kwargs = OPTIMIZERS[name]
    model, ref = _pair()
    model[1].trainable = False
    ref[2].requires_grad_(False)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    model.compile(getattr(nn, cls)(**kwargs), nn.CrossEntropyLoss())
    topt = getattr(torch.optim, cls)([p for p in ref.parameters() if p.requires_grad], **kwargs)
    _train_both(model, ref, topt, backend)
    after = model.state_dict()
    for key in ("1.weight", "1.bias"):
        np.testing.assert_array_equal(after[key], before[key])
    assert not np.array_equal(after["0.weight"], before["0.weight"])
    offset = model.num_params() - 6 * 3 - 3 - 7 * 6 - 6  # layer 1's slice of the flat buffer
    for state in model.optimizer.state.values():  # no momentum / moments for frozen weights
        assert not np.any(model.ops.to_numpy(state)[offset:offset + 7 * 6 + 6])


def test_unfreezing_resumes_updates_and_frozen_bottom_layers_get_no_backward():
    model, _ = _pair()
    model[0].trainable = False
    model.compile(nn.SGD(0.1), nn.CrossEntropyLoss())
    assert model.num_trainable_params() == model.num_params() - 5 * 7 - 7
    calls = []
    original = model[0].backward
    model[0].backward = lambda dy: calls.append(1) or original(dy)
    x, y = _data()
    w0 = model[0].params["weight"].copy()
    model.train_step(x, y)
    assert not calls and np.array_equal(model[0].params["weight"], w0)
    model[0].trainable = True
    model.train_step(x, y)
    assert calls and not np.array_equal(model[0].params["weight"], w0)


def test_frozen_composite_freezes_its_descendants_and_summary_counts_them():
    block = nn.TransformerBlock(8, 2, 16)
    block.trainable = False  # before build: the children it builds later are frozen too
    model = nn.Sequential(block, nn.Dense(8, 3))
    model.build((4, 8))
    assert all(not layer.trainable for _, layer in block.named_layers())
    head = 8 * 3 + 3
    assert model.num_trainable_params() == head
    text = model.summary(print_fn=None)
    assert f"Trainable params: {head:,}" in text
    assert f"Non-trainable params: {model.num_params() - head:,}" in text
    block.children["self_attn"].trainable = True  # a child can be re-enabled alone
    assert model.num_trainable_params() == head + block.children["self_attn"].num_params()


# Every layer with parameters: with trainable False, backward leaves every gradient zero and returns the
# same dL/dx as the trainable layer.
LAYERS = [
    (lambda: nn.Dense(6, 5, activation="tanh"), (4, 6)),
    (lambda: nn.Dense(6, 5), (4, 6)),
    (lambda: nn.Conv2D(2, 3, 3, padding=1, activation="relu"), (2, 2, 5, 5)),
    (lambda: nn.Conv1D(2, 3, 3), (2, 2, 7)),
    (lambda: nn.Conv2D(4, 4, 3, padding="same", groups=2, dilation=2), (2, 4, 6, 6)),
    (lambda: nn.ConvTranspose2D(2, 3, 3, stride=2, padding=1, output_padding=1), (2, 2, 4, 4)),
    (lambda: nn.MultiHeadAttention(8, 2, rope=True), (2, 5, 8)),
    (lambda: nn.TransformerBlock(8, 2, 16, norm="rms", ffn="swiglu"), (2, 5, 8)),
    (lambda: nn.LayerNorm(6), (4, 6)),
    (lambda: nn.RMSNorm(6), (4, 6)),
    (lambda: nn.GroupNorm(2, 4), (3, 4, 5)),
    (lambda: nn.Bidirectional(nn.LSTM(4, 5, num_layers=2, return_sequences=True)), (2, 3, 4)),
    (lambda: nn.BatchNorm1D(6), (8, 6)),
    (lambda: nn.BatchNorm2D(3), (4, 3, 3, 3)),
    (lambda: nn.LSTM(4, 5, return_sequences=True), (2, 3, 4)),
    (lambda: nn.Bidirectional(nn.GRU(4, 5)), (2, 3, 4)),
    (lambda: nn.MoE(6, 8, num_experts=3, top_k=2), (2, 4, 6)),
    (lambda: nn.RBF(6, 4), (4, 6)),
    (lambda: nn.GlobalAttention(6), (2, 4, 6)),
    (lambda: nn.SwiGLU(6, 8), (4, 6)),
    (lambda: nn.PositionalEncoding(8, 6, learned=True), (2, 5, 6)),
]


@pytest.mark.parametrize("make, shape", LAYERS, ids=lambda v: repr(v()) if callable(v) else None)
def test_frozen_layer_computes_no_weight_gradient_and_the_same_input_gradient(make, shape, backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    results = []
    for trainable in (True, False):
        nn.manual_seed(0)
        layer = make()
        layer.build(shape[1:], dtype="float64")
        layer.to(backend)
        layer.trainable = trainable
        y = layer.forward(layer.ops.asarray(x), training=True)
        dy = np.random.default_rng(4).standard_normal(tuple(y.shape))
        layer.zero_grad()
        dx = layer.backward(layer.ops.asarray(dy))
        results.append((layer.ops.to_numpy(dx), layer.ops.to_numpy(layer.flat_grads).copy()))
    (dx_t, g_t), (dx_f, g_f) = results
    np.testing.assert_allclose(dx_f, dx_t, rtol=1e-12, atol=1e-12)
    assert np.any(g_t) and not np.any(g_f)


def test_frozen_embedding_computes_no_weight_gradient():
    layer = nn.Embedding(10, 4)
    layer.build((3,))
    layer.trainable = False
    layer.forward(np.array([[1, 2, 3]]), training=True)
    layer.zero_grad()
    layer.backward(np.ones((1, 3, 4), np.float32))
    assert not np.any(layer.flat_grads)


def test_groups_and_frozen_layers_survive_save_and_load(tmp_path):
    model, _ = _pair()
    model[1].trainable = False
    groups = [{"params": "*.bias", "weight_decay": 0.0}, {"params": "0.*", "lr": 1e-3}]
    model.compile(nn.AdamW(1e-2, groups=groups), nn.CrossEntropyLoss())
    x, y = _data()
    for _ in range(3):
        model.train_step(x, y)
    model.save(tmp_path / "m.nnet")
    loaded = nn.load(tmp_path / "m.nnet")
    assert not loaded[1].trainable and loaded[0].trainable and loaded[2].trainable
    assert loaded.optimizer.groups == model.optimizer.groups
    assert [model.train_step(x, y) for _ in range(3)] == [loaded.train_step(x, y) for _ in range(3)]
    np.testing.assert_array_equal(loaded.flat_params, model.flat_params)


def test_group_errors_are_clear():
    model, _ = _pair()
    with pytest.raises(ConfigError, match=r"pattern\(s\) \['\*\.gamma'\] match no parameter"):
        model.compile(nn.SGD(0.1, groups=[{"params": "*.gamma", "lr": 0.1}]), nn.MSELoss())
    with pytest.raises(ConfigError, match=r"groups\[0\] has unknown key\(s\) \['momentum'\]"):
        nn.SGD(0.1, groups=[{"params": "*", "momentum": 0.9}])
    with pytest.raises(ConfigError, match=r"groups\[1\] \(\['0.\*'\]\) lr must be a finite number >= 0"):
        nn.Adam(groups=[{"params": "*.bias"}, {"params": "0.*", "lr": -1.0}])
    with pytest.raises(ConfigError, match=r"groups\[0\]\['params'\] must be a name pattern"):
        nn.Adam(groups=[{"lr": 0.1}])
    with pytest.raises(RuntimeError, match="parameter groups need the parameter names"):
        nn.Adam(groups=[{"params": "*"}]).step(np.zeros(3), np.zeros(3))


def test_compile_aliases_for_the_new_optimizers():
    model = nn.Sequential(nn.Dense(3, 2))
    assert type(model.compile("adagrad", "mse").optimizer) is nn.Adagrad
    assert type(model.compile("nadam", "mse").optimizer) is nn.NAdam


@pytest.mark.parametrize("opt", [lambda: nn.Adam(1e-3, groups=[{"params": "*.bias", "weight_decay": 0.0},
                                                                {"params": "0.*", "lr": 1e-4}]),
                                 lambda: nn.SGD(1e-2, momentum=0.9)])
def test_frozen_and_grouped_train_step_allocates_nothing(opt):
    model = nn.Sequential(nn.Dense(784, 256, activation="relu"), nn.Dense(256, 128, activation="relu"),
                          nn.Dense(128, 10))
    model[0].trainable = False
    model.compile(optimizer=opt(), loss=nn.CrossEntropyLoss())
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 784)).astype(np.float32), rng.integers(0, 10, 64)
    assert_step_allocates_nothing(lambda: model.train_step(x, y))


def test_a_fully_frozen_model_steps_without_changing(backend):
    model, _ = _pair()
    model.trainable = False
    model.compile(nn.AdamW(0.1), nn.CrossEntropyLoss())
    model.to(backend)
    before = np.array(model.ops.to_numpy(model.flat_params))
    x, y = _data()
    model.train_step(x, y)
    np.testing.assert_array_equal(model.ops.to_numpy(model.flat_params), before)
    assert model.num_trainable_params() == 0
