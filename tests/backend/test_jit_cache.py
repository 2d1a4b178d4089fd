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



def test_every_compiled_helper_a_cached_kernel_imports_is_in_the_digest():
    """Numba keys a cached kernel by its own file: a backend file that cached kernels import compiled code
    or IR from (jitted functions, intrinsics, llvmlite IR helpers) must be in the helpers' digest, or an
    edit to it alone would leave those kernels running the old code from the cache."""
    import re
    from pathlib import Path

    from neuronet.backend import fastmath

    sources = {p.name: p.read_text() for p in Path(fastmath.__file__).parent.glob("*.py")}
    compiled = {name for name, text in sources.items()
                if "@intrinsic" in text or "njit(" in text or "from llvmlite import ir" in text}
    imported = set()
    for text in (t for t in sources.values() if "cache=True" in t):
        imported |= {f"{m}.py" for m in re.findall(r"^from \.(\w+) import", text, re.M)}
        for names in re.findall(r"^from \. import ([\w, ]+)", text, re.M):
            imported |= {f"{m.split(' as ')[0].strip()}.py" for m in names.split(",")}
    helpers = imported & compiled
    assert {"packed_gemm.py", "pair_rows.py", "vector_rows.py", "fastmath.py"} <= helpers
    assert helpers <= set(fastmath.KERNEL_HELPERS)
