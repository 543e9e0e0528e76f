/* gphint_internal.h -- everything of the mechanism beyond the one-screen contract in gphint.h:
 * the discard and fill primitives, stores, lazily freed pages, the service's lifetime and
 * counters, the hint queue, the dirty bit, the error helpers.  The same rules apply: >= 0 or
 * -errno with *err filled, no Python, no policy. */
#ifndef GPHINT_INTERNAL_H
#define GPHINT_INTERNAL_H

#include "gphint.h"

#define GPH_FLAG_HELD (GPH_FLAG_BUSY | GPH_FLAG_SERVING)   /* guest transitions wait these out */

/* --- discard.c: give pages back to the host kernel --- */
enum { GPH_ADVICE_DONTNEED = 0, GPH_ADVICE_FREE = 1 };
enum { GPH_SUBMIT_PER_PAGE = 0, GPH_SUBMIT_COALESCE = 1, GPH_SUBMIT_VECTORED = 2 };
#define GPH_IOV_MAX 1024   /* UIO_MAXIOV: iovecs per process_madvise call */

struct gph_discard_stats {
    uint64_t calls;     /* madvise/process_madvise system calls issued (each retry counts) */
    uint64_t runs;      /* contiguous runs after coalescing */
    uint64_t pages;     /* pages the kernel was asked to discard */
    uint64_t resident;  /* of those, resident just before the advice (mincore) */
    uint64_t lazy;      /* of those, advised MADV_FREE: lazily freed, not yet gone */
};

/* pages: indices in [0, npages), any order, duplicates allowed.  pidfd: a pidfd of this
 * process (needed only for GPH_SUBMIT_VECTORED).  Returns pages discarded. */
long gph_discard_pages(uint8_t *base, size_t page_size, int64_t npages,
                       const int64_t *pages, size_t n, int advice, int submit, int pidfd,
                       struct gph_discard_stats *st, struct gph_err *err);
/* runs: n pairs (first_page, npages), in any order. */
long gph_discard_runs(uint8_t *base, size_t page_size, int64_t npages,
                      const int64_t *runs, size_t n, int advice, int submit, int pidfd,
                      struct gph_discard_stats *st, struct gph_err *err);

/* --- states.c: atomic per-byte state updates (guest usage changes: gph_set_usage, protocol.c) --- */
/* Set the content bits of pages[] to content (CAS, other bits preserved). */
long gph_set_content(uint8_t *states, int64_t npages, const int64_t *pages, size_t n,
                     uint8_t content, struct gph_err *err);

/* --- lazyfree.c: pages given back with MADV_FREE (content GPH_CONTENT_LAZY, "Uf"/"Vf") ---
 * After MADV_FREE a page stays mapped, bytes intact, until the kernel reclaims it under pressure
 * (then it is missing: the next access faults).  A write cancels the lazy free (mm/rmap.c skips a
 * redirtied lazyfree folio).  So a lazily freed page is neither resident nor discarded until the
 * kernel says which: a guest transition out of U/V *resolves* it first -- present: a write of
 * its own byte keeps it (Xr); missing: Xz.  The guest's setters find a memory's frames by its
 * state table in this registry (the hint queue knows only the table). */
#define GPH_NEXT_RESOLVE 0xfe   /* next-table entry: resolve the lazily freed page, then look again */
struct gph_lazy_stats {
    uint64_t reused;     /* taken back by the guest while still present: no refault */
    uint64_t reclaimed;  /* found missing at a resolution (the kernel reclaimed them) */
};
long gph_frames_register(uint8_t *states, int64_t npages, uint8_t *base, size_t page_size);
long gph_frames_unregister(uint8_t *states);
long gph_frames_stats(uint8_t *states, struct gph_lazy_stats *out);
/* Resolve lazily freed pages[] of a registered memory.  keep_present: a page still present is
 * taken back (written, lazy free cancelled: Xf -> Xr); else it is left lazily freed and only
 * missing ones become Xz (the host's scan).  Returns pages resolved; -ENOENT if not registered. */
long gph_resolve_lazy(uint8_t *states, int64_t npages, const int64_t *pages, size_t n,
                      int keep_present, struct gph_err *err);
/* One page: b its state byte, addr its frame.  Holds the page (BUSY) while it asks mincore and
 * writes; a fault meanwhile is served by the fault thread (FILLED).  st may be NULL. */
enum { GPH_LAZY_NOT = 0, GPH_LAZY_REUSED = 1, GPH_LAZY_RECLAIMED = 2, GPH_LAZY_REFAULTED = 3,
       GPH_LAZY_LEFT = 4 };
int gph_resolve_lazy_page(uint8_t *b, uint8_t *addr, size_t page_size, int keep_present,
                          struct gph_lazy_stats *st);
/* protocol.c's hook: take page p of the memory with this state table back (keep_present=1).
 * Returns a GPH_LAZY_* outcome, or -ENOENT when the table is not registered. */
long gph_resolve_lazy_one_(uint8_t *states, int64_t p);

/* --- residency.c: what the kernel says is resident --- */
/* vec gets one byte per page (bit 0 = resident); returns the number of resident pages. */
long gph_residency(uint8_t *base, size_t page_size, int64_t npages, uint8_t *vec,
                   struct gph_err *err);


/* --- stores.c: the process-wide store table (store id > 0 -> fd); the only thing the reload path
 * knows about files.  A swap store also carries its slot-in-use table (one byte per slot), which
 * the fault thread clears after a swap-in. */
#define GPH_MAX_STORES (1 << 20)   /* ids; the table grows in chunks as ids are used */
/* digest: a file store's content record, ndigest entries (one per file page, 0 = none; see
 * gph_page_digest); NULL for swap stores.  Both tables stay owned (and mapped) by the caller. */
long gph_store_set(int32_t id, int fd, uint8_t *slot_used, int64_t nslots, const uint64_t *digest,
                   int64_t ndigest);
/* Replace a store's digest table (grown); the old one must stay mapped until the store closes. */
long gph_store_set_digests(int32_t id, const uint64_t *digest, int64_t ndigest);
long gph_store_clear(int32_t id);
/* The content digest of one page (never 0), and of pages[i] of base (pages NULL: 0..n-1). */
uint64_t gph_page_digest(const uint8_t *page, size_t page_size);
long gph_page_digests(const uint8_t *base, size_t page_size, int64_t npages, const int64_t *pages,
                      size_t n, uint64_t *out);
/* Read len bytes at off, looping short reads and retrying EINTR/EAGAIN; bytes past EOF read as zero
 * (file-mapping semantics).  Returns bytes that came from the file, or -errno. */
long gph_read_full(int fd, void *buf, size_t len, int64_t off);
int gph_fd_direct_(int fd);                       /* fd opened with O_DIRECT (never mapped) */
int gph_direct_eof_(int err, size_t done);        /* EINVAL after a short O_DIRECT read = EOF */
/* swapped.c: mark pages the kernel swapped out (or present) as holding content */
long gph_mark_swapped_(const uint8_t *addr, size_t page_size, int64_t n, uint8_t *resident);
int gph_pagemap_fd_(void);                        /* /proc/self/pagemap, opened once, or -errno */
long gph_write_full(int fd, const void *buf, size_t len, int64_t off);

/* --- faults.c: the service --- */
enum { GPH_SRC_ZERO = 0, GPH_SRC_FILE = 1, GPH_SRC_SWAP = 2 };
#define GPH_HIST_BUCKETS 256   /* latency histogram: 4 buckets per power of two of ns */

struct gph_fault_stats {
    uint64_t faults;             /* fault messages served */
    uint64_t discard_faults;     /* faults on a discarded VOLATILE page */
    uint64_t zero_fills;         /* pages served as zeros */
    uint64_t file_reloads;       /* pages served from a backing file */
    uint64_t swap_ins;           /* pages served from host swap */
    uint64_t pages_served;
    uint64_t bytes_served;
    uint64_t fault_around_hits;  /* neighbour pages served with a fault */
    uint64_t lost_pages;         /* pages served as zeros because the source failed */
    uint64_t eexist;             /* benign: the page was already there */
    uint64_t ring_overflows;     /* discarded-page list entries dropped (list full) */
    uint64_t refault_loops;      /* a page kept faulting after "already there" (EEXIST): resolved */
    uint64_t lazy_refaults;      /* faults on lazily freed pages: the kernel had reclaimed them */
    uint64_t ring_stale;         /* served pages not listed: freed by the guest meanwhile (serve.c) */
    uint64_t hist[GPH_HIST_BUCKETS];
};

struct gph_fault_error {         /* the first reload failure, re-raised by FaultService.check() */
    int errnum;
    const char *syscall;
    int region;
    int64_t page;
};


/* flags: GPH_SVC_USER_MODE_ONLY, GPH_SVC_DIRTY (ask for WP_ASYNC write tracking). */
#define GPH_SVC_USER_MODE_ONLY 1
#define GPH_SVC_DIRTY          2
#define GPH_SVC_MOVE           4
long gph_service_create(struct gph_service **out, int flags, size_t window_bytes, uint64_t *features_out,
                        struct gph_err *err);
long gph_service_start(struct gph_service *s, struct gph_err *err);
long gph_service_set_window(struct gph_service *s, size_t window_bytes);
/* Tests only: sleep ns inside every host/fault-thread hold, to widen race windows. */
long gph_service_set_race_delay(struct gph_service *s, uint64_t ns);
/* How the protocol's holds are taken (docs/state-protocol.md): hold bits in the state byte, or
 * the hashed lock on the page index (statelock.h).  Before the first register only. */
enum { GPH_LOCKING_HOLDBITS = 0, GPH_LOCKING_HASHED = 1 };
long gph_service_set_locking(struct gph_service *s, int locking);
/* gph_service_register returns the region id (>= 0).  gph_service_unregister first closes the
 * region to the host (discard / swap-out then fail with -ENOENT, and none is still running),
 * then, with materialize, reloads every page whose content lives elsewhere (file/swap), so the
 * memory stays correct without the service; then unregisters (waking any thread still
 * waiting).  -ENOENT: not registered, or another unregister is under way. */
long gph_service_stop(struct gph_service *s);
void gph_service_destroy(struct gph_service *s);
long gph_service_stats(struct gph_service *s, int region, struct gph_fault_stats *out);
long gph_service_error(struct gph_service *s, struct gph_fault_error *out);
long gph_service_drain(struct gph_service *s, int region, int64_t *out, size_t cap);
/* The guest's page-cache fill of frames of a served region: missing (ZERO-content) frames are
 * installed with UFFDIO_COPY from the file without a fault; the rest read in place.
 * *installed counts the former.  Returns n. */
long gph_service_fill(struct gph_service *s, int region, const int64_t *pages, size_t n, int fd,
                      const int64_t *offsets, int force_bounce, int64_t *installed, struct gph_err *err);
/* Free the swap slots of pages the guest gave up while preserved (Sp -> Uz/Vz, never accessed
 * since).  Returns slots freed. */
long gph_service_reclaim_slots(struct gph_service *s, int region, int32_t swap_id);

/* --- host side (hostops.c): discard and swap-out under the protocol --- */
/* gph_host_discard (gphint.h): discard VOLATILE / UNUSED / clean POT_VOLATILE pages.  Pages the protocol does not allow right
 * now (held, or changed state) are skipped.  advice FREE leaves U/V pages lazily freed (Xr -> Xf);
 * DONTNEED also takes lazily freed ones (Xf -> Xz).  *st counts the madvise calls made.  Dirty
 * or changed POT_VOLATILE pages are preserved in swap (needs swap_id > 0 and free slots; else they stay as they were).  Returns pages discarded;
 * *preserved gets pages preserved; slots are consumed in order, used_slots[j] = 1 for each used. */
/* Swap out STABLE (and POT_VOLATILE) resident pages to swap_id at slots[i]: detach atomically
 * (UFFDIO_MOVE), write, record, mark PRESERVED.  slots as above.  Returns pages swapped. */
long gph_host_swap_out(struct gph_service *s, int region, const int64_t *pages, size_t n,
                       int32_t swap_id, const int64_t *slots, size_t nslots, uint8_t *used_slots,
                       struct gph_err *err);

/* One reclaim tier on one guest (gphint.host.strategies): choose up to `need` candidates in
 * ascending order -- unheld, usage in usage_mask_ok (bit 1 << usage code: UNUSED and VOLATILE
 * only), content the advice takes, resident[p] set -- clearing their resident[] bytes, then pick,
 * discard and finish them as gph_host_discard does, one submission per host_batch chosen.
 * Returns pages discarded; *chosen gets pages chosen (chosen - discarded: skipped by the pick). */
long gph_host_take(struct gph_service *s, int rid, int usage_mask_ok, uint8_t *resident,
                   int64_t resident_len, int64_t need, int64_t host_batch, int advice, int submit,
                   int pidfd, int64_t *chosen, struct gph_discard_stats *st, struct gph_err *err);
/* The fleet's calls (one for all of a host's guests; tables at offsets[i] of arrays of `total`):
 * counts[i] = the candidates gph_host_take would choose in region rids[i] (returns their sum);
 * gph_host_take on each guest with quota[i] > 0 (out: 6 per guest, discarded, chosen, calls,
 * runs, resident, lazy; returns discarded); the residency sample of every guest (returns
 * resident pages, counts[i] per guest; -ENOENT if a region is gone). */
long gph_host_count(struct gph_service *s, const int32_t *rids, size_t n, const int64_t *offsets,
                    const uint8_t *resident, int64_t total, int usage_mask_ok, int advice,
                    int64_t *counts, struct gph_err *err);
long gph_host_take_fleet(struct gph_service *s, const int32_t *rids, size_t n, const int64_t *offsets,
                         const int64_t *quota, uint8_t *resident, int64_t total, int usage_mask_ok,
                         int64_t host_batch, int advice, int submit, int pidfd, int64_t *out,
                         struct gph_err *err);
long gph_host_sample(struct gph_service *s, const int32_t *rids, size_t n, const int64_t *offsets,
                     uint8_t *vec, uint8_t *resident, int64_t *since_tick, uint8_t *ever, int64_t total,
                     int64_t tick, int64_t *counts, struct gph_err *err);
/* One guest's residency sample: mincore into vec, then resident / since_tick / ever updated in
 * one pass (gphint.host.residency).  Returns resident pages. */
long gph_residency_track(uint8_t *base, size_t page_size, int64_t npages, uint8_t *vec,
                         uint8_t *resident, int64_t *since_tick, uint8_t *ever, int64_t tick,
                         struct gph_err *err);

/* --- dirty.c: the host dirty bit (UFFD WP_ASYNC + PAGEMAP_SCAN, Linux >= 6.7) --- */
/* written[i] = 1 if page i of [first, first+n) was written since its bit was last cleared.
 * clear != 0: test-and-clear (write-protect again) atomically. */
long gph_dirty_scan(uint8_t *base, size_t page_size, int64_t first, int64_t n, int clear,
                    uint8_t *written, struct gph_err *err);

/* --- fill.c: kernel-mode fills of guest frames (the guest's page-cache I/O) --- */
/* pread/pwrite whole pages between fd at offsets[i] and frame pages[i]; contiguous runs become
 * one preadv/pwritev.  EFAULT (UFFD_USER_MODE_ONLY: kernel access to a missing page) falls back
 * to a user-space bounce copy.  *bounced counts pages that took the bounce path. */
long gph_fill_from_file(uint8_t *base, size_t page_size, int64_t npages, const int64_t *pages,
                        size_t n, int fd, const int64_t *offsets, int force_bounce, int64_t *bounced,
                        struct gph_err *err);
long gph_write_to_file(uint8_t *base, size_t page_size, int64_t npages, const int64_t *pages,
                       size_t n, int fd, const int64_t *offsets, int force_bounce, int64_t *bounced,
                       struct gph_err *err);

/* --- hintq.c: the guest's hint queue (batched usage transitions; policy in gphint/guest/hints.py) ---
 * Requests: "move these pages to usage u".  Not STABLE now -> applied at once (chunks of capacity);
 * STABLE requested -> cancels a pending transition; out of STABLE -> deferred until capacity
 * transitions wait, then submitted in whole batches of capacity, one gph_set_usage per batch and
 * target.  Invariant: a page with a pending transition is STABLE.  Chunks the state table refuses
 * are listed in refused[] for the caller to redo through its checked setter.  Not thread-safe. */
#define GPH_NO_PENDING 0xff
struct gph_hintq {
    uint8_t *states;          /* the memory's state table */
    int64_t npages;
    const uint8_t *next;      /* the guest transition table (see gph_set_usage) */
    uint8_t *pending;         /* per page: target usage of its deferred transition, or GPH_NO_PENDING */
    uint64_t *ops_total;      /* the memory's count of usage-change calls, shared by its queues */
    size_t capacity, npending;
    uint64_t hint_ops, transitions, cancelled;   /* state changes made, pages moved, superseded */
    int64_t *unused_since_ns; /* per page, or NULL: when it was last made UNUSED (the host's delay rule) */
    int64_t now_ns;           /* the clock for unused_since_ns; < 0: read CLOCK_MONOTONIC */
    /* owned by the queue (gph_hintq_free) */
    int64_t *queue; size_t qlen, qcap;           /* deferred pages, oldest first; dead entries allowed */
    int64_t *work; size_t wcap;                  /* scratch: pages applied now or submitted */
    uint8_t *targets; size_t tcap;               /* scratch: their target usages */
    int64_t *refused; uint8_t *refused_usage; size_t nrefused, rcap;
};
long gph_hintq_init(struct gph_hintq *q, uint8_t *states, int64_t npages, const uint8_t next[64],
                    uint8_t *pending, uint64_t *ops_total, size_t capacity);
void gph_hintq_free(struct gph_hintq *q);
/* pages: unique indices.  Returns n, or -ERANGE (err->first_page = index into pages[]; nothing
 * changed), -EINVAL (usage not a usage code), -ENOMEM. */
long gph_hintq_hint(struct gph_hintq *q, const int64_t *pages, size_t n, int usage,
                    struct gph_err *err);
/* The guest must own these pages now (a write, a swap-in): STABLE ones have their pending
 * transition cancelled, the others go through gph_make_stable, capacity pages per call; pages
 * found discarded (Vz) are left as they are and listed in discarded_out (room for n).
 * Returns how many were found discarded, or -ERANGE / -ENOMEM as gph_hintq_hint. */
long gph_hintq_make_stable(struct gph_hintq *q, const int64_t *pages, size_t n,
                           int64_t *discarded_out, struct gph_err *err);
/* Record in since_ns[page] (npages entries, or NULL: no record) the time each page is made UNUSED,
 * written before its state byte changes, so a host that sees UNUSED reads a time no older than the
 * transition.  now_ns < 0 reads CLOCK_MONOTONIC at each transition; >= 0 is that time (tests). */
void gph_hintq_record_unused(struct gph_hintq *q, int64_t *since_ns, int64_t now_ns);
/* Submit the oldest pending transitions: all, or (whole_batches_only) a multiple of capacity.
 * Returns the transitions submitted. */
long gph_hintq_submit(struct gph_hintq *q, int whole_batches_only);

/* --- uffd_baseline.c: the minimal userfaultfd loop (benchmark baseline only) --- */
/* Register [base, base+len), touch every page from the calling thread while a helper thread serves
 * each fault with one UFFDIO_COPY of a static page.  Returns elapsed ns, or -errno. */
long gph_uffd_baseline(uint8_t *base, size_t len, size_t page_size, struct gph_err *err);

/* err.c: fill *err (NULL allowed).  what: what was wrong when no call failed (a page index, a
 * region id, a mode), else NULL; call: the system or library call that failed, else NULL. */
void gph_err_set(struct gph_err *err, const char *what, const char *call, int64_t first, int64_t n);
/* Pages [first, first+n) not inside [0, bound) (what: "page index", "page run"): returns -ERANGE. */
long gph_err_range(struct gph_err *err, const char *what, int64_t first, int64_t n, int64_t bound);

#endif
