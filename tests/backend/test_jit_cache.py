"""Cached kernels are dropped when a helper file they inline changes, and kept otherwise."""

from neuronet.backend.jit_cache import STAMP, drop_stale_caches


def test_cached_kernels_are_dropped_only_when_a_helper_changes(tmp_path):
    (tmp_path / "helper.py").write_text("A = 1\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    kernels = [cache / "kernels.softmax-10.py311.nbi", cache / "kernels.softmax-10.py311.1.nbc"]
    other = cache / "kernels.cpython-311.pyc"

    def fill():
        for path in [*kernels, other]:
            path.write_bytes(b"x")

    fill()
    drop_stale_caches(tmp_path, ["helper.py"])  # no stamp yet: the cache's provenance is unknown
    assert not any(p.exists() for p in kernels) and other.exists() and (cache / STAMP).exists()
    fill()
    drop_stale_caches(tmp_path, ["helper.py"])  # unchanged helper: the cache stays
    assert all(p.exists() for p in kernels)
    (tmp_path / "helper.py").write_text("A = 2\n")
    drop_stale_caches(tmp_path, ["helper.py"])
    assert not any(p.exists() for p in kernels) and other.exists()


def test_a_read_only_cache_is_left_alone(tmp_path):
    (tmp_path / "helper.py").write_text("A = 1\n")
    (tmp_path / "__pycache__").write_text("not a folder")  # every write below fails
    drop_stale_caches(tmp_path, ["helper.py"])


def test_a_cold_kernel_cache_is_announced_once_on_stderr(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    script = ("import numpy as np, neuronet as nn; "
              "nn.Sequential(nn.Dense(3, 2, activation='relu')).predict(np.ones((2, 3), np.float32))")
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                           timeout=600) for _ in range(2)]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr + runs[1].stderr
    assert runs[0].stderr.count("compiling kernels on first use (first run only") == 1
    assert "compiling kernels" not in runs[1].stderr
