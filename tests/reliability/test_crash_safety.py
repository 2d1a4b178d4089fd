"""Crash safety: a writer SIGKILLed at random points leaves the old or the new model, never a mix, and the
next save removes the temp files it left. Durable writes: the file and its folder are fsynced."""

import os
import signal
import sys
import time

import numpy as np
import pytest

import neuronet as nn
from neuronet._atomic import atomic_path, remove_stale_temps

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin",
                                reason="needs fork (POSIX)")


def _model(seed, width=600):
    nn.manual_seed(seed)
    model = nn.Sequential(nn.Dense(width, width), nn.Dense(width, 4))  # 600: 1.4 MB, a write takes ms
    model.compile(nn.Adam(1e-3), "cross_entropy")
    model.build((width,))
    return model


def _temps(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _kill_during(work, rounds, seed, longest=0.04):
    """Fork ``rounds`` children running ``work(ready)`` forever; SIGKILL each a random delay after it
    calls ``ready()`` (once its loop is warm, so that on a loaded machine the kill still lands in it).

    Yields after each kill (the child is reaped). Every child is killed and reaped, even on failure.
    """
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: signal that it runs, then save until killed
            try:
                os.close(r)
                work(lambda fd=w: os.write(fd, b"x"))
            finally:
                os._exit(0)
        try:
            os.close(w)
            os.read(r, 1)
            os.close(r)
            time.sleep(rng.uniform(0.0, longest))
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        yield


def test_sigkill_during_save_leaves_old_or_new_model(tmp_path):
    path = tmp_path / "m.nnet"
    a, b = _model(1), _model(2)
    a.save(path)
    candidates = [np.array(a.flat_params), np.array(b.flat_params)]
    kills_mid_write = 0

    def save_forever(ready):
        b.save(path)
        ready()
        while True:
            a.save(path)
            b.save(path)

    for _ in _kill_during(save_forever, rounds=20, seed=0):
        kills_mid_write += bool(_temps(tmp_path))
        loaded = nn.load(path)  # complete: the checksum and every size check pass
        assert any(np.array_equal(loaded.flat_params, c) for c in candidates)
        a.save(path)  # the next save removes what the killed writer left
        assert _temps(tmp_path) == []
    assert kills_mid_write >= 1, "no kill landed inside a write: the test did not exercise the window"


def test_sigkill_during_model_checkpoint(tmp_path):
    path = tmp_path / "ckpt.nnet"
    x = np.random.default_rng(0).standard_normal((64, 200)).astype(np.float32)
    y = np.arange(64) % 4
    model = _model(3, width=200)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)  # compiles the kernels here, not in every child
    model.save(path)

    class Ready(nn.Callback):  # after the first checkpoint is written: the loop is warm
        def __init__(self, ready):
            self.ready = ready

        def on_batch_end(self, batch, logs=None):
            if self.ready is not None:
                self.ready()
                self.ready = None

    def train_forever(ready):
        model.fit(x, y, epochs=10**6, batch_size=16, verbose=0, initial_epoch=model.epoch,
                  callbacks=[nn.ModelCheckpoint(str(path), save_freq=1), Ready(ready)])

    iterations = set()
    for _ in _kill_during(train_forever, rounds=20, seed=1, longest=0.2):
        loaded = nn.load(path)  # complete, and its position agrees with its optimizer (4 batches an epoch)
        iterations.add(loaded.optimizer.iterations)
        step = loaded.position["step"] if loaded.position else 0
        assert loaded.optimizer.iterations == 4 * loaded.epoch + step
        loaded.save(path)
        assert _temps(tmp_path) == []
    assert len(iterations) > 1  # the children did train and checkpoint


def test_failed_write_leaves_nothing_and_stale_temps_are_removed(tmp_path):
    target = tmp_path / "out.bin"
    stale = tmp_path / ".out.bin.abc123.tmp"
    stale.write_bytes(b"half a file")
    other = tmp_path / ".other.bin.abc123.tmp"  # another target's temp file is not touched
    other.write_bytes(b"x")
    with pytest.raises(RuntimeError), atomic_path(target, "test") as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")
    assert not target.exists() and stale.exists()
    with atomic_path(target, "test") as tmp:
        tmp.write_bytes(b"complete")
    assert target.read_bytes() == b"complete"
    assert _temps(tmp_path) == [".other.bin.abc123.tmp"]
    assert remove_stale_temps(tmp_path / "[weird]*.bin") == []


def test_save_fsyncs_the_file_and_its_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    _model(4).save(tmp_path / "m.nnet")
    if os.path.exists("/proc/self/fd"):
        assert any(str(p).endswith(".tmp") for p in synced) and str(tmp_path) in synced
    else:
        assert len(synced) == 2
