"""Shared benchmark helpers.

Run the suite with:   pytest bench/ --benchmark-json=results/bench.json
(each bench file's docstring states its method; sizes honour GPHINT_BENCH_MB for quick runs).
"""
import hashlib
import os
import threading

import pytest

# numpy's OpenBLAS starts a thread pool at import whose idle threads poll on the other CPU
# (callgrind counted ~47M instructions of it in a 2-second guest run; `perf` ~5% of samples).
# Nothing gphint does calls BLAS, and on a 2-vCPU machine that poller is noise in every timing.
# Effective only before numpy's first import, which this conftest precedes.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

BENCH_MB = int(os.environ.get("GPHINT_BENCH_MB", "256"))


def pytest_configure(config):
    config.addinivalue_line("markers", "target: asserts a speed target from the issue")


class Spinner:
    """A second thread of this process that stays *running* on another CPU (hashlib releases the
    GIL on large buffers), so that every madvise that unmaps pages must send it a TLB-shootdown
    IPI -- the situation of a real multi-threaded host (REFERENCE §3)."""

    def __init__(self):
        self._stop = threading.Event()
        self._buf = os.urandom(1 << 20)
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            hashlib.sha256(self._buf).digest()

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


@pytest.fixture
def spinner():
    return Spinner
