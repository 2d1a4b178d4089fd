"""The torch backend's device paths (what it runs off the CPU: CUDA, MPS) on PyTorch's "meta" device, whose
tensors have shapes and no data. Any read back to the host (``.item()``, ``.numpy()``, a NumPy kernel on
host views), any tensor made on the CPU by default and mixed in, or any branch on a value raises there,
so a training step's forward, loss, backward and optimizer update passing on meta shows, without a GPU,
that those paths never synchronise with the host and keep every tensor on the model's device. Values are
not checked here: the parity tests check them on the CPU, ``benchmarks/gpu_check.py`` on a GPU. (MoE is
left out: its routing has data-dependent shapes, which meta cannot run and CUDA graphs refuse.)"""

import numpy as np
import pytest

import neuronet as nn
from neuronet.testing import meta_device

pytest.importorskip("torch")

N = 4


@pytest.fixture
def on_meta():
    """For this test the device "torch" means is PyTorch's meta device."""
    with meta_device():
        yield


def _floats(*shape):
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _functional():
    query, key_value = nn.Input((5, 8)), nn.Input((7, 8))
    attended = nn.MultiHeadAttention(8, 2)([query, key_value])
    h = nn.Add(activation="relu")([attended, query])
    h = nn.Concatenate(axis=-1)([h, nn.Multiply()([h, query])])
    return nn.Model([query, key_value], nn.Dense(16, 3)(nn.MeanPooling()(h)))


SEQUENCE = (5, 8)
MODELS = {  # name: (make, input shapes, compile options)
    "activations": (lambda: nn.Sequential(
        *(nn.Dense(8, 8, activation=a) for a in ("relu", "gelu", "gelu_tanh", "silu", "elu", "selu", "tanh",
                                                 "sigmoid", "leaky_relu", "softmax")),
        nn.ReLU(), nn.GELU(), nn.SiLU(), nn.ELU(), nn.SELU(), nn.Tanh(), nn.Sigmoid(), nn.LeakyReLU(),
        nn.Softmax(), nn.LogSoftmax(), nn.Flatten(), nn.Dense(40, 3)), [SEQUENCE], {}),
    "transformer": (lambda: nn.Sequential(
        nn.Embedding(11, 8), nn.PositionalEncoding(5, 8, learned=True), nn.Dropout(0.2),
        nn.TransformerBlock(8, 2, 16, causal=True, dropout=0.1),
        nn.TransformerBlock(8, 2, 16, norm="rms", ffn="swiglu", rope=True),
        nn.Remat(nn.TransformerBlock(8, 2, 16, dropout=0.1)), nn.LayerNorm(8), nn.LastToken(),
        nn.Dense(8, 3)), ["tokens"], {}),
    "sequence_heads": (lambda: nn.Sequential(
        nn.GlobalAttention(8), nn.RBF(8, 6), nn.SwiGLU(6, 12), nn.RMSNorm(6), nn.Dense(6, 3)),
        [SEQUENCE], {}),
    "recurrent": (lambda: nn.Sequential(
        nn.LSTM(8, 6, return_sequences=True, num_layers=2, dropout=0.2),
        nn.Bidirectional(nn.GRU(6, 4, return_sequences=True)), nn.Bidirectional(nn.LSTM(8, 4)),
        nn.Dense(8, 3)), [SEQUENCE], {}),
    "pooling_1d": (lambda: nn.Sequential(
        nn.Conv1D(5, 4, 3, padding=1, activation="relu"), nn.MaxPool1D(2), nn.AvgPool1D(2), nn.CLSPooling(),
        nn.Dense(2, 3)), [SEQUENCE], {}),
    "convolutions": (lambda: nn.Sequential(
        nn.Conv2D(2, 4, 3, padding=1, activation="silu"), nn.BatchNorm2D(4, activation="relu"),
        nn.Conv2D(4, 4, 3, stride=2, padding=1, groups=2), nn.GroupNorm(2, 4), nn.MaxPool2D(2),
        nn.Upsample(2), nn.AvgPool2D(2), nn.Upsample(2, mode="bilinear"),
        nn.ConvTranspose2D(4, 2, 3, stride=2, padding=1, output_padding=1),
        nn.Residual(nn.Conv2D(2, 2, 3, padding=1)), nn.GlobalAvgPool2D(), nn.Dense(2, 3)), [(2, 8, 8)], {}),
    "batchnorm_1d": (lambda: nn.Sequential(
        nn.Dense(8, 8), nn.BatchNorm1D(8, activation="relu"), nn.Reshape((2, 4)), nn.MeanPooling(),
        nn.Dense(4, 3)), [(8,)], {}),
    "functional_cross_attention": (_functional, [(5, 8), (7, 8)], {}),
    "bfloat16": (lambda: nn.Sequential(
        nn.Conv2D(2, 4, 3, padding=1, activation="relu"), nn.Flatten(), nn.Dense(4 * 36, 8),
        nn.Reshape((2, 4)), nn.TransformerBlock(4, 2, 8), nn.LSTM(4, 4), nn.Dense(4, 3)), [(2, 6, 6)],
        {"mixed_precision": "bfloat16"}),
}


def _inputs(shapes):
    return [np.random.default_rng(1).integers(0, 11, (N, 5)) if s == "tokens" else _floats(N, *s)
            for s in shapes]


def _steps(model, x, y, steps: int = 2) -> None:
    """train_step's pieces without its one read-back of the loss: forward + loss, backward, the update."""
    for _ in range(steps):
        model._forward_loss(x, y)
        model._backward_loss()
        model._optimizer_step()


def _on_device(model, arrays):
    moved = [model.ops.asarray(a) for a in arrays]
    return moved if len(moved) > 1 else moved[0]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_and_inference_on_a_device_never_touch_the_host(name, on_meta, monkeypatch):
    """... and a steady step makes no tensor from host memory (dropout's masks drew a full-size host array
    and copied it, each call)."""
    import torch

    make, shapes, options = MODELS[name]
    nn.manual_seed(0)
    model = make()
    model.compile(optimizer=nn.AdamW(1e-2), loss=nn.CrossEntropyLoss(label_smoothing=0.1), **options)
    built = [(5,) if s == "tokens" else s for s in shapes]
    model.build(built if len(built) > 1 else built[0])
    model.to("torch")
    assert str(model.flat_params.device) == "meta"
    x, y = _on_device(model, _inputs(shapes)), model.ops.asarray(np.arange(N) % 3)
    _steps(model, x, y)
    made = []
    for maker in ("from_numpy", "tensor", "as_tensor"):
        real = getattr(torch, maker)
        monkeypatch.setattr(torch, maker, lambda *a, _real=real, **k: made.append(1) or _real(*a, **k))
    _steps(model, x, y, steps=1)
    assert not made
    with nn.no_grad():  # predict's forward (predict itself then copies the output to the host)
        out = model.forward(x, training=False)
    assert str(out.device) == "meta" and tuple(out.shape) == (N, 3)


@pytest.mark.parametrize("optimizer", [
    lambda **kw: nn.Adam(1e-2, weight_decay=0.1, **kw), lambda **kw: nn.AdamW(1e-2, **kw),
    lambda **kw: nn.NAdam(1e-2, **kw), lambda **kw: nn.SGD(0.1, momentum=0.9, nesterov=True, **kw),
    lambda **kw: nn.RMSprop(1e-2, momentum=0.5, centered=True, **kw), lambda **kw: nn.Adagrad(1e-2, **kw)],
    ids=["adam", "adamw", "nadam", "sgd", "rmsprop", "adagrad"])
def test_every_optimizer_updates_on_the_device(optimizer, on_meta):
    """With a frozen layer, parameter groups (their per-element tables) and gradient clipping."""
    nn.manual_seed(0)
    model = nn.Sequential(nn.Dense(6, 8, activation="relu"), nn.Dense(8, 8), nn.Dense(8, 3))
    model.layers[1].trainable = False
    groups = [{"params": "*.bias", "weight_decay": 0.0}, {"params": "0.*", "lr": 1e-3}]
    model.compile(optimizer=optimizer(groups=groups, clip_norm=1.0), loss=nn.MSELoss())
    model.build((6,))
    model.to("torch")
    _steps(model, model.ops.asarray(_floats(N, 6)), model.ops.asarray(_floats(N, 3)))


LOSSES = {  # name: (loss, the last layer's activation, target)
    "cross_entropy": (lambda: nn.CrossEntropyLoss(), None, lambda: np.arange(N) % 5),
    "cross_entropy_options": (lambda: nn.CrossEntropyLoss(weight=[1.0, 2.0, 1.0, 0.5, 1.0], ignore_index=1,
                                                          label_smoothing=0.1),
                              None, lambda: np.arange(N) % 5),
    "cross_entropy_probabilities": (lambda: nn.CrossEntropyLoss(), None,
                                    lambda: np.full((N, 5), 0.2, np.float32)),
    "nll": (lambda: nn.NLLLoss(), "log_softmax", lambda: np.arange(N) % 5),
    "bce": (lambda: nn.BCELoss(), "sigmoid", lambda: (_floats(N, 5) > 0).astype(np.float32)),
    "bce_with_logits": (lambda: nn.BCEWithLogitsLoss(), None, lambda: (_floats(N, 5) > 0).astype(np.float32)),
    "mse": (lambda: nn.MSELoss(), None, lambda: _floats(N, 5)),
    "l1": (lambda: nn.L1Loss(), None, lambda: _floats(N, 5)),
    "huber": (lambda: nn.HuberLoss(), None, lambda: _floats(N, 5)),
    "kl_div": (lambda: nn.KLDivLoss(), "log_softmax", lambda: np.full((N, 5), 0.2, np.float32)),
    "multi_margin": (lambda: nn.MultiMarginLoss(), None, lambda: np.arange(N) % 5),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_sync_free_on_the_device(name, on_meta):
    loss, activation, target = LOSSES[name]
    nn.manual_seed(0)
    model = nn.Sequential(nn.Dense(6, 5, activation=activation))
    model.compile(optimizer=nn.Adam(1e-2), loss=loss())
    model.build((6,))
    model.to("torch")
    _steps(model, model.ops.asarray(_floats(N, 6)), model.ops.asarray(target()))


@pytest.mark.parametrize("loss", [nn.MarginRankingLoss(0.1), nn.TripletMarginLoss()], ids=repr)
def test_the_losses_of_several_inputs_are_sync_free_on_the_device(loss, on_meta):
    ops = nn.backends.get_ops("torch")
    pred = tuple(ops.asarray(_floats(N, 3)) for _ in range(len(loss.inputs)))
    target = ops.asarray(np.sign(_floats(N, 3))) if len(loss.inputs) == 2 else None
    value = loss.forward(pred, target)
    assert str(value.device) == "meta"
    assert all(str(g.device) == "meta" for g in loss.backward())


def test_fused_attention_kernel_trains_on_the_device(on_meta, monkeypatch):
    """The GPU's fused attention kernel (the memory-efficient one, which ``F.scaled_dot_product_attention``
    picks there for float32), called forward and backward with its arguments: a transformer's training step
    and a no_grad forward on meta."""
    import neuronet.backend.torch_ops as torch_ops

    ops = nn.backend.get_ops("torch")
    monkeypatch.setattr(ops, "fused_attention_devices", ("meta",))
    number = torch_ops._SDPA_EFFICIENT
    monkeypatch.setattr(torch_ops, "_sdpa_choice", lambda *args: number)
    called = []
    kernel = torch_ops._SDPA_KERNELS[False, number]
    monkeypatch.setitem(torch_ops._SDPA_KERNELS, (False, number), torch_ops._FusedAttention(
        lambda *a: called.append("forward") or kernel.forward(*a),
        lambda *a: called.append("backward") or kernel.backward(*a)))
    nn.manual_seed(0)
    model = nn.Sequential(nn.Embedding(11, 8), nn.TransformerBlock(8, 2, 16, causal=True),
                          nn.TransformerBlock(8, 2, 16, norm="rms", ffn="swiglu", rope=True),
                          nn.LayerNorm(8), nn.LastToken(), nn.Dense(8, 3))
    model.compile(optimizer=nn.AdamW(1e-2), loss=nn.CrossEntropyLoss())
    model.build((5,))
    model.to("torch")
    x, y = _on_device(model, _inputs(["tokens"])), model.ops.asarray(np.arange(N) % 3)
    _steps(model, x, y, steps=1)
    assert called == ["forward"] * 2 + ["backward"] * 2
    with nn.no_grad():
        assert tuple(model.forward(x, training=False).shape) == (N, 3)


def test_transformer_with_dropout_and_a_shared_hidden_layer_trains_on_the_device(on_meta, monkeypatch):
    """A block whose feed-forward hidden layer is the shared buffer (large models: backward makes it again
    and reapplies dropout's mask) trains on the device: the recomputed hidden layer has the mask's (N, T,
    ff) shape there (on the CPU the mask's kernel walks flat memory; torch's product broadcasts)."""
    import neuronet.layers.transformer as transformer

    monkeypatch.setattr(transformer, "SHARED_HIDDEN_FROM", 1)
    nn.manual_seed(0)
    model = nn.Sequential(nn.Embedding(11, 8), nn.TransformerBlock(8, 2, 16, causal=True, dropout=0.2),
                          nn.LastToken(), nn.Dense(8, 3))
    model.compile(optimizer=nn.AdamW(1e-2), loss=nn.CrossEntropyLoss())
    model.build((5,))
    model.to("torch")
    assert model.layers[1]._share_hidden(N * 5)
    _steps(model, _on_device(model, _inputs(["tokens"])), model.ops.asarray(np.arange(N) % 3))


def test_meta_device_names_meta_inside_and_restores_the_device_after():
    before = nn.backend.get_ops("torch")
    with meta_device():
        inside = nn.backend.get_ops("torch")
        assert inside.device == "meta" and not inside.host_masks
    assert nn.backend.get_ops("torch") is before and inside.host_masks == before.host_masks
