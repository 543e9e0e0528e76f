# cython: language_level=3
"""gphint._mech -- the only Cython: buffers in, GIL released, -errno -> gphint.errors.translate.

No policy lives here: Python (gphint.memory) validates input and decides what to discard;
gphint._fallback implements the same names in pure Python.
"""
from libc.stdint cimport uint8_t, int64_t, uint64_t
from gphint_c cimport *

COMPILED = True

cdef extern from *:
    """
    #ifndef GPHINT_VERSION
    #define GPHINT_VERSION "unknown"
    #endif
    static const char *GPHINT_VERSION_STR = GPHINT_VERSION;
    """
    const char *GPHINT_VERSION_STR

__version__ = (<bytes>GPHINT_VERSION_STR).decode()


cdef gph_err _NO_ERR       # what a C call's report says until it fills it in
_NO_ERR.what = NULL
_NO_ERR.syscall = NULL
_NO_ERR.first_page = -1
_NO_ERR.npages = 0
_NO_ERR.bound = -1


cdef _text(const char *s):
    return None if s == NULL else (<bytes>s).decode()


cdef int raise_mech(long rc, const gph_err *err, context) except -1:
    """The seam's one way to fail: the C report (-errno and *err) as gphint.errors.MechanismError,
    raised as the error gphint.errors.translate makes of it -- the same one the pure-Python
    twin raises for the same input.  (Translated here rather than by a wrapper around every
    entry point: the hint queue's calls are counted in instructions.)"""
    from gphint.errors import mechanism_error
    raise mechanism_error(-rc, _text(err.what), _text(err.syscall), err.first_page, err.npages,
                          err.bound, context)


def discard_pages(unsigned char[::1] region not None, size_t page_size, const int64_t[::1] pages,
                  int advice, int submit, int pidfd):
    """Discard the pages whose indices are in pages.  Returns (pages, calls, runs, resident,
    lazy): system calls made, runs advised, pages of them resident just before (mincore), pages
    left lazily freed (MADV_FREE)."""
    cdef gph_discard_stats st
    cdef gph_err err = _NO_ERR
    cdef long rc
    cdef int64_t npages = region.shape[0] // page_size
    cdef size_t n = pages.shape[0]
    st.calls = st.runs = st.pages = st.resident = st.lazy = 0
    if n == 0:
        return (0, 0, 0, 0, 0)
    with nogil:
        rc = gph_discard_pages(&region[0], page_size, npages, &pages[0], n, advice, submit,
                               pidfd, &st, &err)
    if rc < 0:
        raise_mech(rc, &err, "discard")
    return (rc, st.calls, st.runs, st.resident, st.lazy)


def discard_runs(unsigned char[::1] region not None, size_t page_size, const int64_t[:, ::1] runs,
                 int advice, int submit, int pidfd):
    """Discard (first_page, npages) runs.  Returns (pages, calls, runs, resident, lazy)."""
    cdef gph_discard_stats st
    cdef gph_err err = _NO_ERR
    cdef long rc
    cdef int64_t npages = region.shape[0] // page_size
    cdef size_t n = runs.shape[0]
    st.calls = st.runs = st.pages = st.resident = st.lazy = 0
    if n == 0:
        return (0, 0, 0, 0, 0)
    if runs.shape[1] != 2:
        raise ValueError("runs must have shape (n, 2), got (%d, %d)" % (runs.shape[0], runs.shape[1]))
    with nogil:
        rc = gph_discard_runs(&region[0], page_size, npages, &runs[0, 0], n, advice, submit,
                              pidfd, &st, &err)
    if rc < 0:
        raise_mech(rc, &err, "discard")
    return (rc, st.calls, st.runs, st.resident, st.lazy)


def set_usage(uint8_t[::1] states not None, const int64_t[::1] pages, int usage,
              const uint8_t[::1] next_table not None):
    """Atomically move pages to a usage state.  Returns (n, -1, 0) on success, or
    (-errno, index into pages, old state byte) when the transition table refuses one."""
    cdef gph_err err = _NO_ERR
    cdef uint8_t old = 0
    cdef long rc
    cdef size_t n = pages.shape[0]
    if next_table.shape[0] != 64:
        raise ValueError("next_table must have 64 entries")
    if n == 0:
        return (0, -1, 0)
    with nogil:
        rc = gph_set_usage(&states[0], states.shape[0], &pages[0], n, <uint8_t>usage,
                           &next_table[0], &old, &err)
    if rc < 0:
        return (rc, err.first_page, old)
    return (rc, -1, 0)


def set_content(uint8_t[::1] states not None, const int64_t[::1] pages, int content):
    cdef gph_err err = _NO_ERR
    cdef long rc
    cdef size_t n = pages.shape[0]
    if n == 0:
        return 0
    with nogil:
        rc = gph_set_content(&states[0], states.shape[0], &pages[0], n, <uint8_t>content, &err)
    if rc < 0:
        raise_mech(rc, &err, "set_content")
    return rc


# mincore of a region this small (64 MiB: ~0.3 ms here) runs with the GIL held.  Dropping the
# GIL costs a caller the wait to take it back, and behind a few dozen threads running Python
# (a fleet's busy guests) that wait is the interpreter's switch interval, 5 ms, per call:
# measured on this 2-core VM, one 16 MiB residency call took 0.01 ms alone and 3.9 ms beside 32
# busy threads -- a host sampling 512 guests waited ~2 s per sample.  mincore(2) never waits
# for a page fault (it reports, it does not touch), so holding the GIL cannot deadlock with
# the fault thread.
RESIDENCY_GIL_HELD_PAGES = 16384


def residency(unsigned char[::1] region not None, size_t page_size, uint8_t[::1] vec not None):
    """Fill vec (one byte per page, 1 = resident) via mincore; return the resident count."""
    cdef gph_err err = _NO_ERR
    cdef long rc
    cdef int64_t npages = region.shape[0] // page_size
    if vec.shape[0] < npages:
        raise ValueError("vec has %d entries for %d pages" % (vec.shape[0], npages))
    if npages == 0:
        return 0
    if npages <= RESIDENCY_GIL_HELD_PAGES:
        rc = gph_residency(&region[0], page_size, npages, &vec[0], &err)
    else:
        with nogil:
            rc = gph_residency(&region[0], page_size, npages, &vec[0], &err)
    if rc < 0:
        raise_mech(rc, &err, "residency")
    return rc


def residency_track(unsigned char[::1] region not None, size_t page_size, uint8_t[::1] vec not None,
                    uint8_t[::1] resident not None, int64_t[::1] since_tick not None,
                    uint8_t[::1] ever not None, int64_t tick):
    """The host's residency sample of one guest (ext/hostops.c, gph_residency_track): mincore
    into vec, then resident, since_tick (where a page arrived) and ever updated in one pass.
    Returns the resident count."""
    cdef gph_err err = _NO_ERR
    cdef long rc
    cdef int64_t npages = region.shape[0] // page_size
    if vec.shape[0] < npages or resident.shape[0] < npages or since_tick.shape[0] < npages or \
            ever.shape[0] < npages:
        raise ValueError("residency arrays shorter than the %d pages of the region" % npages)
    if npages == 0:
        return 0
    with nogil:
        rc = gph_residency_track(&region[0], page_size, npages, &vec[0], &resident[0], &since_tick[0],
                                 &ever[0], tick, &err)
    if rc < 0:
        raise_mech(rc, &err, "residency")
    return rc


NEXT_RESOLVE = GPH_NEXT_RESOLVE   # gphint.states.RESOLVE must say the same
CONTENT_LAZY = GPH_CONTENT_LAZY


def frames_register(uint8_t[::1] states not None, unsigned char[::1] region not None, size_t page_size):
    """Tell the guest's setters where the frames of this state table are (lazily freed pages
    are resolved against the kernel: ext/lazyfree.c)."""
    cdef long rc = gph_frames_register(&states[0], states.shape[0], &region[0], page_size)
    if rc < 0:
        raise MemoryError("registering the frames of %d pages" % states.shape[0])


def frames_unregister(uint8_t[::1] states not None):
    gph_frames_unregister(&states[0])


def lazy_stats(uint8_t[::1] states not None):
    """(reused, reclaimed): lazily freed pages the guest took back present / found reclaimed."""
    cdef gph_lazy_stats st
    if gph_frames_stats(&states[0], &st) < 0:
        return (0, 0)
    return (st.reused, st.reclaimed)


def resolve_lazy(uint8_t[::1] states not None, const int64_t[::1] pages, bint keep_present):
    """Resolve lazily freed pages against the kernel; returns pages resolved."""
    cdef gph_err err = _NO_ERR
    cdef long rc
    cdef size_t n = pages.shape[0]
    if n == 0:
        return 0
    with nogil:
        rc = gph_resolve_lazy(&states[0], states.shape[0], &pages[0], n, keep_present, &err)
    if rc < 0:
        raise_mech(rc, &err, "resolve_lazy")
    return rc


include "_faults.pxi"
include "_hintq.pxi"
