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


# ----------------------------------------------------------------- metrics by name
def _epoch(name, pred, target, batch=7):
    """The metric accumulated over batches, as fit reports it."""
    (make,) = resolve([name]).values()
    metric = make()
    for start in range(0, len(pred), batch):
        metric.update(pred[start:start + batch], target[start:start + batch])
    return metric.result()


@pytest.mark.parametrize("k", [1, 2, 5])
def test_top_k_accuracy_matches_scikit_learn(k):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(k)
    pred, target = rng.standard_normal((60, 7)), rng.integers(0, 7, 60)
    name = "top_k_accuracy" if k == 5 else f"top{k}"
    assert _epoch(name, pred, target) == pytest.approx(sk.top_k_accuracy_score(target, pred, k=k,
                                                                                labels=range(7)))
    assert "top5" in resolve(["top5"])


@pytest.mark.parametrize("name", ["precision", "recall", "f1"])
def test_macro_precision_recall_f1_match_scikit_learn(name):
    sk = pytest.importorskip("sklearn.metrics")
    score = {"precision": sk.precision_score, "recall": sk.recall_score, "f1": sk.f1_score}[name]
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, 80)
    target[target == 4] = 3  # class 4 never a target...
    pred = rng.standard_normal((80, 6))
    pred[:, 5] -= 10  # ...class 5 never predicted nor a target: outside the average
    guess = pred.argmax(1)
    want = score(target, guess, average="macro", zero_division=0)
    assert _epoch(name, pred, target) == pytest.approx(want)
    assert _epoch(name, pred, np.eye(6)[target]) == pytest.approx(want)  # one-hot targets
    prob = rng.random((50, 1))
    labels = rng.integers(0, 2, (50, 1))
    assert _epoch(name, prob, labels) == pytest.approx(score(labels[:, 0], prob[:, 0] > 0.5, zero_division=0))


def test_mae_and_mse_are_elementwise_means():
    rng = np.random.default_rng(1)
    pred, target = rng.standard_normal((30, 3)), rng.standard_normal((30, 3))
    assert _epoch("mae", pred, target) == pytest.approx(np.abs(pred - target).mean())
    assert _epoch("mean_squared_error", pred, target) == pytest.approx(((pred - target) ** 2).mean())


def test_fit_reports_named_metrics_equal_to_a_direct_computation():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((45, 3)).astype(np.float32), rng.integers(0, 3, 45)
    model = nn.Sequential(nn.Dense(3, 3))
    model.compile(nn.SGD(0.0), nn.CrossEntropyLoss(), metrics=["f1", "top2", "precision"])
    hist = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    guess = model.predict(x).argmax(1)
    assert hist.history["f1"][0] == pytest.approx(sk.f1_score(y, guess, average="macro", zero_division=0))
    assert model.evaluate(x, y)["top2"] == pytest.approx(sk.top_k_accuracy_score(y, model.predict(x), k=2))


def test_totals_state_adds_up_over_parts_of_the_data():
    """Two halves' states summed (as ranks' are, zero-padded) give the metrics of the whole."""
    from neuronet.backend import get_ops
    from neuronet.metrics import resolve
    from neuronet.model.parallel import reduce_totals
    from neuronet.model.totals import Totals

    rng = np.random.default_rng(0)
    pred, target = rng.standard_normal((40, 4)), rng.integers(0, 4, 40)
    target[:20] = np.minimum(target[:20], 1)  # the first half sees classes 0-1 only: shorter counts
    pred[:20, 2:] = -9.0
    fns = resolve(["accuracy", "f1", "precision"])
    ops = get_ops("numpy")
    whole = Totals(fns, ops)
    whole.add_loss(1.5, 40)
    whole.add_metrics(pred, target)
    halves = [Totals(fns, ops) for _ in range(2)]
    for k, part in enumerate(halves):
        part.add_loss(1.0 + k, 20)
        part.add_metrics(pred[20 * k:20 * (k + 1)], target[20 * k:20 * (k + 1)])

    class TwoRanks:  # an allreduce over two ranks whose states are both here
        size = 2

        def __init__(self):
            self.rank, self.calls = 0, []

        def allreduce(self, array, what=""):
            self.calls.append(array.copy())

    states = [h.state() for h in halves]
    assert len(states[0]["f1"]) < len(states[1]["f1"])
    longest = {k: max(len(s[k]) for s in states) for k in states[0]}
    summed = {k: np.sum([np.pad(s[k], (0, longest[k] - len(s[k]))) for s in states], axis=0) for k in longest}
    halves[0].load_state({k: v.tolist() for k, v in summed.items()})
    for key, value in whole.means().items():
        assert halves[0].means()[key] == pytest.approx(value), key
    comm = TwoRanks()
    reduce_totals(Totals(fns, ops), comm)  # sizes first, then the padded vector
    assert len(comm.calls) == 2 and comm.calls[0].shape == (2, 4)
