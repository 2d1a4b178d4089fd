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
