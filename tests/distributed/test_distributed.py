"""nn.distributed end to end: 2 ranks under mpiexec and torchrun on loopback, every process cleaned up.

Each job runs tests/distributed/train_script.py in its own process group with a wall-clock limit, and
the whole group is killed afterwards whatever happened.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).with_name("train_script.py")
SRC = Path(__file__).resolve().parents[2] / "src"
LIMIT = 120  # seconds any job may take before the test fails (and kills it)


def _have_mpi() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return shutil.which("mpiexec") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job(kind: str, ranks: int, out: Path, mode: str, batch: int) -> list[str]:
    """The command line running the script on ``ranks`` ranks with mpiexec or torchrun (loopback)."""
    args = [str(SCRIPT), str(out), mode, str(batch)]
    if kind == "mpi":
        return ["mpiexec", "-n", str(ranks), sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
            "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "--max-restarts", "0", *args]


NEEDS_MPI = pytest.mark.skipif(not _have_mpi(), reason="needs mpi4py and mpiexec")
LAUNCHERS = [pytest.param("mpi", marks=NEEDS_MPI), "torch"]


def run_job(cmd: list[str], out: Path, timeout_env: float = 60) -> tuple[int, str, float]:
    """Run ``cmd`` in a new session; return (status, output, seconds). The session is always killed."""
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               NEURONET_DIST_TIMEOUT=str(timeout_env), OMP_NUM_THREADS="1")
    for key in ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "PMI_RANK", "PMIX_RANK"):
        env.pop(key, None)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, cwd=out)
    try:
        text, _ = proc.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        text = "(timed out)"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return (proc.returncode if text != "(timed out)" else None), text, time.monotonic() - start


def _params(folder: Path, rank: int) -> dict:
    with np.load(folder / f"params_{rank}.npz") as f:
        return dict(f)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One plain process with batch 64: the reference."""
    out = tmp_path_factory.mktemp("single")
    status, text, _ = run_job([sys.executable, str(SCRIPT), str(out), "fit", "64"], out)
    assert status == 0, text
    return out


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_two_ranks_equal_one_process_with_the_global_batch(kind, single, tmp_path):
    status, text, _ = run_job(_job(kind, 2, tmp_path, "fit", 32), tmp_path)
    assert status == 0, text
    ref, r0, r1 = _params(single, 0), _params(tmp_path, 0), _params(tmp_path, 1)
    for key in ref:
        np.testing.assert_array_equal(r1[key], r0[key], err_msg=f"{key} differs across ranks")
        np.testing.assert_allclose(r0[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
    history = json.loads((tmp_path / "history.json").read_text())
    want = json.loads((single / "history.json").read_text())
    np.testing.assert_allclose(history["loss"], want["loss"], rtol=1e-5)
    assert history["accuracy"] == want["accuracy"]  # reduced over both ranks' samples
    evaluated = json.loads((tmp_path / "evaluate.json").read_text())
    assert evaluated == pytest.approx(json.loads((single / "evaluate.json").read_text()), rel=1e-5)


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_batchnorm_buffers_follow_rank_0(kind, tmp_path):
    status, text, _ = run_job(_job(kind, 2, tmp_path, "bn", 32), tmp_path)
    assert status == 0, text
    r0, r1 = _params(tmp_path, 0), _params(tmp_path, 1)
    for key in r0:
        np.testing.assert_array_equal(r1[key], r0[key], err_msg=key)


@pytest.mark.parametrize("mode", ["kill", "hang"])
@pytest.mark.parametrize("kind", LAUNCHERS)
def test_a_rank_that_dies_or_hangs_ends_the_job(kind, mode, tmp_path):
    status, text, _ = run_job(_job(kind, 2, tmp_path, mode, 32), tmp_path, timeout_env=5)
    assert status is not None, f"the job hung for {LIMIT} s:\n{text}"
    assert status != 0, text
    assert not (tmp_path / "params_0.npz").exists()
    if mode == "hang":
        assert "got no answer from the other ranks" in text


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_mismatched_architectures_name_the_parameter(kind, tmp_path):
    status, text, _ = run_job(_job(kind, 2, tmp_path, "mismatch", 32), tmp_path)
    assert status not in (0, None), text
    assert "ConfigError" in text and "'0.weight' of shape (16, 12)" in text


@NEEDS_MPI
def test_checkpoint_of_two_ranks_resumes_on_three(single, tmp_path):
    first = tmp_path / "two"
    first.mkdir()
    status, text, _ = run_job(_job("mpi", 2, first, "fit", 32), first)
    assert status == 0, text
    second = tmp_path / "three"
    second.mkdir()
    shutil.copy(first / "ckpt.nnet", second / "ckpt.nnet")
    status, text, _ = run_job(_job("mpi", 3, second, "resume", 16), second)
    assert status == 0, text
    ranks = [_params(second, r) for r in range(3)]
    for key in ranks[0]:
        for other in ranks[1:]:
            np.testing.assert_array_equal(other[key], ranks[0][key], err_msg=key)
    history = json.loads((second / "history.json").read_text())
    assert len(history["loss"]) == 1  # epoch 3 only: the checkpoint's position was kept
    assert not np.allclose(ranks[0]["0.weight"], _params(first, 0)["0.weight"])


@NEEDS_MPI
def test_cli_train_under_mpiexec_trains_distributed(tmp_path):
    import yaml

    dense = {"type": "Dense", "in_features": 64, "out_features": 16, "activation": "relu"}
    cfg = {"model": {"layers": [{"type": "Flatten"}, dense,
                                {"type": "Dense", "in_features": 16, "out_features": 10}]},
           "training": {"epochs": 1, "batch_size": 16, "seed": 3},
           "dataset": {"source": "digits", "splits": {"test": 0.2}},
           "hardware": {"device": "cpu", "workers": 2}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    cli = [sys.executable, "-m", "neuronet.cli.main", "train", "tiny.yaml", "-o", "out", "-q"]
    status, text, _ = run_job(["mpiexec", "-n", "2", *cli], tmp_path)
    assert status == 0, text
    assert text.count("trained 1 epochs") == 1, text  # rank 0 alone reports and writes
    assert (tmp_path / "out" / "model.nnet").exists()


@NEEDS_MPI
def test_three_ranks_with_an_uneven_last_batch_equal_one_process(tmp_path):
    """256 samples, 3 ranks x 40: the last global batch of 16 splits 6/5/5, weighted by sample count."""
    ref, out = tmp_path / "one", tmp_path / "three"
    ref.mkdir()
    out.mkdir()
    status, text, _ = run_job([sys.executable, str(SCRIPT), str(ref), "fit", "120"], ref)
    assert status == 0, text
    status, text, _ = run_job(_job("mpi", 3, out, "fit", 40), out)
    assert status == 0, text
    want = _params(ref, 0)
    for rank in range(3):
        got = _params(out, rank)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=f"{rank}: {key}")
