/* serve.c -- serving one missing page: decide its source from the C-owned tables, hold it and
 * its fitting neighbours (fault-around), copy, mark resident, count, wake. */
#include "faults_internal.h"
#include "statelock.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <sched.h>
#include <time.h>

uint64_t gph_now_ns_(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}


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

/* List page p as a served discard fault -- only while its backing record still names the file
 * page served (src).  The guest frees a page by clearing that record and then draining the list
 * (gphint/guest/guest_reclaim.py): checked under ring_lock, a fault that finishes after the drain
 * sees the cleared (or the next page's) record and lists nothing, one that finished before it is
 * drained and retired -- so no listed frame outlives the page it was served for. */
static void ring_append(struct gph_region *r, int64_t p, const struct source *src, int64_t off)
{
    pthread_mutex_lock(&r->ring_lock);
    if (__atomic_load_n(&r->d.backing_store[p], __ATOMIC_ACQUIRE) != src->store ||
        __atomic_load_n(&r->d.backing_offset[p], __ATOMIC_ACQUIRE) != off) {
        GPH_ADD(r->st.ring_stale, 1);   /* freed (and maybe reused) while it was being served */
        pthread_mutex_unlock(&r->ring_lock);
        return;
    }
    if (!r->ring)   /* first discard fault of this region: most guests never take one */
        r->ring = malloc(r->ring_cap * sizeof *r->ring);
    if (r->ring && r->ring_head - r->ring_tail < r->ring_cap) {
        r->ring[r->ring_head % r->ring_cap] = p;
        r->ring_head++;
    } else {
        GPH_ADD(r->st.ring_overflows, 1);
    }
    pthread_mutex_unlock(&r->ring_lock);
}

/* After a successful fill: content RESIDENT, hold released; a page the host holds is marked
 * FILLED instead (the host's finish then leaves it resident). */
void gph_mark_served_(uint8_t *b)
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

/* A fault's page and the run served with it: [lo, hi) around p, one source. */
struct run {
    int64_t p, lo, hi;
    struct source src;
};

enum { TAKE_SERVE, TAKE_WAKE, TAKE_NOTHING };

/* Decide page p's source and hold it (SERVING), or see that it needs no fill: TAKE_WAKE, served
 * already while the host held it; TAKE_NOTHING, a materialize step (write < 0) of a zero page.
 * A page the host holds is served without a hold of ours (the host's finish sees FILLED). */
static int take_page_bits(struct gph_region *r, struct run *run, int write, int hashed)
{
    uint8_t *b = &r->d.states[run->p];
    unsigned spins = 0;
    for (;;) {
        uint8_t st = __atomic_load_n(b, __ATOMIC_ACQUIRE);
        uint8_t usage = st & GPH_USAGE_MASK;
        if (st & GPH_FLAG_BUSY) {
            if (usage == GPH_USAGE_STABLE || usage == GPH_USAGE_POTVOL) {
                /* host is detaching/writing this page (swap-out, P discard): its bytes are in
                 * flight to swap.  The host never waits for us, so waiting here is bounded. */
                spin_pause(&spins);
                continue;
            }
            if (st & GPH_FLAG_FILLED)
                return TAKE_WAKE;   /* served already (another fault of the same page) */
            /* V/U held by the host: the page is clean (file) or don't-care (zeros) */
            run->src = page_source(r, run->p, (uint8_t)((st & ~GPH_CONTENT_MASK) | GPH_CONTENT_ZERO));
            return TAKE_SERVE;
        }
        if (st & GPH_FLAG_SERVING) {   /* another thread (materialize) is filling it */
            spin_pause(&spins);
            continue;
        }
        run->src = page_source(r, run->p, st);
        if (write < 0 && run->src.kind == GPH_SRC_ZERO)
            return TAKE_NOTHING;   /* materialize: zeros need no filling */
        if (hashed)   /* the page's lock is the hold: nobody else changes the byte meanwhile */
            return TAKE_SERVE;
        if (__atomic_compare_exchange_n(b, &st, (uint8_t)(st | GPH_FLAG_SERVING), 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return TAKE_SERVE;
    }
}

/* Hashed mode (statelock.h): the fault thread holds nothing else, so it waits for the page's
 * lock -- a host working on the page ends its one C call first, then the page is served from
 * its new state (FILLED is left for a lazily freed page the guest holds with BUSY).  The lock
 * stays held until the run is finished (TAKE_SERVE) and is released otherwise.  In a bit wait
 * inside take_page_bits the lock stays held: bit holders release without taking it. */
static int take_page(struct gph_region *r, struct run *run, int write, int hashed)
{
    uint8_t *b = &r->d.states[run->p];
    if (hashed)
        gph_statelock_lock(b);
    int taken = take_page_bits(r, run, write, hashed);
    if (hashed && taken != TAKE_SERVE)
        gph_statelock_unlock(b);
    return taken;
}

/* Hold neighbour q for the run if it fits (same kind of source, contiguous): 1 if taken. */
static int take_neighbour(struct gph_region *r, const struct run *run, int64_t q, int hashed)
{
    uint8_t seen, *b = &r->d.states[q];
    /* hashed: the bit is set under the page's lock (only tried: we hold our own page's), so a
     * host that checks the byte under that lock sees it */
    if (hashed && !gph_statelock_try(b))
        return 0;
    int taken = neighbour_fits(r, q, q - run->p, &run->src, &seen) &&
                __atomic_compare_exchange_n(b, &seen, (uint8_t)(seen | GPH_FLAG_SERVING), 0,
                                            __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    if (hashed)
        gph_statelock_unlock(b);
    return taken;
}

/* Fault-around within the aligned window: grow [lo, hi) while the neighbours fit.  Not around a
 * page the host holds: its neighbours may be the host's too. */
static void fault_around(struct gph_service *s, struct gph_region *r, struct run *run)
{
    size_t window = __atomic_load_n(&s->window_bytes, __ATOMIC_RELAXED);
    int64_t wpages = (int64_t)(window / r->d.page_size), p = run->p;
    if (wpages <= 1 || (__atomic_load_n(&r->d.states[p], __ATOMIC_ACQUIRE) & GPH_FLAG_BUSY))
        return;
    int64_t wstart = p - p % wpages, wend = wstart + wpages;
    if (wend > r->d.npages)
        wend = r->d.npages;
    for (int64_t q = p + 1; q < wend && take_neighbour(r, run, q, s->hashed); q++)
        run->hi = q + 1;
    for (int64_t q = p - 1; q >= wstart && take_neighbour(r, run, q, s->hashed); q--)
        run->lo = q;
}

/* Copy the run from its store (file or swap): straight from the store's mapping when it has one,
 * else pread into the bounce buffer in pieces that stay in the CPU cache (a 2 MiB bounce read
 * back from memory costs more than the second copy itself).  An unreadable source, or bytes that
 * are not what the guest read, are recorded and served as zeros -- never hang a fault; *lost
 * counts those pages.  Returns 0 or the UFFDIO_COPY's -errno. */
static long copy_from_store(struct gph_service *s, struct gph_region *r, const struct run *run,
                            uint8_t *bounce, int64_t *lost)
{
    size_t ps = r->d.page_size, len = (size_t)(run->hi - run->lo) * ps;
    uint8_t *dst = r->d.base + (size_t)run->lo * ps;
    int32_t store = run->src.store;
    int64_t off0 = run->src.off - (run->p - run->lo) * (int64_t)ps;
    int fd = gph_store_fd_(store);
    const uint8_t *mapped = fd < 0 ? NULL : gph_store_map_get_(store, off0, len);
    if (mapped) {   /* one copy, straight from the page cache */
        long rc = gph_uffd_copy_(s, dst, mapped, len, ps);
        gph_store_map_put_(store);
        if (rc != -EFAULT)
            return rc;
        /* the file shrank under the mapping: pread zero-fills past EOF (pages already copied
         * then report EEXIST: benign) */
    }
    long rc = 0;
    for (size_t done = 0; done < len && rc == 0; done += GPH_COPY_CHUNK) {
        size_t piece = len - done < GPH_COPY_CHUNK ? len - done : GPH_COPY_CHUNK;
        long got = fd < 0 ? fd : gph_read_full(fd, bounce, piece, off0 + (int64_t)done);
        if (got < 0) {   /* unreadable source: record, serve zeros, count lost */
            gph_record_error_(s, (int)-got, fd < 0 ? "store lookup" : "pread", r->rid, run->p);
            memset(bounce, 0, piece);
            *lost += (int64_t)(piece / ps);
        } else {   /* bytes that are not what the guest read are lost too (zeroed in bounce) */
            int64_t bad = 0;
            const char *why = NULL;
            long nbad = gph_store_check_(store, off0 + (int64_t)done, bounce, piece, ps, &bad, &why);
            if (nbad > 0) {
                gph_record_error_(s, ESTALE, why, r->rid, run->lo + (int64_t)(done / ps) + bad);
                *lost += nbad;
            }
        }
        rc = gph_uffd_copy_(s, dst + done, bounce, piece, ps);
    }
    return rc;
}

/* After the copy: free swap slots, list discard faults for the guest, release the holds.
 * Returns the lazily freed pages among them (the kernel had reclaimed them). */
static uint64_t finish_run(struct gph_region *r, const struct run *run)
{
    uint8_t *states = r->d.states;
    uint64_t nlazy = 0;
    for (int64_t q = run->lo; q < run->hi; q++) {
        uint8_t st = __atomic_load_n(&states[q], __ATOMIC_ACQUIRE);
        nlazy += (st & GPH_CONTENT_MASK) == GPH_CONTENT_LAZY;
        int32_t swap_id = __atomic_load_n(&r->d.swap_store[q], __ATOMIC_ACQUIRE);
        if (swap_id != 0 && !(st & GPH_FLAG_BUSY)) {
            /* swap-in -- or a preserved page the guest gave up (Sp -> Uz/Vz): either way its
             * slot is free again; the record goes before the state says resident */
            gph_store_free_slots_(swap_id, __atomic_load_n(&r->d.swap_slot[q], __ATOMIC_ACQUIRE), 1);
            __atomic_store_n(&r->d.swap_store[q], 0, __ATOMIC_RELEASE);
        }
        if (run->src.kind == GPH_SRC_FILE && (st & GPH_USAGE_MASK) == GPH_USAGE_VOLATILE)
            ring_append(r, q, &run->src, run->src.off + (q - run->p) * (int64_t)r->d.page_size);
        gph_mark_served_(&states[q]);
    }
    return nlazy;
}

/* Count one served fault in the region's and the service's counters. */
static void count_fault(struct gph_service *s, struct gph_region *r, const struct run *run, int64_t lost,
                        uint64_t nlazy, uint64_t dt)
{
    uint64_t npg = (uint64_t)(run->hi - run->lo);
    struct gph_fault_stats *sts[2] = {&r->st, &s->total};
    for (int i = 0; i < 2; i++) {
        struct gph_fault_stats *x = sts[i];
        GPH_ADD(x->faults, 1);
        GPH_ADD(x->pages_served, npg);
        GPH_ADD(x->bytes_served, npg * r->d.page_size);
        GPH_ADD(x->fault_around_hits, npg - 1);
        if (run->src.kind == GPH_SRC_ZERO)
            GPH_ADD(x->zero_fills, npg);
        else if (run->src.kind == GPH_SRC_FILE) {
            GPH_ADD(x->file_reloads, npg);
            GPH_ADD(x->discard_faults, 1);
        } else
            GPH_ADD(x->swap_ins, npg);
        if (lost)
            GPH_ADD(x->lost_pages, lost);
        GPH_ADD(x->lazy_refaults, nlazy);
        GPH_ADD(x->hist[hist_bucket(dt)], 1);
    }
}

/* Serve page p of region r (a fault, or a materialize step when `write` is -1): take it, grow
 * the run, fill it from its source, update tables and counters, then wake the waiters.
 * bounce: GPH_WINDOW_MAX bytes owned by the calling thread. */
void gph_serve_page_(struct gph_service *s, struct gph_region *r, int64_t p, int write, uint8_t *bounce,
                     uint64_t t0)
{
    size_t ps = r->d.page_size;
    struct run run = {.p = p, .lo = p, .hi = p + 1};
    int hashed = s->hashed;
    int taken = take_page(r, &run, write, hashed);
    if (taken == TAKE_NOTHING)
        return;
    if (taken == TAKE_WAKE) {
        gph_uffd_wake_(s, r->d.base + (size_t)p * ps, ps);
        return;
    }
    fault_around(s, r, &run);
    size_t len = (size_t)(run.hi - run.lo) * ps;
    uint8_t *dst = r->d.base + (size_t)run.lo * ps;
    gph_race_delay_(s);   /* holding SERVING (or the page's lock): a test widens this window */
    long rc;
    int64_t lost = 0;   /* pages served as zeros because their source failed */
    if (run.src.kind != GPH_SRC_ZERO)
        rc = copy_from_store(s, r, &run, bounce, &lost);
    else if (write == 0)
        rc = gph_uffd_fill_(s, dst, NULL, len, ps);
    else   /* write fault: a zeroed copy (a zero page would cost a second, copy-on-write fault) */
        rc = gph_uffd_copy_(s, dst, s->zeros, len, ps);
    if (rc < 0)   /* the range vanished (unregistered/unmapped) or the kernel refused */
        gph_record_error_(s, (int)-rc, run.src.kind == GPH_SRC_ZERO ? "UFFDIO_ZEROPAGE" : "UFFDIO_COPY",
                          r->rid, p);
    uint64_t nlazy = finish_run(r, &run);
    if (hashed)
        gph_statelock_unlock(&r->d.states[p]);
    count_fault(s, r, &run, lost, nlazy, gph_now_ns_() - t0);
    gph_uffd_wake_(s, dst, len);   /* tables and counters first, then the waiters */
}
