"""Shared fixtures.  The mechanism (compiled or pure Python) is chosen at import by
GPHINT_PUREPYTHON; scripts/test runs the suite once with each."""
import gc
import mmap

import numpy as np
import pytest

import gphint
from gphint import _mechanism, caps


def pytest_addoption(parser):
    parser.addoption("--stress", action="store_true", default=False,
                     help="run the long concurrent stress tests (minutes)")


def pytest_report_header(config):
    return "gphint %s, mechanism: %s" % (gphint.__version__, _mechanism.NAME)


@pytest.fixture
def stress(request):
    return request.config.getoption("--stress")


@pytest.fixture
def mem():
    m = gphint.GuestMemory("32M")
    yield m
    m.close()
    gc.collect()


@pytest.fixture
def compiled_only():
    if not _mechanism.COMPILED:
        pytest.skip("needs the compiled mechanism (this run: %s)" % _mechanism.WHY_PURE)


PAGE = mmap.PAGESIZE


def pattern(npages, seed=0):
    """Deterministic, page-distinct content: page i is filled from (seed, i)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(npages, PAGE), dtype=np.uint8)
