"""nn.data.Dataset/DataLoader, and fit/evaluate/predict on sources of batches."""

import threading

import numpy as np
import pytest

import neuronet as nn


def _data(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 3, n)


def _model(seed=0):
    nn.manual_seed(seed)
    model = nn.Sequential(nn.Dense(4, 8, activation="tanh"), nn.Dense(8, 3))
    model.compile(nn.SGD(0.1), nn.CrossEntropyLoss(), metrics=["accuracy"])
    model.build((4,))
    return model


@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_covers_every_sample_once_per_epoch_in_aligned_batches(prefetch, shuffle):
    x, y = _data(23)
    loader = nn.data.DataLoader(nn.data.Dataset(x, y), batch_size=5, shuffle=shuffle, prefetch=prefetch,
                                seed=1)
    assert len(loader) == 5
    epochs = [list(loader) for _ in range(2)]
    for batches in epochs:
        assert [len(b[0]) for b in batches] == [5, 5, 5, 5, 3]
        xs = np.concatenate([b[0] for b in batches])
        order = np.argsort(xs[:, 0])
        np.testing.assert_array_equal(xs[order], x[np.argsort(x[:, 0])])
        for xb, yb in batches:  # rows stay paired with their labels
            for row, label in zip(xb, yb, strict=True):
                assert y[np.flatnonzero((x == row).all(1))[0]] == label
    same = all(np.array_equal(a[0], b[0]) for a, b in zip(*epochs, strict=True))
    assert same != shuffle  # a new order each epoch only when shuffling


def test_loader_drop_last_and_per_sample_datasets():
    class Squares:  # a PyTorch-style map dataset: one sample per index
        def __len__(self):
            return 7

        def __getitem__(self, i):
            return np.full(2, i, np.float32), i * i

    loader = nn.data.DataLoader(Squares(), batch_size=3, drop_last=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 2
    np.testing.assert_array_equal(batches[1][0], [[3, 3], [4, 4], [5, 5]])
    np.testing.assert_array_equal(batches[1][1], [9, 16, 25])


def test_loader_reads_memmap_files(tmp_path):
    x, y = _data(40)
    xm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=x.dtype, shape=x.shape)
    xm[:] = x
    xm.flush()
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    loader = nn.data.DataLoader(nn.data.Dataset(xm, y), batch_size=16, shuffle=True, seed=0)
    got = np.concatenate([b[0] for b in loader])
    assert type(got) is np.ndarray and not isinstance(got, np.memmap)
    np.testing.assert_array_equal(np.sort(got, axis=0), np.sort(x, axis=0))


def test_loader_thread_errors_reach_the_caller_and_early_exit_stops_the_thread():
    class Broken:
        def __len__(self):
            return 10

        def __getitem__(self, i):
            if i == 6:
                raise KeyError("sample 6 is missing")
            return np.zeros(2), 0

    with pytest.raises(KeyError, match="sample 6"):
        list(nn.data.DataLoader(Broken(), batch_size=2))
    before = threading.active_count()
    for _ in nn.data.DataLoader(nn.data.Dataset(*_data(100)), batch_size=2, prefetch=1):
        break
    assert threading.active_count() == before


def test_fit_from_a_loader_equals_fit_from_arrays():
    x, y = _data()
    a, b = _model(), _model()
    ha = a.fit(x, y, epochs=2, batch_size=10, shuffle=False, verbose=0)
    hb = b.fit(nn.data.DataLoader(nn.data.Dataset(x, y), batch_size=10), epochs=2, verbose=0)
    np.testing.assert_allclose(hb.history["loss"], ha.history["loss"], rtol=1e-6)
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    assert b.evaluate(nn.data.DataLoader(nn.data.Dataset(x, y), batch_size=7)) == \
        pytest.approx(a.evaluate(x, y))
    np.testing.assert_allclose(b.predict(nn.data.DataLoader(nn.data.Dataset(x), batch_size=9)),
                               a.predict(x), rtol=1e-6)


def test_fit_from_generators_lists_and_endless_generators():
    x, y = _data(40)
    ref = _model()
    ref.fit(x, y, epochs=1, batch_size=10, shuffle=False, verbose=0)
    gen = _model()
    gen.fit(((x[i:i + 10], y[i:i + 10]) for i in range(0, 40, 10)), verbose=0)
    np.testing.assert_array_equal(gen.flat_params, ref.flat_params)
    listed = _model()
    listed.fit([(x[i:i + 10], y[i:i + 10]) for i in range(0, 40, 10)], verbose=0)
    np.testing.assert_array_equal(listed.flat_params, ref.flat_params)

    def endless():
        while True:
            for i in range(0, 40, 10):
                yield x[i:i + 10], y[i:i + 10]

    forever = _model()
    hist = forever.fit(endless(), epochs=3, steps_per_epoch=2, verbose=0)
    assert len(hist.history["loss"]) == 3
    steps = _model()  # the same batches, epoch by epoch: each epoch continues where the last one stopped
    for epoch_batches in ([(x[:10], y[:10]), (x[10:20], y[10:20])], [(x[20:30], y[20:30]), (x[30:], y[30:])],
                          [(x[:10], y[:10]), (x[10:20], y[10:20])]):
        steps.fit(epoch_batches, verbose=0)
    np.testing.assert_allclose(forever.flat_params, steps.flat_params, rtol=1e-6)


def test_a_used_up_generator_and_bad_arguments_are_explained():
    x, y = _data(20)
    model = _model()
    with pytest.raises(nn.errors.ConfigError, match="produced no batches.*steps_per_epoch"):
        model.fit(((x[i:i + 5], y[i:i + 5]) for i in range(0, 20, 5)), epochs=2, verbose=0)
    with pytest.raises(nn.errors.ConfigError, match="y and sample_weight must be None"):
        model.fit(nn.data.DataLoader(nn.data.Dataset(x, y)), y, verbose=0)
    with pytest.raises(nn.errors.ConfigError, match="validation_split needs arrays"):
        model.fit(nn.data.DataLoader(nn.data.Dataset(x, y)), validation_split=0.2, verbose=0)
    with pytest.raises(nn.errors.ConfigError, match="steps_per_epoch must be an integer >= 1"):
        model.fit(x, y, steps_per_epoch=0, verbose=0)
    with pytest.raises(nn.errors.ConfigError, match="apply to a source of batches"):
        model.fit(x, y, steps_per_epoch=2, verbose=0)


def test_validation_data_may_be_a_loader():
    x, y = _data(30)
    model = _model()
    hist = model.fit(x, y, epochs=1, verbose=0, validation_data=nn.data.DataLoader(nn.data.Dataset(x, y)))
    assert hist.history["val_loss"][0] == pytest.approx(model.evaluate(x, y)["loss"])


def test_fit_from_a_torch_dataloader_on_both_backends():
    torch = pytest.importorskip("torch")
    x, y = _data(30)
    ref = _model()
    ref.fit(x, y, epochs=1, batch_size=10, shuffle=False, verbose=0)
    pairs = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    loader = torch.utils.data.DataLoader(pairs, batch_size=10)
    for backend in ("numpy", "torch"):
        model = _model().to(backend)
        model.fit(loader, verbose=0)
        params = model.ops.to_numpy(model.flat_params)
        np.testing.assert_allclose(params, ref.flat_params, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model.predict(loader), ref.predict(x), rtol=1e-5, atol=1e-6)


def test_predict_on_one_sample_names_the_batch_shape():
    model = _model()
    x, _ = _data(3)
    with pytest.raises(nn.errors.ShapeError, match=r"\(4,\), the dimensions of ONE.*\(N, 4\).*x\[None\]"):
        model.predict(x[0])
    assert model.predict(x[0][None]).shape == (1, 3)
