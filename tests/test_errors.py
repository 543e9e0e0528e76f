"""One error boundary: the mechanism (C through its seam, or the pure-Python twin) reports a
failure one way, gphint.errors.translate makes the error a caller sees, so the same bad input
gives the same error through every entry point and in both mechanisms."""
import errno

import numpy as np
import pytest

import gphint
from gphint import _mechanism
from gphint.errors import ClosedError, ConfigError, MechanismError, SyscallError, translate
from gphint.states import NEXT_TABLE, PageState
from helpers import PAGE

mech = _mechanism.mech


def _queue(mem):
    pending = np.full(mem.npages, 0xFF, dtype=np.uint8)
    return mech.HintQueue(mem._states, pending, NEXT_TABLE, np.zeros(1, dtype=np.uint64), 8)


ENTRY_POINTS = {
    "discard_pages": lambda m, p: mech.discard_pages(m.region, PAGE, p, 0, 1, -1),
    "set_content": lambda m, p: mech.set_content(m._states, p, 3),
    "make_stable": lambda m, p: mech.make_stable(m._states, p, np.empty(p.size, dtype=np.int64)),
    "resolve_lazy": lambda m, p: mech.resolve_lazy(m._states, p, False),
    "hint_queue.hint": lambda m, p: _queue(m).hint(p, int(PageState.UNUSED)),
    "hint_queue.make_stable": lambda m, p: _queue(m).make_stable(p),
    "GuestMemory.discard": lambda m, p: m.discard(p),
    "GuestMemory.discard_raw": lambda m, p: m.discard_raw(p),
    "GuestMemory.make_stable": lambda m, p: m.make_stable(p),
}


@pytest.mark.parametrize("bad", [-1, "npages", "far"])
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_bad_page_index_is_the_same_config_error_everywhere(mem, entry, bad):
    index = {"npages": mem.npages, "far": 10 * mem.npages}.get(bad, bad)
    mem.set_state([0, 1], PageState.UNUSED)
    before = mem.states.copy()
    with pytest.raises(ConfigError, match=r"^page index %d out of range \[0, %d\)$" % (index, mem.npages)):
        ENTRY_POINTS[entry](mem, np.array([1, index], dtype=np.int64))
    assert np.array_equal(mem.states, before)          # refused before anything changed


def test_translate_keeps_errno_and_the_mechanisms_report():
    low = MechanismError(errno.ERANGE, what="page index", first_page=9, npages=1, bound=4, context="x")
    e = translate(low)
    assert isinstance(e, ConfigError) and e.errno == errno.ERANGE and e.__cause__ is low
    e = translate(MechanismError(errno.EBADF, syscall="pread", first_page=3, npages=2, context="reload"))
    assert isinstance(e, SyscallError) and e.syscall == "pread" and e.errno == errno.EBADF
    assert str(e) == "[Errno 9] pread failed: Bad file descriptor (reload: pages 3..4)"
    e = translate(MechanismError(errno.ENOENT, what="region", first_page=7))
    assert isinstance(e, ClosedError) and "region 7" in str(e) and e.errno == errno.ENOENT
    e = translate(MechanismError(errno.ENOMEM, context="hint queue"))
    assert isinstance(e, MemoryError) and str(e) == "hint queue: out of memory"
