"""The fixtures every test file shares (helpers that are not fixtures: helpers.py).  The mechanism
(compiled or pure Python) is chosen at import by GPHINT_PUREPYTHON; scripts/test runs the suite
once with each."""
import gc

import pytest

import gphint
from gphint import _mechanism
from gphint.faults import FileStore
from gphint.guest.allocator import BuddyAllocator
from gphint.guest.guest import Guest

from helpers import fault_service_or_skip, pattern


def pytest_addoption(parser):
    parser.addoption("--stress", action="store_true", default=False,
                     help="run the long concurrent stress tests (minutes)")


def pytest_report_header(config):
    return "gphint %s, mechanism: %s" % (gphint.__version__, _mechanism.NAME)


@pytest.fixture
def stress(request):
    return request.config.getoption("--stress")


@pytest.fixture
def compiled_only():
    if not _mechanism.COMPILED:
        pytest.skip("needs the compiled mechanism (this run: %s)" % _mechanism.WHY_PURE)


@pytest.fixture
def new_mem():
    """GuestMemory(size, **kw) factory: every memory it made is closed after the test."""
    made = []

    def make(size, **kw):
        made.append(gphint.GuestMemory(size, **kw))
        return made[-1]
    yield make
    for m in made:
        m.close()
    gc.collect()


@pytest.fixture
def mem(new_mem):
    return new_mem("32M")


@pytest.fixture
def mem_and_allocator(new_mem):
    """A 32 MiB guest memory (8192 pages) and its buddy allocator."""
    m = new_mem("32M")
    return m, BuddyAllocator(m, max_order=10)


@pytest.fixture
def new_guest():
    """Guest(size, **kw) factory: every guest it made is closed after the test."""
    made = []

    def make(size, **kw):
        made.append(Guest(size, **kw))
        return made[-1]
    yield make
    for g in made:
        g.close()


@pytest.fixture
def svc():
    """A discard-fault service (skips where there is none: pure-Python mechanism, no
    userfaultfd), stopped after the test."""
    s = fault_service_or_skip()
    yield s
    s.stop()


@pytest.fixture
def backing(tmp_path):
    """A 32 MiB backing file with page-distinct content, and its FileStore."""
    data = pattern(8192, seed=3)
    path = tmp_path / "backing.img"
    data.tofile(path)
    store = FileStore(path)
    yield data, store, path
    store.close()
