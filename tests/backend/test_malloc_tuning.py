"""The torch backend raises glibc's malloc thresholds once per process, unless the user set them."""

import os
import platform
import subprocess
import sys

import pytest

CHECK = "from neuronet.backend import malloc_tuning as m; print(m.keep_freed_memory(), m.keep_freed_memory())"
glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="glibc's mallopt")


def _run(env):
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@glibc
def test_thresholds_are_raised_once():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    assert _run(env) == ["True", "True"]


@glibc
def test_the_users_own_malloc_settings_win():
    assert _run(dict(os.environ, MALLOC_TRIM_THRESHOLD_="131072")) == ["False", "False"]


def test_the_torch_backend_on_the_cpu_asks_for_it():
    pytest.importorskip("torch")
    code = ("from neuronet.backend import malloc_tuning as m; import neuronet as nn; "
            "calls = m.keep_freed_memory.cache_info; assert calls().currsize == 0; "
            "nn.Sequential(nn.Dense(2, 2)).to('torch'); print(calls().currsize == 1)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"]
