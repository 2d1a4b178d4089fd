"""Missing optional dependencies name the extra to install; written files follow the umask."""

import os
import sys

import numpy as np
import pytest

import neuronet as nn


@pytest.mark.parametrize("module, extra, call", [
    ("onnx", "onnx", lambda m, p: nn.export_onnx(m, p / "m.onnx", (3,))),
    ("gguf", "gguf", lambda m, p: nn.export_gguf(m, p / "m.gguf")),
    ("torch", "torch", lambda m, p: nn.to_torch_state_dict(m)),
    ("matplotlib", "plot", lambda m, p: nn.plotting.plot_history({"loss": [1.0]}, p / "h.png")),
    ("matplotlib", "plot", lambda m, p: nn.plotting.save_images(p / "i.png", [np.zeros((2, 4))],
                                                               image_shape=(2, 2))),
])
def test_a_missing_optional_dependency_names_its_extra(monkeypatch, tmp_path, module, extra, call):
    model = nn.Sequential(nn.Dense(3, 2))
    model.build((3,))
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(ImportError, match=rf"needs {module}, which is not installed: "
                                          rf"pip install 'neuronet\[{extra}\]'"):
        call(model, tmp_path)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_saved_files_follow_the_umask(tmp_path, umask):
    model = nn.Sequential(nn.Dense(3, 2))
    model.build((3,))
    old = os.umask(umask)
    try:
        model.save(tmp_path / "m.nnet")
        np.save(tmp_path / "ref.npy", np.zeros(1))  # what an ordinary write gets
    finally:
        os.umask(old)
    mode = (tmp_path / "m.nnet").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask == (tmp_path / "ref.npy").stat().st_mode & 0o777


def test_import_neuronet_never_imports_torch():
    import subprocess

    code = ("import sys, numpy as np, neuronet as nn; model = nn.Sequential(nn.Dense(2, 2)); "
            "model.compile('adam', 'mse'); model.fit(np.ones((4, 2)), np.ones((4, 2)), verbose=0); "
            "print(sorted(m for m in ('torch', 'onnx', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
