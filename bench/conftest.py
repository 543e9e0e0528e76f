"""Shared benchmark helpers.

Run the suite with:   pytest bench/ --benchmark-json=results/bench.json
(each bench file's docstring states its method; sizes honour GPHINT_BENCH_MB for quick runs).
"""
import os
import tempfile

import pytest

# numpy's OpenBLAS starts a thread pool at import whose idle threads poll on the other CPU
# (callgrind counted ~47M instructions of it in a 2-second guest run; `perf` ~5% of samples).
# Nothing gphint does calls BLAS, and on a 2-vCPU machine that poller is noise in every timing.
# Effective only before numpy's first import, which this conftest precedes.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402  (after the OPENBLAS setting above)

import gphint  # noqa: E402
from gphint import PageState  # noqa: E402
from benchlib import BENCH_MB, Spinner, retouch  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "target: asserts a speed target against a floor measured in the same test")


@pytest.fixture
def spinner():
    return Spinner


# --- the strategy benchmarks' guest: one GuestMemory of BENCH_MB per bench file -------------
@pytest.fixture(scope="module")
def mem():
    """One GuestMemory of BENCH_MB, every page touched (the host faults taken before any timing)."""
    m = gphint.GuestMemory("%dM" % BENCH_MB, name="bench")
    m.frames[:] = 1                       # prewarm: take the host faults before any timing
    yield m
    m.close()


@pytest.fixture(scope="module")
def half(mem):
    rng = np.random.default_rng(42)
    return np.sort(rng.choice(mem.npages, mem.npages // 2, replace=False)).astype(np.int64)


@pytest.fixture
def served(mem):
    """mem registered with a fault service and a backing file holding its content."""
    from gphint.faults import FaultService, FileStore
    fd, path = tempfile.mkstemp(prefix="gphint-bench-")
    os.close(fd)
    with open(path, "wb") as f:
        f.write(b"\x01" * mem.size_bytes)
    # start from nothing resident, so that the service sees (and records) every first touch
    mem.set_state(slice(None), PageState.UNUSED)
    mem.discard(slice(None))
    svc = FaultService()
    svc.register(mem)
    store = FileStore(path)
    yield svc, store
    retouch(mem)                   # everything back before its store and service go away
    mem.clear_backing(slice(None))
    svc.unregister(mem)
    svc.stop()
    store.close()
    os.unlink(path)
