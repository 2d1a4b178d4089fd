"""nn.no_grad / nn.is_grad_enabled (PyTorch's grad mode) and the inference that runs under it."""

import threading

import numpy as np
import pytest

import neuronet as nn


def test_no_grad_nests_restores_and_decorates():
    assert nn.is_grad_enabled()
    with nn.no_grad():
        assert not nn.is_grad_enabled()
        with nn.no_grad():
            assert not nn.is_grad_enabled()
        assert not nn.is_grad_enabled()
    assert nn.is_grad_enabled()

    @nn.no_grad()
    def infer():
        return nn.is_grad_enabled()

    assert infer() is False and nn.is_grad_enabled()
    with pytest.raises(KeyError), nn.no_grad():
        raise KeyError("restored on the way out")
    assert nn.is_grad_enabled()


def test_no_grad_is_per_thread():
    seen = []
    with nn.no_grad():
        thread = threading.Thread(target=lambda: seen.append(nn.is_grad_enabled()))
        thread.start()
        thread.join()
    assert seen == [True]


def _cnn():
    nn.manual_seed(0)
    model = nn.Sequential(nn.Conv2D(1, 4, 3, padding=1, activation="relu"), nn.MaxPool2D(2), nn.Flatten(),
                          nn.Dense(4 * 4 * 4, 3))
    model.build((1, 8, 8))
    model.compile(optimizer=nn.Adam(1e-2), loss=nn.CrossEntropyLoss())
    return model


def test_predict_and_evaluate_run_under_no_grad_and_training_still_works(backend):
    model = _cnn().to(backend)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 6)
    pool = model.layers[1]
    expected = np.array(model.ops.to_numpy(model.forward(model.ops.asarray(x), training=False)))
    pool.clear_workspace()
    np.testing.assert_array_equal(model.predict(x), expected)
    model.evaluate(x, y)
    assert "index" not in pool.__dict__["_workspace"]  # neither kept the argmax positions
    assert nn.is_grad_enabled()
    before = model.state_dict()["0.weight"].copy()
    model.train_step(model.ops.asarray(x), model.ops.asarray(y))  # after predict: the index is made again
    assert "index" in pool.__dict__["_workspace"]
    assert not np.array_equal(model.state_dict()["0.weight"], before)
