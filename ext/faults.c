/* faults.c -- the discard-fault service: one pthread that gives discarded pages back.
 *
 * Every GuestMemory region it serves is registered with UFFDIO_REGISTER_MODE_MISSING on one
 * userfaultfd.  The thread polls (uffd, wake eventfd), reads fault messages in batches and serves
 * each missing page by what the C-owned tables say about it (docs/state-protocol.md):
 *   content PRESERVED                      -> host swap slot (swap_store/swap_slot); slot freed
 *   VOLATILE with a backing record          -> backing file at backing_offset (a discard fault)
 *   anything else (UNUSED, zero, untouched) -> zeros (UFFDIO_ZEROPAGE on reads, a zeroed
 *                                              UFFDIO_COPY on writes: no second CoW fault)
 * Fault-around: neighbours in the same aligned window with the same kind of source (zero run,
 * contiguous file offsets, contiguous swap slots) are served by the same UFFDIO_COPY; REFERENCE §3:
 * a 4 KiB round trip costs 10+ us, a 2 MiB copy 1.2 us/page.
 *
 * Rules (kernel selftests uffd-common.c, Firecracker's handlers): EINTR/EAGAIN are retried; EEXIST
 * is benign (the page is there; wake the waiter); short reads are looped and past-EOF reads give
 * zeros.  The thread never calls Python, never takes the GIL, and never waits for the guest: on a
 * source that cannot be read it records the error, serves zeros, counts the pages lost and goes
 * on, so no faulting thread is left hanging.  UFFD_FEATURE_EVENT_REMOVE is deliberately not used
 * (it would make every discard a synchronous round trip): the host records what it discards. */
#include "faults_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>

uint64_t gph_now_ns_(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void set_err(struct gph_err *err, const char *sc, int64_t first, int64_t n)
{
    if (err) {
        err->syscall = sc;
        err->first_page = first;
        err->npages = n;
    }
}

#define GPH_COPY_CHUNK (128u << 10)   /* pread + UFFDIO_COPY piece: fits in L2 */
#define ADD(field, v) __atomic_fetch_add(&(field), (uint64_t)(v), __ATOMIC_RELAXED)

static unsigned hist_bucket(uint64_t ns)
{
    if (ns < 4)
        return (unsigned)ns;
    unsigned e = 63 - (unsigned)__builtin_clzll(ns);
    return 4 * e + (unsigned)((ns >> (e - 2)) & 3);
}

void gph_record_error_(struct gph_service *s, int errnum, const char *syscall, int region, int64_t page)
{
    pthread_mutex_lock(&s->err_lock);
    if (s->nerrors++ == 0) {   /* keep the first: later ones are usually its consequences */
        s->error.errnum = errnum;
        s->error.syscall = syscall;
        s->error.region = region;
        s->error.page = page;
    }
    pthread_mutex_unlock(&s->err_lock);
}

/* One page of zeros by UFFDIO_COPY, for a page UFFDIO_ZEROPAGE refused with EEXIST.  ZEROPAGE
 * installs only over a none pte (mm/userfaultfd.c, mfill_atomic_pte_zeropage), but a page can be
 * missing without its pte being none: PAGEMAP_SCAN's write-protect of a page that has no pte
 * (clearing the dirty bit of a discarded or never-touched page) leaves a uffd-wp marker there, and
 * the next access is a missing fault again.  UFFDIO_COPY installs over a marker too
 * (mfill_atomic_install_pte: pte_none_mostly), so the copy fills the page; a page that really is
 * there gives EEXIST again.  Returns 0 (filled) or -errno. */
static long zero_copy_page(struct gph_service *s, uint8_t *dst, size_t ps)
{
    struct uffdio_copy c = {.dst = (uint64_t)(uintptr_t)dst, .src = (uint64_t)(uintptr_t)s->zeros,
                            .len = ps, .mode = UFFDIO_COPY_MODE_DONTWAKE};
    while (ioctl(s->uffd, UFFDIO_COPY, &c) != 0) {
        if (errno != EAGAIN && errno != EINTR)
            return -errno;
        c.copy = 0;
    }
    return 0;
}

/* Fill [dst, dst+len) without waking: UFFDIO_COPY from src, or UFFDIO_ZEROPAGE when src is NULL.
 * The caller updates the tables first and wakes afterwards: a woken thread must find the state it
 * expects.  EAGAIN/EINTR are retried; EEXIST (the page is already there) is benign and drops to
 * page-by-page so every other page still gets filled.  Returns 0 or -errno. */
static long uffd_fill(struct gph_service *s, uint8_t *dst, const uint8_t *src, size_t len, size_t ps)
{
    size_t done = 0;
    int per_page = 0;
    while (done < len) {
        size_t chunk = per_page ? ps : len - done;
        int64_t progress = 0;
        int rc;
        if (src) {
            struct uffdio_copy c = {.dst = (uint64_t)(uintptr_t)(dst + done),
                                    .src = (uint64_t)(uintptr_t)(src + done), .len = chunk,
                                    .mode = UFFDIO_COPY_MODE_DONTWAKE};
            rc = ioctl(s->uffd, UFFDIO_COPY, &c);
            progress = c.copy;
        } else {
            struct uffdio_zeropage z = {.range = {.start = (uint64_t)(uintptr_t)(dst + done), .len = chunk},
                                        .mode = UFFDIO_ZEROPAGE_MODE_DONTWAKE};
            rc = ioctl(s->uffd, UFFDIO_ZEROPAGE, &z);
            progress = z.zeropage;
        }
        if (rc == 0) {
            done += chunk;
            continue;
        }
        int e = errno;
        if (progress > 0)   /* partial progress: keep it */
            done += (size_t)progress;
        if (e == EAGAIN || e == EINTR)
            continue;
        if (e == EEXIST) {
            if (per_page || chunk == ps) {
                /* the page at dst+done: a marker (zero_copy_page fills it), or really there --
                 * skip it, the final wake covers it */
                if (src || zero_copy_page(s, dst + done, ps) == -EEXIST)
                    ADD(s->total.eexist, 1);
                done += ps;
            }
            per_page = 1;
            continue;
        }
        return -e;
    }
    return 0;
}

long gph_uffd_copy_(struct gph_service *s, uint8_t *dst, const uint8_t *src, size_t len, size_t ps)
{
    return uffd_fill(s, dst, src, len, ps);
}

void gph_uffd_wake_(struct gph_service *s, uint8_t *start, size_t len)
{
    struct uffdio_range w = {.start = (uint64_t)(uintptr_t)start, .len = len};
    while (ioctl(s->uffd, UFFDIO_WAKE, &w) != 0 && (errno == EINTR || errno == EAGAIN))
        ;
}

/* --- deciding a page's source ------------------------------------------------------------- */
struct source {
    int kind;
    int32_t store;
    int64_t off;   /* byte offset in the store (file offset, or slot * page_size) */
};

static struct source page_source(const struct gph_region *r, int64_t p, uint8_t s)
{
    struct source src = {GPH_SRC_ZERO, 0, 0};
    uint8_t usage = s & GPH_USAGE_MASK, content = s & GPH_CONTENT_MASK;
    if (content == GPH_CONTENT_PRESERVED) {
        src.kind = GPH_SRC_SWAP;
        src.store = __atomic_load_n(&r->d.swap_store[p], __ATOMIC_ACQUIRE);
        src.off = __atomic_load_n(&r->d.swap_slot[p], __ATOMIC_ACQUIRE) * (int64_t)r->d.page_size;
    } else if (usage == GPH_USAGE_VOLATILE) {
        int32_t st = __atomic_load_n(&r->d.backing_store[p], __ATOMIC_ACQUIRE);
        if (st > 0) {
            src.kind = GPH_SRC_FILE;
            src.store = st;
            src.off = __atomic_load_n(&r->d.backing_offset[p], __ATOMIC_ACQUIRE);
        }
    }
    return src;
}

/* May neighbour q join a fault-around run next to a page with source `want` at distance d? */
static int neighbour_fits(const struct gph_region *r, int64_t q, int64_t d, const struct source *want,
                          uint8_t *seen)
{
    uint8_t s = __atomic_load_n(&r->d.states[q], __ATOMIC_ACQUIRE);
    if (s & GPH_FLAG_MASK)
        return 0;
    /* only pages the tables say are missing: never copy over a resident page -- nor over a lazily
     * freed one (MADV_FREE), which may still be mapped: the copy would skip it (EEXIST) and mark
     * it resident while the kernel can still reclaim it (lazyfree.c) */
    uint8_t content = s & GPH_CONTENT_MASK;
    if (content == GPH_CONTENT_RESIDENT || content == GPH_CONTENT_LAZY)
        return 0;
    struct source src = page_source(r, q, s);
    if (src.kind != want->kind)
        return 0;
    if (src.kind != GPH_SRC_ZERO &&
        (src.store != want->store || src.off != want->off + d * (int64_t)r->d.page_size))
        return 0;
    *seen = s;
    return 1;
}

static void ring_append(struct gph_region *r, int64_t p)
{
    pthread_mutex_lock(&r->ring_lock);
    if (!r->ring)   /* first discard fault of this region: most guests never take one */
        r->ring = malloc(r->ring_cap * sizeof *r->ring);
    if (r->ring && r->ring_head - r->ring_tail < r->ring_cap) {
        r->ring[r->ring_head % r->ring_cap] = p;
        r->ring_head++;
    } else {
        ADD(r->st.ring_overflows, 1);
    }
    pthread_mutex_unlock(&r->ring_lock);
}

/* After a successful fill: content RESIDENT, hold released; a page the host holds is marked
 * FILLED instead (the host's finish then leaves it resident). */
static void mark_served(uint8_t *b)
{
    uint8_t old = __atomic_load_n(b, __ATOMIC_ACQUIRE), want;
    do {
        if (old & GPH_FLAG_BUSY)
            want = (uint8_t)((old & ~GPH_FLAG_SERVING) | GPH_FLAG_FILLED);
        else
            want = (uint8_t)((old & ~(GPH_FLAG_SERVING | GPH_CONTENT_MASK)) | GPH_CONTENT_RESIDENT);
    } while (!__atomic_compare_exchange_n(b, &old, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
}

static void spin_pause(unsigned *spins)
{
    if (++*spins < 64)
        gph_cpu_relax();
    else
        sched_yield();
}

/* Serve page p of region rid (a fault, or a materialize step when `write` is -1).
 * bounce: GPH_WINDOW_MAX bytes owned by the calling thread. */
static void serve_page(struct gph_service *s, struct gph_region *r, int64_t p, int write, uint8_t *bounce,
                       uint64_t t0)
{
    int rid = r->rid;
    size_t ps = r->d.page_size;
    uint8_t *states = r->d.states;
    int64_t lo = p, hi = p + 1;
    struct source src;
    unsigned spins = 0;
    for (;;) {
        uint8_t st = __atomic_load_n(&states[p], __ATOMIC_ACQUIRE);
        uint8_t usage = st & GPH_USAGE_MASK;
        if (st & GPH_FLAG_BUSY) {
            if (usage == GPH_USAGE_STABLE || usage == GPH_USAGE_POTVOL) {
                /* host is detaching/writing this page (swap-out, P discard): its bytes are in
                 * flight to swap.  The host never waits for us, so waiting here is bounded. */
                spin_pause(&spins);
                continue;
            }
            if (st & GPH_FLAG_FILLED)
                goto wake_only;   /* served already (another fault of the same page) */
            /* V/U held by the host: the page is clean (file) or don't-care (zeros) */
            src = page_source(r, p, (uint8_t)((st & ~GPH_CONTENT_MASK) | GPH_CONTENT_ZERO));
            break;
        }
        if (st & GPH_FLAG_SERVING) {   /* another thread (materialize) is filling it */
            spin_pause(&spins);
            continue;
        }
        src = page_source(r, p, st);
        if (write < 0 && src.kind == GPH_SRC_ZERO)
            return;   /* materialize: zeros need no filling */
        if (__atomic_compare_exchange_n(&states[p], &st, (uint8_t)(st | GPH_FLAG_SERVING), 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            break;
    }
    /* fault-around within the aligned window: take each fitting neighbour's hold by CAS */
    size_t window = __atomic_load_n(&s->window_bytes, __ATOMIC_RELAXED);
    int64_t wpages = (int64_t)(window / ps);
    if (wpages > 1 && !(__atomic_load_n(&states[p], __ATOMIC_ACQUIRE) & GPH_FLAG_BUSY)) {
        int64_t wstart = p - p % wpages, wend = wstart + wpages;
        if (wend > r->d.npages)
            wend = r->d.npages;
        for (int64_t q = p + 1; q < wend; q++) {
            uint8_t seen;
            if (!neighbour_fits(r, q, q - p, &src, &seen) ||
                !__atomic_compare_exchange_n(&states[q], &seen, (uint8_t)(seen | GPH_FLAG_SERVING), 0,
                                             __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                break;
            hi = q + 1;
        }
        for (int64_t q = p - 1; q >= wstart; q--) {
            uint8_t seen;
            if (!neighbour_fits(r, q, q - p, &src, &seen) ||
                !__atomic_compare_exchange_n(&states[q], &seen, (uint8_t)(seen | GPH_FLAG_SERVING), 0,
                                             __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                break;
            lo = q;
        }
    }
    size_t npg = (size_t)(hi - lo), len = npg * ps;
    uint8_t *dst = r->d.base + (size_t)lo * ps;
    gph_race_delay_(s);   /* holding SERVING: a test widens this window */
    int64_t off0 = src.off - (p - lo) * (int64_t)ps;
    long rc = 0;
    int64_t lost = 0;   /* pages served as zeros because their source failed */
    if (src.kind != GPH_SRC_ZERO) {
        /* read and copy in pieces that stay in the CPU cache: a 2 MiB bounce read back from
         * memory costs more than the second copy itself */
        int fd = gph_store_fd_(src.store);
        const uint8_t *mapped = fd < 0 ? NULL : gph_store_map_get_(src.store, off0, len);
        int via_map = 0;
        if (mapped) {   /* one copy, straight from the page cache */
            rc = gph_uffd_copy_(s, dst, mapped, len, ps);
            gph_store_map_put_(src.store);
            if (rc == -EFAULT)   /* the file shrank under the mapping: pread zero-fills past EOF */
                rc = 0;          /* (pages already copied then report EEXIST: benign) */
            else
                via_map = 1;
        }
        for (size_t done = 0; !via_map && done < len && rc == 0; done += GPH_COPY_CHUNK) {
            size_t piece = len - done < GPH_COPY_CHUNK ? len - done : GPH_COPY_CHUNK;
            long got = fd < 0 ? fd : gph_read_full(fd, bounce, piece, off0 + (int64_t)done);
            if (got < 0) {   /* unreadable source: record, serve zeros, count lost -- never hang */
                gph_record_error_(s, (int)-got, fd < 0 ? "store lookup" : "pread", rid, p);
                memset(bounce, 0, piece);
                lost += (int64_t)(piece / ps);
            } else {   /* bytes that are not what the guest read are lost too (zeroed in bounce) */
                int64_t bad = 0;
                const char *why = NULL;
                long nbad = gph_store_check_(src.store, off0 + (int64_t)done, bounce, piece, ps, &bad, &why);
                if (nbad > 0) {
                    gph_record_error_(s, ESTALE, why, rid, lo + (int64_t)(done / ps) + bad);
                    lost += nbad;
                }
            }
            rc = gph_uffd_copy_(s, dst + done, bounce, piece, ps);
        }
    } else if (write == 0) {
        rc = uffd_fill(s, dst, NULL, len, ps);
    } else {
        /* write fault: a zeroed copy (a zero page would cost a second, copy-on-write fault) */
        rc = gph_uffd_copy_(s, dst, s->zeros, len, ps);
    }
    if (rc < 0)   /* the range vanished (unregistered/unmapped) or the kernel refused */
        gph_record_error_(s, (int)-rc, src.kind == GPH_SRC_ZERO ? "UFFDIO_ZEROPAGE" : "UFFDIO_COPY", rid, p);
    uint64_t nlazy = 0;   /* lazily freed pages that faulted: the kernel had reclaimed them */
    for (int64_t q = lo; q < hi; q++) {
        uint8_t st = __atomic_load_n(&states[q], __ATOMIC_ACQUIRE);
        nlazy += (st & GPH_CONTENT_MASK) == GPH_CONTENT_LAZY;
        int32_t swap_id = __atomic_load_n(&r->d.swap_store[q], __ATOMIC_ACQUIRE);
        if (swap_id != 0 && !(st & GPH_FLAG_BUSY)) {
            /* swap-in -- or a preserved page the guest gave up (Sp -> Uz/Vz): either way its
             * slot is free again; the record goes before the state says resident */
            gph_store_free_slots_(swap_id, __atomic_load_n(&r->d.swap_slot[q], __ATOMIC_ACQUIRE), 1);
            __atomic_store_n(&r->d.swap_store[q], 0, __ATOMIC_RELEASE);
        }
        if (src.kind == GPH_SRC_FILE && (st & GPH_USAGE_MASK) == GPH_USAGE_VOLATILE)
            ring_append(r, q);
        mark_served(&states[q]);
    }
    struct gph_fault_stats *sts[2] = {&r->st, &s->total};
    uint64_t dt = gph_now_ns_() - t0;
    for (int i = 0; i < 2; i++) {
        struct gph_fault_stats *x = sts[i];
        ADD(x->faults, 1);
        ADD(x->pages_served, npg);
        ADD(x->bytes_served, len);
        ADD(x->fault_around_hits, npg - 1);
        if (src.kind == GPH_SRC_ZERO)
            ADD(x->zero_fills, npg);
        else if (src.kind == GPH_SRC_FILE) {
            ADD(x->file_reloads, npg);
            ADD(x->discard_faults, 1);
        } else
            ADD(x->swap_ins, npg);
        if (lost)
            ADD(x->lost_pages, lost);
        ADD(x->lazy_refaults, nlazy);
        ADD(x->hist[hist_bucket(dt)], 1);
    }
    gph_uffd_wake_(s, dst, len);   /* tables and counters first, then the waiters */
    return;
wake_only:;
    struct uffdio_range w = {.start = (uint64_t)(uintptr_t)(r->d.base + (size_t)p * ps), .len = ps};
    ioctl(s->uffd, UFFDIO_WAKE, &w);
}

/* The guard against a fault that never ends.  Answering EEXIST means "the page is there": the
 * woken thread retries its access and should not fault again.  If it does, over and over, the
 * page is missing in a way the fill cannot see (the known case, a uffd-wp marker, is filled by
 * zero_copy_page) and the guest thread would spin forever -- with the GIL, the whole interpreter.
 * After GPH_REFAULT_RESOLVE such answers in a row the page is un-write-protected, which turns a
 * marker back into a none pte that the next fill installs over; the loop is counted
 * (refault_loops).  A loop that outlives that (GPH_REFAULT_REPORT) is recorded as an error naming
 * the page, so check() says where the guest is stuck.  A few EEXIST answers in a row are normal:
 * threads faulting on the same page at once are all answered by the first fill. */
#define GPH_REFAULT_RESOLVE 8
#define GPH_REFAULT_REPORT 1024

static void watch_refault(struct gph_service *s, struct gph_region *r, int rid, uint64_t page, int answered_eexist)
{
    struct gph_refault *w = &s->refaults[(page / s->page_size) % GPH_REFAULT_SLOTS];
    if (!answered_eexist) {
        if (w->page == page)
            w->count = 0;
        return;
    }
    if (w->page != page) {
        w->page = page;
        w->count = 0;
    }
    if (++w->count % GPH_REFAULT_RESOLVE != 0)
        return;
    struct gph_fault_stats *sts[2] = {&r->st, &s->total};
    for (int i = 0; i < 2; i++)
        ADD(sts[i]->refault_loops, 1);
    if (s->features & UFFD_FEATURE_WP_ASYNC) {
        struct uffdio_writeprotect wp = {.range = {.start = page, .len = s->page_size}, .mode = 0};
        while (ioctl(s->uffd, UFFDIO_WRITEPROTECT, &wp) != 0 && (errno == EAGAIN || errno == EINTR))
            ;
    }
    if (w->count == GPH_REFAULT_REPORT)
        gph_record_error_(s, EEXIST, "UFFDIO_COPY/ZEROPAGE (the page keeps faulting)", rid,
                          (int64_t)((page - (uint64_t)(uintptr_t)r->d.base) / r->d.page_size));
    gph_uffd_wake_(s, (uint8_t *)(uintptr_t)page, s->page_size);
}

static void serve_msg(struct gph_service *s, const struct uffd_msg *m, uint64_t t0)
{
    if (m->event != UFFD_EVENT_PAGEFAULT)
        return;   /* no other event was asked for (no EVENT_REMOVE: see the header comment) */
    uint64_t addr = m->arg.pagefault.address;
    uint64_t page = addr & ~(uint64_t)(s->page_size - 1);
    int write = (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE) != 0;
    struct gph_region *r = gph_regions_at_(&s->regions, addr);
    if (!r) {
        /* the host's scratch area (a hole left by UFFDIO_MOVE), or a region unregistered since
         * the message was queued: zeros for scratch, a wake for the rest */
        if (addr >= (uint64_t)(uintptr_t)s->scratch &&
            addr < (uint64_t)(uintptr_t)s->scratch + GPH_SCRATCH_BYTES) {
            uffd_fill(s, (uint8_t *)(uintptr_t)page, s->zeros, s->page_size, s->page_size);
        }
        gph_uffd_wake_(s, (uint8_t *)(uintptr_t)page, s->page_size);
        return;
    }
    int64_t p = (int64_t)((addr - (uint64_t)(uintptr_t)r->d.base) / r->d.page_size);
    /* other threads count EEXIST too (fills, materialize): the guard may see one too many, which
     * costs at most an early un-write-protect (the page then reads written: preserved, not lost) */
    uint64_t eexist0 = __atomic_load_n(&s->total.eexist, __ATOMIC_RELAXED);
    serve_page(s, r, p, write, s->bounce, t0);
    watch_refault(s, r, r->rid, page, __atomic_load_n(&s->total.eexist, __ATOMIC_RELAXED) != eexist0);
}

#define MSG_BATCH 64

static void *fault_main(void *arg)
{
    struct gph_service *s = arg;
    struct uffd_msg msgs[MSG_BATCH];
    struct pollfd pf[2] = {{.fd = s->uffd, .events = POLLIN}, {.fd = s->wakefd, .events = POLLIN}};
    for (;;) {
        int stopping = __atomic_load_n(&s->stopping, __ATOMIC_ACQUIRE);
        /* when stopping, drain what is queued without blocking, then leave */
        int n = poll(pf, 2, stopping ? 0 : -1);
        if (n < 0) {
            /* never leave: a faulting thread would hang.  Record, breathe, poll again. */
            if (errno != EINTR) {
                gph_record_error_(s, errno, "poll", -1, -1);
                usleep(1000);
            }
            continue;
        }
        if (pf[1].revents & POLLIN) {
            uint64_t v;
            ssize_t rr = read(s->wakefd, &v, sizeof v);
            (void)rr;
            continue;   /* re-read `stopping` and drain */
        }
        if (!(pf[0].revents & POLLIN)) {
            if (stopping)
                break;
            continue;
        }
        ssize_t got = read(s->uffd, msgs, sizeof msgs);
        if (got < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                gph_record_error_(s, errno, "read(userfaultfd)", -1, -1);
                usleep(1000);
            }
            continue;
        }
        uint64_t t0 = gph_now_ns_();
        pthread_rwlock_rdlock(&s->lock);
        for (size_t i = 0; i < (size_t)got / sizeof msgs[0]; i++)
            serve_msg(s, &msgs[i], t0);
        pthread_rwlock_unlock(&s->lock);
    }
    return NULL;
}

/* --- lifetime ------------------------------------------------------------------------------ */
static void *map_buf(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    madvise(p, len, MADV_NOHUGEPAGE);
    return p;
}

long gph_service_create(struct gph_service **out, int flags, size_t window_bytes, uint64_t *features_out,
                        struct gph_err *err)
{
    struct gph_service *s = calloc(1, sizeof *s);
    if (!s) {
        set_err(err, "calloc", 0, 0);
        return -ENOMEM;
    }
    s->uffd = s->wakefd = -1;
    s->flags = flags;
    s->page_size = (size_t)sysconf(_SC_PAGESIZE);
    s->window_bytes = window_bytes;
    pthread_rwlock_init(&s->lock, NULL);
    pthread_mutex_init(&s->err_lock, NULL);
    pthread_mutex_init(&s->host_lock, NULL);
    long rc;
    int uflags = O_CLOEXEC | O_NONBLOCK | ((flags & GPH_SVC_USER_MODE_ONLY) ? UFFD_USER_MODE_ONLY : 0);
    s->uffd = (int)syscall(SYS_userfaultfd, uflags);
    if (s->uffd < 0) {
        rc = -errno;
        set_err(err, (flags & GPH_SVC_USER_MODE_ONLY) ? "userfaultfd(UFFD_USER_MODE_ONLY)" : "userfaultfd", 0, 0);
        goto fail;
    }
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
    if (flags & GPH_SVC_DIRTY)
        api.features |= UFFD_FEATURE_WP_ASYNC;
    if (flags & GPH_SVC_MOVE)
        api.features |= UFFD_FEATURE_MOVE;
    if (ioctl(s->uffd, UFFDIO_API, &api) != 0) {
        rc = -errno;
        set_err(err, "ioctl(UFFDIO_API)", 0, 0);
        goto fail;
    }
    s->features = api.features;
    if (features_out)
        *features_out = api.features;
    s->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->wakefd < 0) {
        rc = -errno;
        set_err(err, "eventfd", 0, 0);
        goto fail;
    }
    s->bounce = map_buf(GPH_WINDOW_MAX);
    s->zeros = map_buf(GPH_WINDOW_MAX);
    s->host_buf = map_buf(GPH_SCRATCH_BYTES);
    s->scratch = map_buf(GPH_SCRATCH_BYTES);
    if (!s->bounce || !s->zeros || !s->host_buf || !s->scratch) {
        rc = -ENOMEM;
        set_err(err, "mmap", 0, 0);
        goto fail;
    }
    memset(s->bounce, 0, GPH_WINDOW_MAX);     /* populate: the thread never faults on its own buffers */
    memset(s->host_buf, 0, GPH_SCRATCH_BYTES);
    for (size_t i = 0; i < GPH_WINDOW_MAX; i += s->page_size)
        ((volatile uint8_t *)s->zeros)[i];
    if (flags & GPH_SVC_MOVE) {
        struct uffdio_register reg = {.range = {.start = (uint64_t)(uintptr_t)s->scratch, .len = GPH_SCRATCH_BYTES},
                                      .mode = UFFDIO_REGISTER_MODE_MISSING |
                                              ((flags & GPH_SVC_DIRTY) ? UFFDIO_REGISTER_MODE_WP : 0)};
        if (ioctl(s->uffd, UFFDIO_REGISTER, &reg) != 0) {
            rc = -errno;
            set_err(err, "ioctl(UFFDIO_REGISTER) scratch", 0, 0);
            goto fail;
        }
    }
    *out = s;
    return 0;
fail:
    gph_service_destroy(s);
    return rc;
}

long gph_service_start(struct gph_service *s, struct gph_err *err)
{
    if (s->started)
        return 0;
    int e = pthread_create(&s->thread, NULL, fault_main, s);
    if (e) {
        set_err(err, "pthread_create", 0, 0);
        return -e;
    }
    s->started = 1;
    return 0;
}

void gph_race_delay_(struct gph_service *s)
{
    uint64_t ns = __atomic_load_n(&s->race_delay_ns, __ATOMIC_RELAXED);
    if (ns) {
        struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u), .tv_nsec = (long)(ns % 1000000000u)};
        nanosleep(&ts, NULL);
    }
}

long gph_service_set_race_delay(struct gph_service *s, uint64_t ns)
{
    __atomic_store_n(&s->race_delay_ns, ns, __ATOMIC_RELAXED);
    return 0;
}

long gph_service_set_window(struct gph_service *s, size_t window_bytes)
{
    if (window_bytes > GPH_WINDOW_MAX)
        return -EINVAL;
    __atomic_store_n(&s->window_bytes, window_bytes, __ATOMIC_RELAXED);
    return 0;
}

int gph_service_uffd(struct gph_service *s)
{
    return s->uffd;
}

struct gph_region *gph_region_(struct gph_service *s, int rid)
{
    return gph_regions_get_(&s->regions, rid);
}

struct gph_region *gph_region_open_(struct gph_service *s, int rid)
{
    struct gph_region *r = gph_region_(s, rid);
    return r && !r->closing ? r : NULL;
}

long gph_service_register(struct gph_service *s, const struct gph_region_desc *d, struct gph_err *err)
{
    if (d->page_size != s->page_size) {   /* userfaultfd fills and wakes whole kernel pages */
        set_err(err, "register: page size is not the kernel's", 0, d->npages);
        return -EINVAL;
    }
    struct gph_region *r = calloc(1, sizeof *r);
    if (!r) {
        set_err(err, "calloc", 0, 0);
        return -ENOMEM;
    }
    r->d = *d;
    r->ring_cap = (uint64_t)d->npages + 1024;
    pthread_mutex_init(&r->ring_lock, NULL);
    struct uffdio_register reg = {.range = {.start = (uint64_t)(uintptr_t)d->base,
                                            .len = (uint64_t)d->npages * d->page_size},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING |
                                          ((s->features & UFFD_FEATURE_WP_ASYNC) ? UFFDIO_REGISTER_MODE_WP : 0)};
    /* enter and register the region under one write lock: a second registration cannot take
     * the same id, and the fault thread (which serves under the read lock) finds the region
     * complete before the first fault on it can be served */
    pthread_rwlock_wrlock(&s->lock);
    gph_race_delay_(s);   /* tests: a concurrent registration waits here, at the lock */
    long rc = gph_regions_add_(&s->regions, r);
    if (rc == -ENOSPC)
        set_err(err, "register: region table full (1048576 regions)", 0, 0);
    else if (rc < 0)
        set_err(err, "realloc", 0, 0);
    else if (ioctl(s->uffd, UFFDIO_REGISTER, &reg) != 0) {
        rc = -errno;
        set_err(err, "ioctl(UFFDIO_REGISTER)", 0, d->npages);
        gph_regions_remove_(&s->regions, r->rid);
    }
    pthread_rwlock_unlock(&s->lock);
    if (rc < 0) {
        pthread_mutex_destroy(&r->ring_lock);
        free(r);
    }
    return rc;
}

long gph_service_unregister(struct gph_service *s, int rid, int materialize, struct gph_err *err)
{
    /* Close the region to the host first.  A host operation holds the read lock from its region
     * check to its last state change, so once this write lock is ours none that saw the region
     * open is still running, and none that starts later takes a page.  Only then is "reload
     * what lives elsewhere" final: nothing can be swapped out or discarded behind it. */
    pthread_rwlock_wrlock(&s->lock);
    struct gph_region *r = gph_region_open_(s, rid);
    if (r)
        r->closing = 1;
    pthread_rwlock_unlock(&s->lock);
    if (!r)
        return -ENOENT;   /* not registered, or another unregister is under way */
    long rc = 0;
    if (materialize) {
        uint8_t *bounce = map_buf(GPH_WINDOW_MAX);
        if (!bounce) {
            set_err(err, "mmap", 0, 0);
            pthread_rwlock_wrlock(&s->lock);
            r->closing = 0;   /* still served: the caller may try again */
            pthread_rwlock_unlock(&s->lock);
            return -ENOMEM;
        }
        memset(bounce, 0, GPH_WINDOW_MAX);
        pthread_rwlock_rdlock(&s->lock);
        for (int64_t p = 0; p < r->d.npages; p++) {
            uint8_t st = __atomic_load_n(&r->d.states[p], __ATOMIC_ACQUIRE);
            uint8_t c = st & GPH_CONTENT_MASK;
            if (c == GPH_CONTENT_LAZY && (st & GPH_USAGE_MASK) == GPH_USAGE_VOLATILE) {
                /* a lazily freed cache page: keep it if present (the kernel could still reclaim
                 * it once unserved), else it is discarded and reloaded below (lazyfree.c) */
                gph_resolve_lazy_page(&r->d.states[p], r->d.base + (size_t)p * r->d.page_size,
                                      r->d.page_size, 1, NULL);
                st = __atomic_load_n(&r->d.states[p], __ATOMIC_ACQUIRE);
                c = st & GPH_CONTENT_MASK;
            }
            if (c == GPH_CONTENT_PRESERVED ||
                (c == GPH_CONTENT_ZERO && (st & GPH_USAGE_MASK) == GPH_USAGE_VOLATILE))
                serve_page(s, r, p, -1, bounce, gph_now_ns_());
        }
        pthread_rwlock_unlock(&s->lock);
        munmap(bounce, GPH_WINDOW_MAX);
    }
    struct uffdio_range range = {.start = (uint64_t)(uintptr_t)r->d.base,
                                 .len = (uint64_t)r->d.npages * r->d.page_size};
    /* UNREGISTER wakes every thread still waiting on this range; with the write lock held the
     * fault thread is between batches, so it never serves into a region being torn down */
    pthread_rwlock_wrlock(&s->lock);
    if (ioctl(s->uffd, UFFDIO_UNREGISTER, &range) != 0) {
        rc = -errno;
        set_err(err, "ioctl(UFFDIO_UNREGISTER)", 0, r->d.npages);
    }
    gph_regions_remove_(&s->regions, rid);
    pthread_rwlock_unlock(&s->lock);
    pthread_mutex_destroy(&r->ring_lock);
    free(r->ring);
    free(r);
    return rc;
}

long gph_service_stop(struct gph_service *s)
{
    if (!s->started)
        return 0;
    __atomic_store_n(&s->stopping, 1, __ATOMIC_RELEASE);
    uint64_t one = 1;
    ssize_t w = write(s->wakefd, &one, sizeof one);
    (void)w;
    pthread_join(s->thread, NULL);
    s->started = 0;
    __atomic_store_n(&s->stopping, 0, __ATOMIC_RELEASE);
    return 0;
}

void gph_service_destroy(struct gph_service *s)
{
    if (!s)
        return;
    gph_service_stop(s);
    while (s->regions.nspan > 0) {
        int rid = s->regions.span[0]->rid;
        if (gph_service_unregister(s, rid, 0, NULL) == -ENOENT) {   /* left closing: drop it */
            struct gph_region *r = gph_regions_remove_(&s->regions, rid);
            pthread_mutex_destroy(&r->ring_lock);
            free(r->ring);
            free(r);
        }
    }
    if (s->uffd >= 0)
        close(s->uffd);   /* wakes anything left; the ranges become ordinary memory */
    if (s->wakefd >= 0)
        close(s->wakefd);
    if (s->bounce)
        munmap(s->bounce, GPH_WINDOW_MAX);
    if (s->zeros)
        munmap(s->zeros, GPH_WINDOW_MAX);
    if (s->host_buf)
        munmap(s->host_buf, GPH_SCRATCH_BYTES);
    if (s->scratch)
        munmap(s->scratch, GPH_SCRATCH_BYTES);
    gph_regions_free_(&s->regions);
    pthread_rwlock_destroy(&s->lock);
    pthread_mutex_destroy(&s->err_lock);
    pthread_mutex_destroy(&s->host_lock);
    free(s);
}

long gph_service_stats(struct gph_service *s, int rid, struct gph_fault_stats *out)
{
    const struct gph_fault_stats *src = &s->total;
    if (rid != -1) {   /* -1: the service's total */
        struct gph_region *r = gph_region_(s, rid);
        if (!r)
            return -ENOENT;
        src = &r->st;
    }
    const uint64_t *a = (const uint64_t *)src;
    uint64_t *b = (uint64_t *)out;
    for (size_t i = 0; i < sizeof *out / sizeof(uint64_t); i++)
        b[i] = __atomic_load_n(&a[i], __ATOMIC_RELAXED);
    return 0;
}

long gph_service_error(struct gph_service *s, struct gph_fault_error *out)
{
    pthread_mutex_lock(&s->err_lock);
    long n = (long)s->nerrors;
    *out = s->error;
    pthread_mutex_unlock(&s->err_lock);
    return n;
}

/* The guest's page-cache read miss into frames of a served region.  A frame whose content is
 * ZERO is missing (nothing was ever put there since the discard): instead of letting pread's
 * kernel-mode write fault to the fault thread, which would fill it with zeros first (REFERENCE §4:
 * a round trip per window), the calling thread holds it (SERVING), reads the file into a buffer
 * and installs it with UFFDIO_COPY.  Every other frame is read into in place (gph_fill_from_file).
 * The caller holds no page while it reads in place, so a fault there is served as usual. */
long gph_service_fill(struct gph_service *s, int rid, const int64_t *pages, size_t n, int fd,
                      const int64_t *offsets, int force_bounce, int64_t *installed, struct gph_err *err)
{
    long rc = 0;
    *installed = 0;
    uint8_t *take = calloc(n ? n : 1, 1);
    int64_t *rest = malloc((n ? n : 1) * sizeof(int64_t)), *rest_off = malloc((n ? n : 1) * sizeof(int64_t));
    /* one buffer per guest thread, kept: a fresh 128 KiB malloc is a fresh mmap, 32 faults */
    static __thread uint8_t *buf;
    /* page-aligned: a cache=none (O_DIRECT) backing file reads only into aligned buffers */
    void *aligned = NULL;
    if (!buf && posix_memalign(&aligned, 4096, GPH_COPY_CHUNK) == 0) {
        buf = aligned;
        memset(buf, 0, GPH_COPY_CHUNK);
    }
    if (!take || !rest || !rest_off || !buf) {
        set_err(err, "malloc", 0, (int64_t)n);
        rc = -ENOMEM;
        goto out_free;
    }
    pthread_rwlock_rdlock(&s->lock);
    struct gph_region *r = gph_region_(s, rid);
    if (!r) {
        set_err(err, "region", rid, 0);
        rc = -ENOENT;
        goto out;
    }
    size_t ps = r->d.page_size;
    /* every index before the first hold: a refusal must leave no page held */
    for (size_t i = 0; i < n; i++) {
        if (pages[i] < 0 || pages[i] >= r->d.npages) {
            set_err(err, "page index", pages[i], 1);
            rc = -ERANGE;
            goto out;
        }
    }
    for (size_t i = 0; i < n; i++) {
        uint8_t *b = &r->d.states[pages[i]];
        uint8_t st = __atomic_load_n(b, __ATOMIC_ACQUIRE);
        take[i] = !(st & GPH_FLAG_MASK) && (st & GPH_CONTENT_MASK) == GPH_CONTENT_ZERO &&
                  __atomic_compare_exchange_n(b, &st, (uint8_t)(st | GPH_FLAG_SERVING), 0,
                                              __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    size_t nrest = 0;
    size_t maxk = GPH_COPY_CHUNK / ps;
    for (size_t i = 0; i < n;) {
        if (!take[i]) {
            rest[nrest] = pages[i];
            rest_off[nrest++] = offsets[i];
            i++;
            continue;
        }
        size_t k = 1;
        while (i + k < n && k < maxk && take[i + k] && pages[i + k] == pages[i] + (int64_t)k &&
               offsets[i + k] == offsets[i] + (int64_t)(k * ps))
            k++;
        uint8_t *dst = r->d.base + (size_t)pages[i] * ps;
        long got = gph_read_full(fd, buf, k * ps, offsets[i]);
        long c = got < 0 ? got : gph_uffd_copy_(s, dst, buf, k * ps, ps);
        for (size_t j = 0; j < k; j++) {
            if (got < 0)   /* nothing installed: still missing, just no longer held */
                __atomic_fetch_and(&r->d.states[pages[i + j]], (uint8_t)~GPH_FLAG_SERVING, __ATOMIC_ACQ_REL);
            else
                mark_served(&r->d.states[pages[i + j]]);
        }
        gph_uffd_wake_(s, dst, k * ps);
        if (got < 0 && !rc) {
            set_err(err, "pread", pages[i], (int64_t)k);
            rc = got;
        } else if (c < 0) {   /* could not install (the range is going away): read in place */
            for (size_t j = 0; j < k; j++) {
                rest[nrest] = pages[i + j];
                rest_off[nrest++] = offsets[i + j];
            }
        } else {
            *installed += (int64_t)k;
        }
        i += k;
    }
    if (rc == 0 && nrest) {
        int64_t bounced = 0;
        long f = gph_fill_from_file(r->d.base, ps, r->d.npages, rest, nrest, fd, rest_off, force_bounce,
                                    &bounced, err);
        if (f < 0)
            rc = f;
    }
    if (rc == 0)
        rc = (long)n;
out:
    pthread_rwlock_unlock(&s->lock);
out_free:
    free(take);
    free(rest);
    free(rest_off);
    return rc;
}

long gph_service_reclaim_slots(struct gph_service *s, int rid, int32_t swap_id)
{
    long freed = 0;
    pthread_rwlock_rdlock(&s->lock);
    struct gph_region *r = gph_region_(s, rid);
    if (!r) {
        pthread_rwlock_unlock(&s->lock);
        return -ENOENT;
    }
    for (int64_t p = 0; p < r->d.npages; p++) {
        if (__atomic_load_n(&r->d.swap_store[p], __ATOMIC_ACQUIRE) != swap_id)
            continue;
        uint8_t st = __atomic_load_n(&r->d.states[p], __ATOMIC_ACQUIRE);
        /* a preserved page still needs its slot; a held one is the host's or the fault
         * thread's business (they free or set records only while holding the page) */
        if ((st & GPH_FLAG_MASK) || (st & GPH_CONTENT_MASK) == GPH_CONTENT_PRESERVED)
            continue;
        if (!__atomic_compare_exchange_n(&r->d.states[p], &st, (uint8_t)(st | GPH_FLAG_SERVING), 0,
                                         __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            continue;
        if (__atomic_load_n(&r->d.swap_store[p], __ATOMIC_ACQUIRE) == swap_id) {
            gph_store_free_slots_(swap_id, __atomic_load_n(&r->d.swap_slot[p], __ATOMIC_ACQUIRE), 1);
            __atomic_store_n(&r->d.swap_store[p], 0, __ATOMIC_RELEASE);
            freed++;
        }
        __atomic_fetch_and(&r->d.states[p], (uint8_t)~GPH_FLAG_SERVING, __ATOMIC_ACQ_REL);
    }
    pthread_rwlock_unlock(&s->lock);
    return freed;
}

long gph_service_drain(struct gph_service *s, int rid, int64_t *out, size_t cap)
{
    /* the read lock: unregister frees the ring under the write lock */
    pthread_rwlock_rdlock(&s->lock);
    struct gph_region *r = gph_region_(s, rid);
    size_t n = 0;
    if (r) {
        pthread_mutex_lock(&r->ring_lock);
        while (r->ring_tail < r->ring_head && n < cap)
            out[n++] = r->ring[r->ring_tail++ % r->ring_cap];
        pthread_mutex_unlock(&r->ring_lock);
    }
    pthread_rwlock_unlock(&s->lock);
    return r ? (long)n : -ENOENT;
}
