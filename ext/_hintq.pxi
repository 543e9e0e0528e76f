# The hint-queue seam: gphint.guest.hints.HintBuffer's batching, ext/hintq.c.
# The GIL is held throughout: it is what serialises calls on one queue (hintq.c is not
# thread-safe), and the only waits inside -- for a page the host or the fault thread holds --
# end within one C call of theirs, which never needs the GIL.
import numpy as _np
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_C_CONTIGUOUS, PyBUF_FORMAT
from libc.string cimport memcpy


cdef int _int64_pages(object obj, Py_buffer *view) except -1:
    """Borrow obj's buffer as a C-contiguous 1-D int64 array.  The raw buffer protocol, not a
    typed memoryview: a request is often a handful of pages, and building a memoryview object
    per call cost more than the queue's work (~2,500 instructions, measured with callgrind).
    Anything else raises ValueError; the caller (HintBuffer) converts and retries."""
    PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    cdef const char *f = view.format
    if f != NULL and (f[0] == b'@' or f[0] == b'=' or f[0] == b'<'):
        f += 1
    if (view.ndim != 1 or view.itemsize != 8 or f == NULL or (f[0] != b'l' and f[0] != b'q')
            or f[1] != 0):
        PyBuffer_Release(view)
        raise ValueError("pages must be a 1-D contiguous int64 array")
    return 0


cdef class HintQueue:
    """HintQueue(states, pending, next_table, ops_total, capacity): pending usage transitions.

    states: the memory's state table; pending: one byte per page (0xff = none), written by the
    queue; next_table: the 64-entry guest transition table; ops_total: a one-element uint64
    counter of the memory's usage-change calls; capacity: transitions per batch."""
    cdef gph_hintq q
    cdef object _tables   # keeps the buffers the C queue points into exported and alive

    def __cinit__(self, uint8_t[::1] states not None, uint8_t[::1] pending not None,
                  const uint8_t[::1] next_table not None, uint64_t[::1] ops_total not None,
                  Py_ssize_t capacity):
        if capacity < 1:
            raise ValueError("capacity must be >= 1, got %d" % capacity)
        if states.shape[0] == 0 or pending.shape[0] != states.shape[0]:
            raise ValueError("pending has %d entries for %d pages" % (pending.shape[0], states.shape[0]))
        if next_table.shape[0] != 64 or ops_total.shape[0] < 1:
            raise ValueError("next_table must have 64 entries and ops_total at least one")
        self._tables = (states, pending, next_table, ops_total)
        gph_hintq_init(&self.q, &states[0], states.shape[0], &next_table[0], &pending[0],
                       &ops_total[0], <size_t>capacity)

    def __dealloc__(self):
        gph_hintq_free(&self.q)

    def hint(self, pages, int usage):
        """Request pages -> usage (unique pages, 1-D contiguous int64).  Returns how many
        refused pages wait in take_refused() (0 normally)."""
        cdef gph_err err = _NO_ERR
        cdef long rc
        cdef Py_buffer view
        _int64_pages(pages, &view)
        try:
            rc = gph_hintq_hint(&self.q, <const int64_t *>view.buf, <size_t>view.shape[0], usage,
                                &err)
            if rc < 0:
                raise_mech(rc, &err, "hint queue")
        finally:
            PyBuffer_Release(&view)
        return self.q.nrefused

    def make_stable(self, pages):
        """The guest must own pages now: cancel their pending transitions, make the others
        STABLE through the state protocol.  Returns the pages found discarded (int64 array,
        not made stable: the caller reloads or drops them)."""
        cdef gph_err err = _NO_ERR
        cdef long rc
        cdef Py_buffer view, found
        _int64_pages(pages, &view)
        try:
            out = _np.empty(view.shape[0], dtype=_np.int64)
            if view.shape[0] == 0:
                return out
            _int64_pages(out, &found)
            try:
                rc = gph_hintq_make_stable(&self.q, <const int64_t *>view.buf, <size_t>view.shape[0],
                                           <int64_t *>found.buf, &err)
            finally:
                PyBuffer_Release(&found)
            if rc < 0:
                raise_mech(rc, &err, "hint queue")
        finally:
            PyBuffer_Release(&view)
        return out[:rc]

    def submit(self, bint whole_batches_only=False):
        """Submit pending transitions (all, or whole batches only).  Returns how many refused
        pages wait in take_refused()."""
        if gph_hintq_submit(&self.q, whole_batches_only) < 0:
            raise MemoryError("hint queue: out of memory")
        return self.q.nrefused

    def record_unused(self, int64_t[::1] since_ns not None, int64_t now_ns=-1):
        """From now on write, into since_ns (one int64 per page), the time in ns at which each
        page is made UNUSED, before its state byte changes.  now_ns < 0: CLOCK_MONOTONIC read
        at each transition (time.monotonic_ns's clock); otherwise that fixed time (see now_ns)."""
        if since_ns.shape[0] != self.q.npages:
            raise ValueError("since_ns has %d entries for %d pages" % (since_ns.shape[0], self.q.npages))
        self._tables = self._tables[:4] + (since_ns,)
        gph_hintq_record_unused(&self.q, &since_ns[0], now_ns)

    @property
    def now_ns(self):
        """The time record_unused writes (< 0: the clock is read at each transition)."""
        return self.q.now_ns

    @now_ns.setter
    def now_ns(self, int64_t value):
        self.q.now_ns = value

    def take_refused(self):
        """(pages, usages) the state table refused since the last call, as int64/uint8 arrays."""
        cdef size_t n = self.q.nrefused
        pages = _np.empty(n, dtype=_np.int64)
        usages = _np.empty(n, dtype=_np.uint8)
        cdef int64_t[::1] p = pages
        cdef uint8_t[::1] u = usages
        if n:
            memcpy(&p[0], self.q.refused, n * sizeof(int64_t))
            memcpy(&u[0], self.q.refused_usage, n)
        self.q.nrefused = 0
        return pages, usages

    @property
    def capacity(self):
        return self.q.capacity

    @property
    def npending(self):
        return self.q.npending

    @property
    def queued(self):
        """Queue entries, live or not (bounded: dead ones are compacted away)."""
        return self.q.qlen

    @property
    def hint_ops(self):
        return self.q.hint_ops

    @property
    def transitions(self):
        return self.q.transitions

    @property
    def cancelled(self):
        return self.q.cancelled
