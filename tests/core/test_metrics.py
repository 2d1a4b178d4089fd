import numpy as np
import pytest

import neuronet as nn
from neuronet.metrics import accuracy, resolve


def test_accuracy_for_class_indices_one_hot_and_sequences():
    pred = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy(pred, np.array([1, 0, 0])) == (2.0, 3)
    assert accuracy(pred, np.eye(2)[[1, 0, 0]]) == (2.0, 3)
    logits = np.zeros((2, 3, 4))
    logits[..., 2] = 1.0
    assert accuracy(logits, np.array([[2, 2, 0], [2, 1, 2]])) == (4.0, 6)


def test_accuracy_for_one_output_thresholds_at_half():
    assert accuracy(np.array([0.2, 0.7, 0.9]), np.array([0, 1, 0])) == (2.0, 3)
    assert accuracy(np.array([[0.2], [0.7]]), np.array([[0.0], [1.0]])) == (2.0, 2)


def test_accuracy_shape_mismatch_and_unknown_metric():
    with pytest.raises(ValueError, match="accuracy: predictions"):
        accuracy(np.zeros((3, 2)), np.zeros(4, int))
    with pytest.raises(ValueError, match="unknown metric 'f2'; known: acc, accuracy, f1"):
        resolve(["f2"])
    assert list(resolve(["acc"])) == ["accuracy"]


def test_fit_accuracy_equals_predict_accuracy_without_dropout():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 3)).astype(np.float32), rng.integers(0, 2, 40)
    model = nn.Sequential(nn.Dense(3, 2))
    model.compile(nn.SGD(0.0), nn.CrossEntropyLoss(), metrics=["accuracy"])
    hist = model.fit(x, y, epochs=1, batch_size=7, verbose=0)
    assert hist.history["accuracy"][0] == pytest.approx(np.mean(model.predict(x).argmax(1) == y))
