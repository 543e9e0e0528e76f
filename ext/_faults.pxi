# The discard-fault service seam: buffers in, GIL released, failures through raise_mech (_mech.pyx).
# No policy here: gphint.faults decides what to register, discard and swap; ext/faults.c serves.
from libc.stdint cimport int32_t
from libc.errno cimport ENOMEM, ENOENT, EBADF

FAULT_STAT_FIELDS = ("faults", "discard_faults", "zero_fills", "file_reloads", "swap_ins",
                     "pages_served", "bytes_served", "fault_around_hits", "lost_pages", "eexist",
                     "ring_overflows", "refault_loops", "lazy_refaults", "ring_stale")
SVC_USER_MODE_ONLY = GPH_SVC_USER_MODE_ONLY
SVC_DIRTY = GPH_SVC_DIRTY
SVC_MOVE = GPH_SVC_MOVE
LOCKING_HOLDBITS = GPH_LOCKING_HOLDBITS
LOCKING_HASHED = GPH_LOCKING_HASHED


def page_lock_taken(const uint8_t[::1] states not None, int64_t page):
    """Tests: is the hashed lock of states[page] held by any thread (ext/statelock.h)."""
    if page < 0 or page >= states.shape[0]:
        raise IndexError("page index %d outside [0, %d)" % (page, states.shape[0]))
    return gph_statelock_taken(&states[page]) != 0


def page_lock_hold(const uint8_t[::1] states not None, int64_t page, double seconds):
    """Tests: hold the hashed lock of states[page] for seconds, GIL released, as a host or fault
    thread would across one C call; the calling thread waits for it like any guest.  Returns the
    page's state byte when the lock was taken and when it was released."""
    if page < 0 or page >= states.shape[0]:
        raise IndexError("page index %d outside [0, %d)" % (page, states.shape[0]))
    cdef const uint8_t *b = &states[page]
    cdef uint64_t ns = <uint64_t>(seconds * 1e9)
    cdef uint8_t first = 0, last = 0
    with nogil:
        gph_statelock_hold_test(b, ns, &first, &last)
    return first, last
MAX_STORES = GPH_MAX_STORES


def store_set(int32_t store_id, int fd, uint8_t[::1] slot_used=None, uint64_t[::1] digest=None):
    """Enter a store in the process-wide table the fault thread reads (slot_used: swap stores;
    digest: a file store's content record, one entry per file page)."""
    cdef uint8_t *used = NULL
    cdef int64_t nslots = 0
    cdef const uint64_t *dg = NULL
    cdef int64_t ndg = 0
    if slot_used is not None and slot_used.shape[0] > 0:
        used = &slot_used[0]
        nslots = slot_used.shape[0]
    if digest is not None and digest.shape[0] > 0:
        dg = &digest[0]
        ndg = digest.shape[0]
    rc = gph_store_set(store_id, fd, used, nslots, dg, ndg)
    if rc == -ENOMEM:
        raise MemoryError("store table: no memory for store id %d" % store_id)
    if rc < 0:
        raise ValueError("store id %d out of range [1, %d)" % (store_id, GPH_MAX_STORES))


def store_set_digests(int32_t store_id, uint64_t[::1] digest not None):
    """Hand the fault thread a store's grown content record (keep the old one mapped)."""
    if digest.shape[0] == 0 or gph_store_set_digests(store_id, &digest[0], digest.shape[0]) < 0:
        raise ValueError("store %d has no content record to replace" % store_id)


def page_digests(const unsigned char[:, ::1] frames not None, const int64_t[::1] pages=None):
    """uint64 content digest of each row of frames (pages: only those rows), never 0."""
    import numpy
    cdef size_t n = frames.shape[0] if pages is None else pages.shape[0]
    out = numpy.empty(n, dtype=numpy.uint64)
    cdef uint64_t[::1] o = out
    cdef const int64_t *pp = NULL if pages is None or n == 0 else &pages[0]
    cdef long rc
    if n == 0:
        return out
    with nogil:
        rc = gph_page_digests(&frames[0, 0], frames.shape[1], frames.shape[0], pp, n, &o[0])
    if rc < 0:
        raise ValueError("page_digests: a page index is out of range [0, %d)" % frames.shape[0])
    return out


def store_clear(int32_t store_id):
    gph_store_clear(store_id)


def make_stable(uint8_t[::1] states not None, const int64_t[::1] pages, int64_t[::1] out not None):
    """Make pages STABLE; discarded VOLATILE pages go to out.  Returns how many were."""
    cdef gph_err err = _NO_ERR
    cdef long rc
    cdef size_t n = pages.shape[0]
    if n == 0:
        return 0
    if out.shape[0] < <Py_ssize_t>n:
        raise ValueError("out has %d entries for %d pages" % (out.shape[0], n))
    with nogil:
        rc = gph_make_stable(&states[0], states.shape[0], &pages[0], n, &out[0], &err)
    if rc < 0:
        raise_mech(rc, &err, "make_stable")
    return rc


def dirty_scan(unsigned char[::1] region not None, size_t page_size, int64_t first, int64_t n,
               bint clear, uint8_t[::1] written not None):
    """written[i] = page first+i written since last cleared (clear: test-and-clear)."""
    cdef gph_err err = _NO_ERR
    cdef long rc
    if n <= 0:
        return 0
    if written.shape[0] < n or first < 0 or (first + n) * <int64_t>page_size > region.shape[0]:
        raise ValueError("dirty_scan: pages %d..%d out of range" % (first, first + n - 1))
    with nogil:
        rc = gph_dirty_scan(&region[0], page_size, first, n, clear, &written[0], &err)
    if rc < 0:
        raise_mech(rc, &err, "dirty bits")
    return rc


def _page_io(bint to_file, unsigned char[::1] region, size_t page_size, const int64_t[::1] pages,
             int fd, const int64_t[::1] offsets, bint force_bounce):
    cdef gph_err err = _NO_ERR
    cdef long rc
    cdef int64_t bounced = 0
    cdef size_t n = pages.shape[0]
    cdef int64_t npages = region.shape[0] // page_size
    if n == 0:
        return (0, 0)
    if offsets.shape[0] != <Py_ssize_t>n:
        raise ValueError("%d offsets for %d pages" % (offsets.shape[0], n))
    with nogil:
        if to_file:
            rc = gph_write_to_file(&region[0], page_size, npages, &pages[0], n, fd, &offsets[0],
                                   force_bounce, &bounced, &err)
        else:
            rc = gph_fill_from_file(&region[0], page_size, npages, &pages[0], n, fd, &offsets[0],
                                    force_bounce, &bounced, &err)
    if rc < 0:
        raise_mech(rc, &err, "write_to_file" if to_file else "fill_from_file")
    return (rc, bounced)


def fill_from_file(region, size_t page_size, pages, int fd, offsets, bint force_bounce=False):
    """Read whole pages of fd at offsets into frames pages.  Returns (pages, bounced)."""
    return _page_io(False, region, page_size, pages, fd, offsets, force_bounce)


def write_to_file(region, size_t page_size, pages, int fd, offsets, bint force_bounce=False):
    """Write frames pages to fd at offsets.  Returns (pages, bounced)."""
    return _page_io(True, region, page_size, pages, fd, offsets, force_bounce)


def uffd_baseline(unsigned char[::1] region not None, size_t page_size):
    """The minimal userfaultfd loop over region (benchmark baseline).  Returns elapsed ns."""
    cdef gph_err err = _NO_ERR
    cdef long rc
    with nogil:
        rc = gph_uffd_baseline(&region[0], region.shape[0], page_size, &err)
    if rc < 0:
        raise_mech(rc, &err, "uffd baseline")
    return rc


cdef class FaultThread:
    """One C fault-service pthread and its userfaultfd (ext/faults.c)."""
    cdef gph_service *s
    cdef readonly uint64_t features

    def __cinit__(self, int flags, size_t window_bytes):
        cdef gph_err err = _NO_ERR
        cdef long rc
        self.s = NULL
        with nogil:
            rc = gph_service_create(&self.s, flags, window_bytes, &self.features, &err)
        if rc < 0:
            raise_mech(rc, &err, "creating the fault service")

    def __dealloc__(self):
        if self.s != NULL:
            with nogil:
                gph_service_destroy(self.s)
            self.s = NULL

    cdef gph_service *_svc(self) except NULL:
        cdef gph_err err = _NO_ERR
        if self.s == NULL:
            err.what = "service"
            raise_mech(-EBADF, &err, "")
        return self.s

    def start(self):
        cdef gph_err err = _NO_ERR
        rc = gph_service_start(self._svc(), &err)
        if rc < 0:
            raise_mech(rc, &err, "starting the fault thread")

    def set_window(self, size_t window_bytes):
        if gph_service_set_window(self._svc(), window_bytes) < 0:
            raise ValueError("window of %d bytes exceeds 2 MiB" % window_bytes)

    def set_race_delay(self, uint64_t ns):
        """Tests only: sleep ns inside every hold (widens the protocol's race windows)."""
        gph_service_set_race_delay(self._svc(), ns)

    def set_locking(self, int locking):
        """LOCKING_HOLDBITS or LOCKING_HASHED (ext/statelock.h), before the first register."""
        cdef gph_err err = _NO_ERR
        cdef long rc = gph_service_set_locking(self._svc(), locking)
        if rc < 0:
            err.what = "locking (a known mode, set before the first register)"
            raise_mech(rc, &err, "choosing the fault service's locking")

    def register(self, unsigned char[::1] region not None, size_t page_size, uint8_t[::1] states not None,
                 int32_t[::1] backing_store not None, int64_t[::1] backing_offset not None,
                 int32_t[::1] swap_store not None, int64_t[::1] swap_slot not None):
        cdef gph_region_desc d
        cdef gph_err err = _NO_ERR
        cdef long rc
        cdef gph_service *s = self._svc()
        d.base = &region[0]
        d.page_size = page_size
        d.npages = region.shape[0] // page_size
        if (states.shape[0] < d.npages or backing_store.shape[0] < d.npages or
                backing_offset.shape[0] < d.npages or swap_store.shape[0] < d.npages or
                swap_slot.shape[0] < d.npages):
            raise ValueError("page tables shorter than the region's %d pages" % d.npages)
        d.states = &states[0]
        d.backing_store = &backing_store[0]
        d.backing_offset = &backing_offset[0]
        d.swap_store = &swap_store[0]
        d.swap_slot = &swap_slot[0]
        with nogil:
            rc = gph_service_register(s, &d, &err)
        if rc < 0:
            raise_mech(rc, &err, "registering %d pages" % d.npages)
        return rc

    def unregister(self, int region, bint materialize):
        cdef gph_err err = _NO_ERR
        cdef long rc
        cdef gph_service *s = self._svc()
        with nogil:
            rc = gph_service_unregister(s, region, materialize, &err)
        if rc < 0 and rc != -ENOENT:   # not registered, or another unregister is under way: done
            raise_mech(rc, &err, "unregistering region %d" % region)

    def stop(self):
        cdef gph_service *s = self._svc()
        with nogil:
            gph_service_stop(s)

    def close(self):
        if self.s != NULL:
            with nogil:
                gph_service_destroy(self.s)
            self.s = NULL

    def stats(self, int region=-1):
        """(counters dict, histogram list) for a region, or the total with region=-1."""
        cdef gph_fault_stats st
        if gph_service_stats(self._svc(), region, &st) < 0:
            return None
        d = {"faults": st.faults, "discard_faults": st.discard_faults, "zero_fills": st.zero_fills,
             "file_reloads": st.file_reloads, "swap_ins": st.swap_ins, "pages_served": st.pages_served,
             "bytes_served": st.bytes_served, "fault_around_hits": st.fault_around_hits,
             "lost_pages": st.lost_pages, "eexist": st.eexist, "ring_overflows": st.ring_overflows,
             "refault_loops": st.refault_loops,
             "lazy_refaults": st.lazy_refaults, "ring_stale": st.ring_stale}
        return d, [st.hist[i] for i in range(GPH_HIST_BUCKETS)]

    def error(self):
        """(count, errno, syscall, region, page) of the first recorded reload failure."""
        cdef gph_fault_error e
        n = gph_service_error(self._svc(), &e)
        if n == 0:
            return (0, 0, "", -1, -1)
        return (n, e.errnum, (<bytes>e.syscall).decode() if e.syscall != NULL else "?", e.region, e.page)

    def drain(self, int region, int64_t[::1] out not None):
        cdef long rc
        cdef gph_service *s = self._svc()
        if out.shape[0] == 0:
            return 0
        with nogil:
            rc = gph_service_drain(s, region, &out[0], out.shape[0])
        return max(rc, 0)

    def fill(self, int region, const int64_t[::1] pages, int fd, const int64_t[::1] offsets,
             bint force_bounce):
        """Page-cache fill of a served region's frames.  Returns (pages, installed)."""
        cdef gph_err err = _NO_ERR
        cdef long rc
        cdef int64_t installed = 0
        cdef size_t n = pages.shape[0]
        cdef gph_service *s = self._svc()
        if n == 0:
            return (0, 0)
        if offsets.shape[0] != <Py_ssize_t>n:
            raise ValueError("%d offsets for %d pages" % (offsets.shape[0], n))
        with nogil:
            rc = gph_service_fill(s, region, &pages[0], n, fd, &offsets[0], force_bounce, &installed, &err)
        if rc < 0:
            raise_mech(rc, &err, "fill_from_file")
        return (rc, installed)

    def reclaim_slots(self, int region, int32_t swap_id):
        """Free slots of preserved pages the guest gave up.  Returns how many."""
        cdef long rc
        cdef gph_service *s = self._svc()
        with nogil:
            rc = gph_service_reclaim_slots(s, region, swap_id)
        return max(rc, 0)

    def host_discard(self, int region, const int64_t[::1] pages, int advice, int submit, int pidfd,
                     int32_t swap_id, const int64_t[::1] slots, uint8_t[::1] used_slots):
        """Protocol discard of U/V/P pages.  Returns (discarded, preserved, calls, runs, resident,
        lazy): the madvise calls made, the runs they advised, how many of the discarded pages
        were resident just before, how many were left lazily freed (MADV_FREE)."""
        cdef gph_err err = _NO_ERR
        cdef long rc
        cdef int64_t preserved = 0
        cdef gph_discard_stats st
        st.calls = st.runs = st.pages = st.resident = st.lazy = 0
        cdef size_t n = pages.shape[0]
        cdef size_t nslots = slots.shape[0] if slots is not None else 0
        cdef const int64_t *sp = &slots[0] if nslots else NULL
        cdef uint8_t *up = &used_slots[0] if nslots else NULL
        cdef gph_service *s = self._svc()
        if n == 0:
            return (0, 0, 0, 0, 0, 0)
        with nogil:
            rc = gph_host_discard(s, region, &pages[0], n, advice, submit, pidfd, swap_id, sp, nslots,
                                  up, &preserved, &st, &err)
        if rc < 0:
            raise_mech(rc, &err, "discard")
        return (rc, preserved, st.calls, st.runs, st.resident, st.lazy)

    def host_take(self, int region, int usage_mask_ok, uint8_t[::1] resident not None, int64_t need,
                  int64_t host_batch, int advice, int submit, int pidfd):
        """One reclaim tier on one guest (ext/hostops.c, gph_host_take): up to need candidates
        of resident (the host's sample; chosen pages are cleared in it) picked, discarded and
        finished, host_batch per submission.  Returns (discarded, chosen, calls, runs, resident,
        lazy)."""
        cdef gph_err err = _NO_ERR
        cdef long rc
        cdef int64_t chosen = 0
        cdef gph_discard_stats st
        st.calls = st.runs = st.pages = st.resident = st.lazy = 0
        cdef gph_service *s = self._svc()
        cdef int64_t rlen = resident.shape[0]
        if need <= 0 or rlen == 0:
            return (0, 0, 0, 0, 0, 0)
        with nogil:
            rc = gph_host_take(s, region, usage_mask_ok, &resident[0], rlen, need, host_batch, advice,
                               submit, pidfd, &chosen, &st, &err)
        if rc < 0:
            raise_mech(rc, &err, "discard")
        return (rc, chosen, st.calls, st.runs, st.resident, st.lazy)

    def host_count(self, const int32_t[::1] rids not None, const int64_t[::1] offsets not None,
                   const uint8_t[::1] resident not None, int usage_mask_ok, int advice,
                   int64_t[::1] counts not None):
        """The fleet's count (ext/hostops.c, gph_host_count): counts[i] = candidates
        gph_host_take would choose in region rids[i], whose residency sample is at offsets[i]
        of resident.  Returns their sum."""
        cdef size_t n = rids.shape[0]
        cdef gph_err err = _NO_ERR
        cdef long rc
        cdef gph_service *s = self._svc()
        if offsets.shape[0] < <Py_ssize_t>n or counts.shape[0] < <Py_ssize_t>n:
            raise ValueError("offsets and counts need one entry per region")
        if n == 0 or resident.shape[0] == 0:
            return 0
        with nogil:
            rc = gph_host_count(s, &rids[0], n, &offsets[0], &resident[0], resident.shape[0],
                                usage_mask_ok, advice, &counts[0], &err)
        return rc

    def host_take_fleet(self, const int32_t[::1] rids not None, const int64_t[::1] offsets not None,
                        const int64_t[::1] quota not None, uint8_t[::1] resident not None,
                        int usage_mask_ok, int64_t host_batch, int advice, int submit, int pidfd,
                        int64_t[:, ::1] out not None):
        """gph_host_take on every guest with quota[i] > 0, in one call (gph_host_take_fleet);
        out[i] = (discarded, chosen, calls, runs, resident, lazy).  Returns pages discarded."""
        cdef size_t n = rids.shape[0]
        cdef gph_err err = _NO_ERR
        cdef long rc
        cdef gph_service *s = self._svc()
        if offsets.shape[0] < <Py_ssize_t>n or quota.shape[0] < <Py_ssize_t>n or \
                out.shape[0] < <Py_ssize_t>n or out.shape[1] != 6:
            raise ValueError("offsets, quota and out (n, 6) need one entry per region")
        if n == 0 or resident.shape[0] == 0:
            return 0
        with nogil:
            rc = gph_host_take_fleet(s, &rids[0], n, &offsets[0], &quota[0], &resident[0],
                                     resident.shape[0], usage_mask_ok, host_batch, advice, submit,
                                     pidfd, &out[0, 0], &err)
        if rc < 0:
            raise_mech(rc, &err, "discard")
        return rc

    def host_sample(self, const int32_t[::1] rids not None, const int64_t[::1] offsets not None,
                    uint8_t[::1] vec not None, uint8_t[::1] resident not None,
                    int64_t[::1] since_tick not None, uint8_t[::1] ever not None, int64_t tick,
                    int64_t[::1] counts not None):
        """The fleet's residency sample (gph_host_sample); counts[i] = guest i's resident
        pages.  Returns resident pages in all."""
        cdef size_t n = rids.shape[0]
        cdef gph_err err = _NO_ERR
        cdef long rc
        cdef gph_service *s = self._svc()
        cdef int64_t total = resident.shape[0]
        if offsets.shape[0] < <Py_ssize_t>n or counts.shape[0] < <Py_ssize_t>n:
            raise ValueError("offsets and counts need one entry per region")
        if vec.shape[0] < total or since_tick.shape[0] < total or ever.shape[0] < total:
            raise ValueError("the fleet's residency tables differ in length")
        if n == 0 or total == 0:
            return 0
        with nogil:
            rc = gph_host_sample(s, &rids[0], n, &offsets[0], &vec[0], &resident[0], &since_tick[0],
                                 &ever[0], total, tick, &counts[0], &err)
        if rc < 0:
            raise_mech(rc, &err, "residency")
        return rc

    def host_swap_out(self, int region, const int64_t[::1] pages, int32_t swap_id,
                      const int64_t[::1] slots, uint8_t[::1] used_slots):
        cdef gph_err err = _NO_ERR
        cdef long rc
        cdef size_t n = pages.shape[0]
        cdef size_t nslots = slots.shape[0]
        cdef gph_service *s = self._svc()
        if n == 0:
            return 0
        if used_slots.shape[0] < <Py_ssize_t>nslots:
            raise ValueError("used_slots shorter than slots")
        with nogil:
            rc = gph_host_swap_out(s, region, &pages[0], n, swap_id, &slots[0] if nslots else NULL,
                                   nslots, &used_slots[0] if nslots else NULL, &err)
        if rc < 0:
            raise_mech(rc, &err, "swap-out")
        return rc


# --- the host's Sp -> Sz transition (ext/hostops.c), declared here with its only caller ---------
cdef extern from *:
    """
    long gph_host_drop_preserved(struct gph_service *s, int rid, const int64_t *pages, size_t n,
                                 struct gph_err *err);
    """
    long gph_host_drop_preserved(gph_service *s, int rid, const int64_t *pages, size_t n,
                                 gph_err *err) nogil


def host_drop_preserved(FaultThread thread, int region, const int64_t[::1] pages):
    """Sp -> Sz: give up the swap copies of pages nobody needs (slot freed, content zero); pages
    in any other state or held are left alone.  pages ascending.  Returns pages dropped."""
    cdef gph_err err = _NO_ERR
    cdef long rc
    cdef size_t n = pages.shape[0]
    cdef gph_service *s = thread._svc()
    if n == 0:
        return 0
    with nogil:
        rc = gph_host_drop_preserved(s, region, &pages[0], n, &err)
    if rc < 0:
        raise_mech(rc, &err, "drop preserved")
    return rc
