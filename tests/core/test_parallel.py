"""Replicas, thread-safe predict/evaluate and the worker pool (fit/predict with workers=N)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import neuronet as nn
from neuronet.core.replica import replica
from neuronet.errors import ConfigError
from neuronet.model import parallel
from neuronet.model.data_adapter import DataList
from neuronet.testing import assert_step_allocates_nothing, step_allocations


def _mlp(seed=0, bn=False):
    nn.manual_seed(seed)
    layers = [nn.Dense(20, 48, activation="relu")]
    if bn:
        layers.append(nn.BatchNorm1D(48))
    layers += [nn.Dense(48, 48, activation="tanh"), nn.Dense(48, 5)]
    model = nn.Sequential(*layers).compile(nn.SGD(0.05, momentum=0.9), "cross_entropy", metrics=["accuracy"])
    model.build((20,))
    return model


def _cnn(seed=0):
    nn.manual_seed(seed)
    model = nn.Sequential(nn.Conv2D(1, 4, 3, activation="relu"), nn.MaxPool2D(2), nn.Flatten(),
                          nn.Dense(4 * 3 * 3, 5)).compile(nn.Adam(1e-2), "cross_entropy")
    model.build((1, 8, 8))
    return model


def _lstm(seed=0):
    nn.manual_seed(seed)
    model = nn.Sequential(nn.LSTM(6, 10), nn.Dense(10, 5)).compile(nn.Adam(1e-2), "cross_entropy")
    model.build((7, 6))
    return model


def _data(shape, n=120):
    rng = np.random.default_rng(1)
    if shape == (6,):  # token ids for the transformer
        return rng.integers(0, 20, (n, 6)), rng.integers(0, 5, n)
    return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, 5, n)


def test_replica_shares_parameters_and_owns_gradients():
    model = _mlp()
    grads = model.ops.zeros((model.num_params(),), model.dtype)
    rep = replica(model, grads=grads)
    assert np.shares_memory(rep.layers[0].params["weight"], model.flat_params)
    assert np.shares_memory(rep.layers[0].grads["weight"], grads)
    assert not np.shares_memory(rep.layers[0].grads["weight"], model.flat_grads)
    assert rep.optimizer is None and rep.loss is not model.loss
    x, _ = _data((20,), 8)
    model.flat_params[:] += 0.01  # an update of the original is seen by the replica
    np.testing.assert_allclose(rep.forward(x, training=False), model.forward(x, training=False), rtol=1e-6)


def test_replica_of_a_model_another_thread_is_running():
    """The first forward adds attributes (saved activations) to each layer; a thread that copies the
    layers meanwhile (predict(workers=N) on a model built but never run) once failed with "dictionary
    changed size during iteration". Here the copy itself triggers the other thread's write."""
    model = _mlp()
    first = model.layers[0]

    class WrittenMeanwhile:
        def __deepcopy__(self, memo):
            first.__dict__["_added_meanwhile"] = True  # what the other thread's forward does
            return self

    first.marker = WrittenMeanwhile()
    rep = replica(model)
    assert "_added_meanwhile" in vars(first) and "_added_meanwhile" not in vars(rep.layers[0])
    x, _ = _data((20,), 8)
    np.testing.assert_allclose(rep.forward(x, training=False), model.forward(x, training=False), rtol=1e-6)


@pytest.mark.parametrize("what", ["predict", "evaluate"])
def test_concurrent_predict_and_evaluate_from_4_threads(what):
    model = _mlp()
    x, y = _data((20,), 200)
    want = model.predict(x) if what == "predict" else model.evaluate(x, y)
    wrong, errors = [], []

    def call():
        try:
            for _ in range(40):
                got = model.predict(x, batch_size=16) if what == "predict" else model.evaluate(x, y, 16)
                if what == "predict":
                    ok = np.allclose(got, want, rtol=1e-5, atol=1e-6)
                else:
                    ok = all(abs(got[k] - want[k]) < 1e-5 for k in want)
                if not ok:
                    wrong.append(1)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not wrong, f"{len(wrong)} of 160 concurrent {what} calls returned wrong numbers"


def test_a_model_that_predicted_in_threads_can_still_be_copied():
    import copy

    model = _mlp()
    x, _ = _data((20,), 16)
    model.predict(x, workers=2)
    clone = copy.deepcopy(model)  # the threads and locks are not copied: the clone makes its own
    np.testing.assert_allclose(clone.predict(x, workers=2), model.predict(x), rtol=1e-6)


def test_predict_with_workers_equals_predict(backend):
    model = _mlp().to(backend)
    x, _ = _data((20,), 101)
    np.testing.assert_allclose(model.predict(x, workers=3), model.predict(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model.predict(x, workers="auto"), model.predict(x), rtol=1e-6, atol=1e-6)


def _transformer(seed=0):
    nn.manual_seed(seed)  # SGD: Adam would amplify the rounding noise of the key bias (true gradient 0)
    model = nn.Sequential(nn.Embedding(20, 16), nn.TransformerBlock(16, 2, 32), nn.LastToken(),
                          nn.Dense(16, 5)).compile(nn.SGD(0.1, momentum=0.9), "cross_entropy")
    model.build((6,))
    return model


@pytest.mark.parametrize("make, shape", [(_mlp, (20,)), (_cnn, (1, 8, 8)), (_lstm, (7, 6)),
                                         (_transformer, (6,))], ids=["mlp", "cnn", "lstm", "transformer"])
def test_worker_pool_gives_the_weights_of_one_worker(make, shape, backend):
    x, y = _data(shape)
    one, two = make().to(backend), make().to(backend)
    h1 = one.fit(x, y, epochs=2, batch_size=25, shuffle=False, verbose=0)
    h2 = two.fit(x, y, epochs=2, batch_size=25, shuffle=False, verbose=0, workers=2)
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(h2.history["loss"], h1.history["loss"], rtol=1e-5)
    first = next(iter(one.state_dict()))
    assert not np.allclose(one.state_dict()[first], make().state_dict()[first])  # it trained


def _two_in_two_out(seed=0):
    nn.manual_seed(seed)
    a, b = nn.Input((8,)), nn.Input((4,))
    h = nn.Concatenate()([nn.Dense(8, 16, activation="relu")(a), b])
    return nn.Model([a, b], [nn.Dense(20, 3, name="cls")(h), nn.Dense(20, 1, name="reg")(h)])


def test_worker_pool_trains_a_model_of_several_inputs_and_outputs(backend):
    """Shards of every input and target; each output's loss, metric and the joined outputs as one
    worker's."""
    rng = np.random.default_rng(2)
    x = [rng.standard_normal((30, 8)).astype(np.float32), rng.standard_normal((30, 4)).astype(np.float32)]
    y = [rng.integers(0, 3, 30), rng.standard_normal((30, 1)).astype(np.float32)]
    runs = []
    for workers in (1, 2):
        model = _two_in_two_out().to(backend)
        model.compile(nn.SGD(0.05), ["cross_entropy", "mse"], metrics=["accuracy"], workers=workers)
        history = model.fit(x, y, epochs=2, batch_size=10, verbose=0, shuffle=False).history
        runs.append((history, model.state_dict()))
    (h1, w1), (h2, w2) = runs
    assert set(h2) == set(h1) and {"cls_loss", "reg_loss", "cls_accuracy"} <= set(h1)
    for key in h1:
        np.testing.assert_allclose(h2[key], h1[key], rtol=1e-5, err_msg=key)
    for name, value in w1.items():
        np.testing.assert_allclose(w2[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_worker_pool_weights_shards_by_the_losss_own_count(backend):
    """Cross-entropy with class weights and ignore_index divides by the counted weight W, not by the
    samples: the pool weights each shard by its W_k, a shard of ignored targets only (W_k = 0) by 0."""
    x, y = _data((20,), 40)
    few = y.copy()
    few[:13] = -1  # the first shard (20 samples) counts 7 targets, the second 20
    none = np.r_[np.full(20, -1), y[20:]]  # the first shard counts none: its own mean is 0/0
    runs = []
    for workers in (1, 2):
        model = _mlp().to(backend)
        loss = nn.CrossEntropyLoss(weight=[1.0, 2.0, 0.5, 1.0, 3.0], ignore_index=-1)
        model.compile(nn.SGD(0.05), loss, workers=workers)
        runs.append(([model.train_step(x, few), model.train_step(x, none)], model.state_dict()))
    (losses1, weights1), (losses2, weights2) = runs
    np.testing.assert_allclose(losses2, losses1, rtol=1e-5)
    for name, value in weights1.items():
        np.testing.assert_allclose(weights2[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_worker_pool_with_dropout_is_reproducible_under_a_seed():
    """Each shard draws its masks from its own stream, seeded in shard order: the same weights twice,
    whatever order the threads ran in; and the masks did act (not one worker's weights)."""
    x, y = _data((20,), 60)

    def run(workers):
        nn.manual_seed(3)
        model = nn.Sequential(nn.Dense(20, 32, activation="relu"), nn.Dropout(0.5), nn.Dense(32, 5))
        model.compile(nn.SGD(0.05), "cross_entropy", workers=workers)
        model.fit(x, y, epochs=2, batch_size=20, verbose=0)
        return model.state_dict()

    first, second, one = run(2), run(2), run(1)
    for name, value in first.items():
        np.testing.assert_array_equal(second[name], value, err_msg=name)
    assert not np.allclose(first["0.weight"], one["0.weight"])


def test_worker_pool_batchnorm_uses_per_worker_statistics():
    x, y = _data((20,))
    model = _mlp(bn=True)
    model.fit(x, y, epochs=1, batch_size=40, shuffle=False, verbose=0, workers=2)
    pool = parallel.worker_pool(model, 2)
    for key in ("running_mean", "running_var"):  # worker 0's statistics become the model's
        np.testing.assert_array_equal(model.layers[1].buffers[key], pool.replicas[0].layers[1].buffers[key])
    assert float(np.abs(model.layers[1].buffers["running_mean"]).sum()) > 0


def test_worker_pool_step_allocates_nothing_in_steady_state():
    model = _mlp()
    x, y = _data((20,), 64)
    pool = parallel.worker_pool(model, 2)

    def step():
        pool.gradients(x, y)
        model.optimizer.step(model.flat_params, model.flat_grads)

    growth, _ = step_allocations(step)
    assert growth < 64 * 1024


def test_workers_auto_leaves_the_model_untouched():
    model = _mlp(bn=True)
    x, y = _data((20,), 64)
    before = model.state_dict()
    state = nn.core.random.generator().bit_generator.state
    assert parallel.choose_workers(model, x, y, 32) in (1, 2)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    assert nn.core.random.generator().bit_generator.state == state
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, workers="auto")


def test_compile_workers_splits_every_train_step():
    x, y = _data((6,), 48)
    one, two = _transformer(), _transformer()
    two.compile(nn.SGD(0.1, momentum=0.9), "cross_entropy", workers=2)
    for _ in range(3):
        loss1, loss2 = one.train_step(x, y), two.train_step(x, y)
        np.testing.assert_allclose(loss2, loss1, rtol=1e-5)
    assert parallel._state(two).pool is not None and parallel._state(one).pool is None
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=name)
    assert_step_allocates_nothing(lambda: two.train_step(x, y), "pooled train_step")
    one.train_step(x, y, workers=2)  # per call, over compile's
    assert parallel._state(one).pool is not None
    pooled = _transformer().compile(nn.SGD(0.1, momentum=0.9), "cross_entropy", workers=2)
    h2 = pooled.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)  # fit: compile's workers
    h1 = _transformer().fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert parallel._state(pooled).pool is not None
    np.testing.assert_allclose(h2.history["loss"], h1.history["loss"], rtol=1e-5)


def test_workers_auto_keeps_one_worker_where_the_pool_would_change_the_result(monkeypatch):
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    monkeypatch.setattr(parallel, "worker_pool", lambda *a: pytest.fail("the pool was measured"))
    x, y = _data((20,), 32)
    nn.manual_seed(0)
    dropout = nn.Sequential(nn.Dense(20, 16, activation="relu"), nn.Dropout(0.5), nn.Dense(16, 5))
    dropout.compile("sgd", "cross_entropy", workers="auto").build((20,))
    state = nn.core.random.generator().bit_generator.state
    assert parallel.choose_workers(dropout, x, y, 32) == 1  # it drew masks: one worker
    assert nn.core.random.generator().bit_generator.state == state
    nn.manual_seed(0)
    moe = nn.Sequential(nn.MoE(20, 8, 2, 1), nn.Dense(20, 5)).compile("sgd", "cross_entropy")
    moe.build((20,))
    for model in (_mlp(bn=True), moe):  # batch statistics, a balancing loss over the batch
        assert parallel.choose_workers(model, x, y, 32) == 1
    monkeypatch.undo()
    model = _mlp().compile("sgd", "cross_entropy", workers="auto")
    model.train_step(x, y)  # built already: measures now, and keeps the choice
    assert model._auto_workers[0] is model.flat_params
    assert model._auto_workers[1] == {((32, 20),): model._auto_workers[1][((32, 20),)]}
    assert model._auto_workers[1][((32, 20),)] in (1, min(parallel.cores(), 32))


def test_workers_auto_measures_each_batch_shape_up_to_a_bound(monkeypatch):
    """Like cudnn.benchmark, "auto" chooses per batch shape: a new shape is measured, a known one is
    not; past AUTO_SHAPES shapes the first shape's choice is taken; the pool is dropped only when no
    shape chose it."""
    measured = []

    def choose(model, x, y, batch_size):
        measured.append(len(x))
        return 2 if len(x) >= 16 else 1

    monkeypatch.setattr(parallel, "choose_workers", choose)
    monkeypatch.setattr(parallel, "AUTO_SHAPES", 3)
    model = _mlp().compile("sgd", "cross_entropy", workers="auto")
    x, y = _data((20,), 32)
    assert [parallel.resolve_workers(model, "auto", x[:n], y[:n]) for n in (32, 32, 8, 32, 8)] == \
        [2, 2, 1, 2, 1]
    assert measured == [32, 8]
    parallel.worker_pool(model, 2)
    assert parallel.resolve_workers(model, "auto", x[:4], y[:4]) == 1
    assert parallel._state(model).pool is not None  # the batches of 32 still take it
    assert parallel.resolve_workers(model, "auto", x[:5], y[:5]) == 2  # a fourth shape: the first's choice
    assert measured == [32, 8, 4]
    other = _mlp().compile("sgd", "cross_entropy", workers="auto")
    parallel.worker_pool(other, 2)
    assert parallel.resolve_workers(other, "auto", x[:8], y[:8]) == 1
    assert parallel._state(other).pool is None  # no shape chose it
    several = DataList([np.zeros((4, 3)), np.zeros((4, 2))])
    assert parallel._batch_key(several) == ((4, 3), (4, 2))  # a model of several inputs: each one's shape


def test_bad_workers_and_launcher_raise_config_errors(monkeypatch):
    model = _mlp()
    x, y = _data((20,), 40)
    with pytest.raises(ConfigError, match="workers=16 is larger than the batch"):
        model.fit(x, y, batch_size=8, verbose=0, workers=16)
    with pytest.raises(ConfigError, match="positive integer"):
        model.fit(x, y, batch_size=8, verbose=0, workers=0)
    for bad in (0, "many", 1.5):
        with pytest.raises(ConfigError, match="compile: workers must be a positive integer"):
            model.compile("sgd", "cross_entropy", workers=bad)
    with pytest.raises(ConfigError, match="float16 loss scaling"):
        model.compile("sgd", "cross_entropy", mixed_precision="float16", workers=2)
    for key in ("TORCHELASTIC_RUN_ID", "RANK", "PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError, match="mpiexec -n K"):
        model.fit(x, y, batch_size=8, verbose=0, distributed=True)


def test_config_hardware_workers():
    from neuronet.cli.config import validate

    base = {"model": {"layers": [{"type": "Dense", "in_features": 4, "out_features": 2}]},
            "dataset": {"source": "digits"}}
    assert validate(dict(base, hardware={"workers": "auto"}))["hardware"]["workers"] == "auto"
    assert validate(base)["hardware"]["workers"] == 1
    with pytest.raises(ConfigError, match="hardware.workers"):
        validate(dict(base, hardware={"workers": 0}))


def test_cores_honours_the_thread_variables(monkeypatch):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE",
                "MPI_LOCALNRANKS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert parallel.cores() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert parallel.cores() == 4  # two ranks on this node, not bound to cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun sets it per rank
    assert parallel.cores() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    assert parallel.cores() == 3
