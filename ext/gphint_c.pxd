# C declarations of ext/gphint.h, kept apart from the seam's logic (uvloop style).
from libc.stdint cimport uint8_t, int64_t, uint64_t

cdef extern from "gphint_internal.h" nogil:
    struct gph_err:
        const char *what
        const char *syscall
        int64_t first_page
        int64_t npages
        int64_t bound

    struct gph_discard_stats:
        uint64_t calls
        uint64_t runs
        uint64_t pages
        uint64_t resident
        uint64_t lazy

    long gph_discard_pages(uint8_t *base, size_t page_size, int64_t npages,
                           const int64_t *pages, size_t n, int advice, int submit, int pidfd,
                           gph_discard_stats *st, gph_err *err)
    long gph_discard_runs(uint8_t *base, size_t page_size, int64_t npages,
                          const int64_t *runs, size_t n, int advice, int submit, int pidfd,
                          gph_discard_stats *st, gph_err *err)
    long gph_set_usage(uint8_t *states, int64_t npages, const int64_t *pages, size_t n,
                       uint8_t usage, const uint8_t *next, uint8_t *old_out, gph_err *err)
    long gph_set_content(uint8_t *states, int64_t npages, const int64_t *pages, size_t n,
                         uint8_t content, gph_err *err)
    long gph_residency(uint8_t *base, size_t page_size, int64_t npages, uint8_t *vec,
                       gph_err *err)

# --- discard faults, stores, protocol, dirty bits ---
from libc.stdint cimport int32_t
cdef extern from "gphint_internal.h" nogil:
    int GPH_HIST_BUCKETS
    int GPH_MAX_STORES
    int GPH_SVC_USER_MODE_ONLY
    int GPH_SVC_DIRTY
    int GPH_SVC_MOVE

    struct gph_service:
        pass

    struct gph_fault_stats:
        uint64_t faults
        uint64_t discard_faults
        uint64_t zero_fills
        uint64_t file_reloads
        uint64_t swap_ins
        uint64_t pages_served
        uint64_t bytes_served
        uint64_t fault_around_hits
        uint64_t lost_pages
        uint64_t eexist
        uint64_t ring_overflows
        uint64_t refault_loops
        uint64_t lazy_refaults
        uint64_t ring_stale
        uint64_t hist[256]

    struct gph_fault_error:
        int errnum
        const char *syscall
        int region
        int64_t page

    struct gph_region_desc:
        uint8_t *base
        size_t page_size
        int64_t npages
        uint8_t *states
        int32_t *backing_store
        int64_t *backing_offset
        int32_t *swap_store
        int64_t *swap_slot

    long gph_store_set(int32_t id, int fd, uint8_t *slot_used, int64_t nslots, const uint64_t *digest,
                       int64_t ndigest)
    long gph_store_set_digests(int32_t id, const uint64_t *digest, int64_t ndigest)
    long gph_store_clear(int32_t id)
    long gph_page_digests(const uint8_t *base, size_t page_size, int64_t npages, const int64_t *pages,
                          size_t n, uint64_t *out) nogil
    long gph_make_stable(uint8_t *states, int64_t npages, const int64_t *pages, size_t n,
                         int64_t *discarded_out, gph_err *err)
    long gph_service_create(gph_service **out, int flags, size_t window_bytes, uint64_t *features_out,
                            gph_err *err)
    long gph_service_start(gph_service *s, gph_err *err)
    long gph_service_set_window(gph_service *s, size_t window_bytes)
    long gph_service_set_race_delay(gph_service *s, uint64_t ns)
    long gph_service_set_locking(gph_service *s, int locking)
    enum:
        GPH_LOCKING_HOLDBITS
        GPH_LOCKING_HASHED
    long gph_service_register(gph_service *s, const gph_region_desc *d, gph_err *err)
    long gph_service_unregister(gph_service *s, int region, int materialize, gph_err *err)
    long gph_service_stop(gph_service *s)
    void gph_service_destroy(gph_service *s)
    long gph_service_stats(gph_service *s, int region, gph_fault_stats *out)
    long gph_service_error(gph_service *s, gph_fault_error *out)
    long gph_service_drain(gph_service *s, int region, int64_t *out, size_t cap)
    long gph_service_reclaim_slots(gph_service *s, int region, int32_t swap_id)
    long gph_service_fill(gph_service *s, int region, const int64_t *pages, size_t n, int fd,
                          const int64_t *offsets, int force_bounce, int64_t *installed, gph_err *err)
    long gph_host_discard(gph_service *s, int region, const int64_t *pages, size_t n,
                          int advice, int submit, int pidfd, int32_t swap_id, const int64_t *slots,
                          size_t nslots, uint8_t *used_slots, int64_t *preserved,
                          gph_discard_stats *st, gph_err *err)
    long gph_host_swap_out(gph_service *s, int region, const int64_t *pages, size_t n,
                           int32_t swap_id, const int64_t *slots, size_t nslots, uint8_t *used_slots,
                           gph_err *err)
    long gph_host_take(gph_service *s, int rid, int usage_mask_ok, uint8_t *resident,
                       int64_t resident_len, int64_t need, int64_t host_batch, int advice, int submit,
                       int pidfd, int64_t *chosen, gph_discard_stats *st, gph_err *err)
    long gph_host_count(gph_service *s, const int32_t *rids, size_t n, const int64_t *offsets,
                        const uint8_t *resident, int64_t total, int usage_mask_ok, int advice,
                        int64_t *counts, gph_err *err)
    long gph_host_take_fleet(gph_service *s, const int32_t *rids, size_t n, const int64_t *offsets,
                             const int64_t *quota, uint8_t *resident, int64_t total, int usage_mask_ok,
                             int64_t host_batch, int advice, int submit, int pidfd, int64_t *out,
                             gph_err *err)
    long gph_host_sample(gph_service *s, const int32_t *rids, size_t n, const int64_t *offsets,
                         uint8_t *vec, uint8_t *resident, int64_t *since_tick, uint8_t *ever, int64_t total,
                         int64_t tick, int64_t *counts, gph_err *err)
    long gph_residency_track(uint8_t *base, size_t page_size, int64_t npages, uint8_t *vec,
                             uint8_t *resident, int64_t *since_tick, uint8_t *ever, int64_t tick,
                             gph_err *err)
    long gph_dirty_scan(uint8_t *base, size_t page_size, int64_t first, int64_t n, int clear,
                        uint8_t *written, gph_err *err)
    long gph_fill_from_file(uint8_t *base, size_t page_size, int64_t npages, const int64_t *pages,
                            size_t n, int fd, const int64_t *offsets, int force_bounce, int64_t *bounced,
                            gph_err *err)
    long gph_write_to_file(uint8_t *base, size_t page_size, int64_t npages, const int64_t *pages,
                           size_t n, int fd, const int64_t *offsets, int force_bounce, int64_t *bounced,
                           gph_err *err)
    long gph_uffd_baseline(uint8_t *base, size_t len, size_t page_size, gph_err *err)

# --- the guest's hint queue (ext/hintq.c) ---
cdef extern from "gphint_internal.h" nogil:
    struct gph_hintq:
        int64_t npages
        size_t capacity, npending, qlen, nrefused
        uint64_t hint_ops, transitions, cancelled
        int64_t *refused
        uint8_t *refused_usage
        int64_t now_ns
    long gph_hintq_init(gph_hintq *q, uint8_t *states, int64_t npages, const uint8_t *next,
                        uint8_t *pending, uint64_t *ops_total, size_t capacity)
    void gph_hintq_free(gph_hintq *q)
    long gph_hintq_hint(gph_hintq *q, const int64_t *pages, size_t n, int usage, gph_err *err)
    long gph_hintq_submit(gph_hintq *q, int whole_batches_only)
    void gph_hintq_record_unused(gph_hintq *q, int64_t *since_ns, int64_t now_ns)
    long gph_hintq_make_stable(gph_hintq *q, const int64_t *pages, size_t n, int64_t *discarded_out,
                               gph_err *err)

# --- lazily freed pages (ext/lazyfree.c) ---
cdef extern from "gphint_internal.h" nogil:
    int GPH_NEXT_RESOLVE
    int GPH_CONTENT_LAZY
    struct gph_lazy_stats:
        uint64_t reused
        uint64_t reclaimed
    long gph_frames_register(uint8_t *states, int64_t npages, uint8_t *base, size_t page_size)
    long gph_frames_unregister(uint8_t *states)
    long gph_frames_stats(uint8_t *states, gph_lazy_stats *out)
    long gph_resolve_lazy(uint8_t *states, int64_t npages, const int64_t *pages, size_t n,
                          int keep_present, gph_err *err)

cdef extern from "statelock.h" nogil:
    int gph_statelock_taken(const uint8_t *b)
    void gph_statelock_hold_test(const uint8_t *b, uint64_t ns, uint8_t *first, uint8_t *last)
