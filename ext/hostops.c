/* hostops.c -- the host side of the state protocol: discard and swap-out without losing a write.
 *
 * Each operation is pick -> act -> finish inside one C call (GIL released):
 *   pick    CAS Xr -> Xr|BUSY; a page held or changed since the caller chose it is skipped
 *           (a discard's U/V pages: pick_run, 8 state bytes per CAS, then finish_run);
 *   act     UNUSED/VOLATILE: madvise (their bytes are don't-care / clean copies of a file);
 *           STABLE and POT_VOLATILE: *detach* the page atomically with UFFDIO_MOVE into the
 *           service's scratch area first, so a concurrent guest write lands either before the
 *           detach (and is carried along) or after it (it faults, and the fault thread waits for
 *           BUSY to clear).  A plain "write to swap, then madvise" would lose a write made between
 *           the two -- the race a host's try_to_unmap closes in the kernel;
 *   finish  record (swap slot) before the state says PRESERVED/ZERO; release BUSY.
 * MADV_FREE leaves an UNUSED/VOLATILE page lazily freed (Xr -> Xf: still mapped until the kernel
 * reclaims it, see lazyfree.c), never ZERO; MADV_DONTNEED also takes lazily freed pages (Xf -> Xz),
 * which is what the kernel's reclaim would do with them first.
 * POT_VOLATILE: the dirty bit (PAGEMAP_SCAN) sends written pages to swap; a page that reads clean
 * is detached and compared with its backing file -- a write that slipped in between the scan and
 * the detach shows up as a difference and the page is preserved instead (Pr -> Sp, never lost).
 * Drop: a preserved page whose content nobody needs any more gives its swap copy up (Sp -> Sz). */
#include "faults_internal.h"
#include "statelock.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define C_RESIDENT (1u << GPH_CONTENT_RESIDENT)
#define C_LAZY (1u << GPH_CONTENT_LAZY)
#define C_PRESERVED (1u << GPH_CONTENT_PRESERVED)

static int pick_bit(uint8_t *b, uint8_t usage_mask_ok, uint8_t content_mask_ok)
{
    uint8_t old = __atomic_load_n(b, __ATOMIC_ACQUIRE);
    for (;;) {
        if (old & GPH_FLAG_MASK)
            return 0;
        if (!(content_mask_ok & (1u << (old & GPH_CONTENT_MASK))))
            return 0;
        if (!(usage_mask_ok & (1u << ((old & GPH_USAGE_MASK) >> 2))))
            return 0;
        if (__atomic_compare_exchange_n(b, &old, (uint8_t)(old | GPH_FLAG_BUSY), 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return 1;
    }
}

#define OK_S (1u << 0)
#define OK_U (1u << 1)
#define OK_P (1u << 2)
#define OK_V (1u << 3)

/* Release a page: new usage (or keep with 0xff), new content; FILLED means the fault thread
 * already gave it back, so it is RESIDENT whatever we meant to set. */
static void finish_bit(uint8_t *b, uint8_t usage, uint8_t content)
{
    uint8_t old = __atomic_load_n(b, __ATOMIC_ACQUIRE), want;
    do {
        uint8_t u = usage == 0xff ? (old & GPH_USAGE_MASK) : usage;
        uint8_t c = (old & GPH_FLAG_FILLED) ? GPH_CONTENT_RESIDENT : content;
        want = (uint8_t)(u | c);
    } while (!__atomic_compare_exchange_n(b, &old, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
}

/* The hashed lock (statelock.h) instead of BUSY: pick tries the page's lock (never waits: a
 * page whose lock is taken is skipped, as a held page is) and keeps it until finish.  Only the
 * lock is held, so the byte is checked under it, and finish_bit's write then releases nothing. */
static int pick(int hashed, uint8_t *b, uint8_t usage_mask_ok, uint8_t content_mask_ok)
{
    if (!hashed)
        return pick_bit(b, usage_mask_ok, content_mask_ok);
    if (!gph_statelock_try(b))
        return 0;
    uint8_t old = __atomic_load_n(b, __ATOMIC_ACQUIRE);
    if (!(old & GPH_FLAG_MASK) && (content_mask_ok & (1u << (old & GPH_CONTENT_MASK))) &&
        (usage_mask_ok & (1u << ((old & GPH_USAGE_MASK) >> 2))))
        return 1;
    gph_statelock_unlock(b);
    return 0;
}

static void finish(int hashed, uint8_t *b, uint8_t usage, uint8_t content)
{
    finish_bit(b, usage, content);
    if (hashed)
        gph_statelock_unlock(b);
}

/* Whole-run pick and finish: the same two transitions as pick/finish, on the state bytes of
 * pages [first, first+len), 8 bytes per 64-bit CAS where the run covers an aligned word: a
 * 2 MiB run is 64 claims instead of 512 (with THP the madvise of a run is cheap enough for the
 * per-page pair to show).  With the hashed lock every page goes through pick/finish.
 * A word is claimed only when its 8 bytes are one pickable value (a run of free pages is one
 * value); a mixed word, a CAS that lost to a guest or fault-thread change, and the run's
 * unaligned edges go page by page.  Each byte's transition is exactly pick's/finish's, and the
 * word CAS fails if any of the 8 bytes changed since it was read, so every guarantee of the
 * per-page protocol holds: a page held or changed is skipped, FILLED set meanwhile is kept.
 * x86-64 and arm64 make a locked/exclusive 64-bit RMW atomic against byte CASes on the same
 * bytes (aligned, one cache line); the word type may alias the state bytes. */
typedef uint64_t __attribute__((may_alias, aligned(8))) state_word;
#define BYTES8(x) ((uint64_t)(uint8_t)(x) * 0x0101010101010101ull)
_Static_assert(GPH_CONTENT_RESIDENT == 0 && GPH_FLAG_FILLED == 0x20, "finish_run's arithmetic");

static int word_aligned(const uint8_t *b, int64_t left)
{
    return left >= 8 && ((uintptr_t)b & 7) == 0;
}

/* Claims of one pick_run: picked[k] = 1 for each page first+k claimed (Xr -> Xr|BUSY), and the
 * claimed pages as (first, npages) runs appended to runs[] (*nruns of them, room for len). */
static int64_t pick_run(uint8_t *states, int64_t first, int64_t len, uint8_t usage_mask_ok,
                        uint8_t content_mask_ok, uint8_t *picked, int64_t *runs, size_t *nruns,
                        int hashed)
{
    int64_t got = 0, k = 0, open_end = -1;   /* open_end: where the last run appended ends */
    while (k < len) {
        uint8_t *b = &states[first + k];
        int64_t took = 0;
        if (!hashed && word_aligned(b, len - k)) {
            state_word *w = (state_word *)b;
            uint64_t old = __atomic_load_n(w, __ATOMIC_ACQUIRE);
            while (old == BYTES8(old) && !(old & GPH_FLAG_MASK) &&
                   (content_mask_ok & (1u << (old & GPH_CONTENT_MASK))) &&
                   (usage_mask_ok & (1u << ((old & GPH_USAGE_MASK) >> 2)))) {
                if (__atomic_compare_exchange_n(w, &old, old | BYTES8(GPH_FLAG_BUSY), 0,
                                                __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                    took = 8;
                    break;
                }
            }
        }
        if (took) {
            memset(&picked[k], 1, 8);
        } else {
            picked[k] = (uint8_t)pick(hashed, b, usage_mask_ok, content_mask_ok);
            if (!picked[k]) {
                k++;
                continue;
            }
            took = 1;
        }
        if (open_end == first + k) {
            runs[2 * *nruns - 1] += took;
        } else {
            runs[2 * *nruns] = first + k;
            runs[2 * *nruns + 1] = took;
            (*nruns)++;
        }
        got += took;
        k += took;
        open_end = first + k;
    }
    return got;
}

/* finish() on every page of [first, first+len), all of which this host operation holds: while
 * BUSY is ours the only other change a byte can see is the fault thread's FILLED (serve.c,
 * gph_mark_served_), which the word CAS either sees or retries on. */
static void finish_run(uint8_t *states, int64_t first, int64_t len, uint8_t usage, uint8_t content,
                       int hashed)
{
    int64_t k = 0;
    while (k < len) {
        uint8_t *b = &states[first + k];
        if (hashed || !word_aligned(b, len - k)) {
            finish(hashed, b, usage, content);
            k++;
            continue;
        }
        state_word *w = (state_word *)b;
        uint64_t old = __atomic_load_n(w, __ATOMIC_ACQUIRE), want;
        do {
            uint64_t u = usage == 0xff ? (old & BYTES8(GPH_USAGE_MASK)) : BYTES8(usage);
            uint64_t unfilled = ((old >> 5) & BYTES8(1)) ^ BYTES8(1);   /* bit 5 is FILLED */
            want = u | unfilled * content;   /* content <= 3: no carry between bytes */
        } while (!__atomic_compare_exchange_n(w, &old, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
        k += 8;
    }
}

/* Move [first, first+npg) of the region into scratch.  Returns pages moved from the start of the
 * run (the rest stay in place), or -errno when none moved. */
static long detach(struct gph_service *s, struct gph_region *r, int64_t first, int64_t npg)
{
    size_t ps = r->d.page_size;
    int64_t moved = 0;
    int tries = 0;
    while (moved < npg) {
        struct uffdio_move m = {.dst = (uint64_t)(uintptr_t)(s->scratch + (size_t)moved * ps),
                                .src = (uint64_t)(uintptr_t)(r->d.base + (size_t)(first + moved) * ps),
                                .len = (uint64_t)(npg - moved) * ps,
                                .mode = UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES | UFFDIO_MOVE_MODE_DONTWAKE};
        if (ioctl(s->uffd, UFFDIO_MOVE, &m) == 0) {
            moved = npg;
            break;
        }
        int e = errno;
        if (m.move > 0)
            moved += m.move / (int64_t)ps;
        if ((e == EAGAIN || e == EINTR || e == EBUSY) && ++tries < 100)
            continue;
        if (moved == 0)
            return -e;
        break;
    }
    return moved;
}

/* Bytes of scratch page i: a hole (no page was there to move) reads as zero without touching
 * scratch -- the host must never fault on scratch while the fault thread may wait for it. */
static const uint8_t *scratch_page(struct gph_service *s, const uint8_t *resident, int64_t i, size_t ps)
{
    return (resident[i] & 1) ? s->scratch + (size_t)i * ps : s->zeros;
}

/* Put detached pages back (the swap write failed): the guest sees its bytes again. */
static void reattach(struct gph_service *s, struct gph_region *r, int64_t first, int64_t i,
                     const uint8_t *resident)
{
    size_t ps = r->d.page_size;
    gph_uffd_copy_(s, r->d.base + (size_t)(first + i) * ps, scratch_page(s, resident, i, ps), ps, ps);
    gph_uffd_wake_(s, r->d.base + (size_t)(first + i) * ps, ps);
}

struct run_ctx {
    struct gph_service *s;
    struct gph_region *r;
    int32_t swap_id;
    const int64_t *slots;   /* consumed in order; used_slots[j] = 1 for each one consumed */
    size_t nslots, slot_next;
    uint8_t *used_slots;
    int dirty_ok;
    long swapped, discarded, nerr;
    long first_rc;                  /* -errno of the first failure, returned when nothing was done */
    struct gph_discard_stats *st;   /* discards only: madvise calls made */
    struct gph_err *err;
};

/* How many pages from i on can go to swap in one write: selected, holding content (they are
 * then contiguous in scratch) and given consecutive slots.  An O_DIRECT host swap pays a disk
 * round trip per write (~100 us per 4 KiB page measured here), so one write per run matters. */
static int64_t coalesced_run(const struct run_ctx *c, int64_t npg, const uint8_t *which,
                             const uint8_t *resident, int64_t i, size_t j)
{
    if (!(resident[i] & 1))
        return 1;
    int64_t k = 1;
    while (i + k < npg && which[i + k] && (resident[i + k] & 1) && j + (size_t)k < c->nslots &&
           c->slots[j + (size_t)k] == c->slots[j] + k)
        k++;
    return k;
}

/* Write the selected detached pages of a run to swap and mark them PRESERVED; a page that
 * cannot be written (no slot, I/O error) is put back where it was. */
static void preserve_run(struct run_ctx *c, int64_t first, int64_t npg, const uint8_t *which,
                         const uint8_t *resident)
{
    struct gph_service *s = c->s;
    struct gph_region *r = c->r;
    size_t ps = r->d.page_size;
    int fd = gph_store_fd_(c->swap_id);
    int64_t written_to = -1;   /* pages [.., written_to) already written by one coalesced write */
    for (int64_t i = 0; i < npg; i++) {
        if (!which[i])
            continue;
        int64_t p = first + i;
        long w = fd < 0 ? fd : -ENOSPC;
        size_t j = c->slot_next;
        if (i < written_to)
            w = 0;
        else if (fd >= 0 && j < c->nslots) {
            int64_t k = coalesced_run(c, npg, which, resident, i, j);
            w = k > 1 ? gph_write_full(fd, s->scratch + (size_t)i * ps, (size_t)k * ps, c->slots[j] * (int64_t)ps) : -1;
            if (w >= 0)
                written_to = i + k;
            else   /* one page, or the run's write failed: page by page, each failure its own */
                w = gph_write_full(fd, scratch_page(s, resident, i, ps), ps, c->slots[j] * (int64_t)ps);
        }
        if (w < 0) {
            if (!c->nerr) {
                if (fd < 0 || j >= c->nslots)
                    gph_err_set(c->err, fd < 0 ? "swap store lookup" : "swap slots", NULL, p, 1);
                else
                    gph_err_set(c->err, NULL, "pwrite(host swap)", p, 1);
                /* the write's own errno (ENOSPC on a full disk), not a generic EIO */
                c->first_rc = fd >= 0 && j < c->nslots && w < 0 ? w : -EIO;
            }
            c->nerr++;
            reattach(s, r, first, i, resident);
            finish(s->hashed, &r->d.states[p], 0xff, GPH_CONTENT_RESIDENT);
            continue;
        }
        c->slot_next++;
        c->used_slots[j] = 1;
        /* record before the state says PRESERVED */
        __atomic_store_n(&r->d.swap_slot[p], c->slots[j], __ATOMIC_RELEASE);
        __atomic_store_n(&r->d.swap_store[p], c->swap_id, __ATOMIC_RELEASE);
        finish(s->hashed, &r->d.states[p], GPH_USAGE_STABLE, GPH_CONTENT_PRESERVED);
        c->swapped++;
    }
}

/* mode 0: swap-out; mode 1: POT_VOLATILE discard (clean -> Vz, dirty/changed -> Sp). */
static void detach_and_place(struct run_ctx *c, int64_t first, int64_t npg, int mode)
{
    struct gph_service *s = c->s;
    struct gph_region *r = c->r;
    size_t ps = r->d.page_size;
    uint8_t resident[GPH_SCRATCH_BYTES / 4096], which[GPH_SCRATCH_BYTES / 4096], dirty[GPH_SCRATCH_BYTES / 4096];
    memset(dirty, 1, sizeof dirty);
    if (mode == 1 && c->dirty_ok) {
        struct gph_err e2;
        if (gph_dirty_scan(r->d.base, ps, first, npg, 0, dirty, &e2) < 0)
            memset(dirty, 1, sizeof dirty);   /* unknown = dirty: preserve */
    }
    long moved = detach(s, r, first, npg);
    if (moved < 0) {
        if (!c->nerr) {
            gph_err_set(c->err, NULL, "ioctl(UFFDIO_MOVE)", first, npg);
            c->first_rc = moved;
        }
        c->nerr++;
        moved = 0;
    }
    gph_race_delay_(s);   /* detached, not yet written: a test widens this window too */
    for (int64_t i = moved; i < npg; i++)   /* not detached: left as they were */
        finish(s->hashed, &r->d.states[first + i], 0xff, GPH_CONTENT_RESIDENT);
    if (moved == 0)
        return;
    if (mincore(s->scratch, (size_t)moved * ps, resident) != 0 ||
        gph_mark_swapped_(s->scratch, ps, moved, resident) < 0)   /* kernel-swapped: content */
        memset(resident, 1, (size_t)moved);
    for (int64_t i = 0; i < moved; i++) {
        int64_t p = first + i;
        which[i] = 1;
        if (mode == 1 && !dirty[i]) {
            int32_t st = __atomic_load_n(&r->d.backing_store[p], __ATOMIC_ACQUIRE);
            int fd = gph_store_fd_(st);
            if (st > 0 && fd >= 0 &&
                gph_read_full(fd, s->host_buf, ps, __atomic_load_n(&r->d.backing_offset[p], __ATOMIC_ACQUIRE)) >= 0 &&
                memcmp(s->host_buf, scratch_page(s, resident, i, ps), ps) == 0) {
                which[i] = 0;   /* clean and equal to its file: the discard is safe */
                finish(s->hashed, &r->d.states[p], GPH_USAGE_VOLATILE, GPH_CONTENT_ZERO);
                c->discarded++;
                if (c->st) {   /* freed by the scratch madvise below */
                    c->st->pages++;
                    c->st->resident += resident[i] & 1;
                }
            }
        }
    }
    preserve_run(c, first, moved, which, resident);
    madvise(s->scratch, (size_t)moved * ps, MADV_DONTNEED);   /* dst must be empty for the next move */
    if (c->st)
        c->st->calls++;   /* this madvise is what frees a detached page */
}

/* pages[] ascending (the seam sorts): contiguous picked pages become one detach. */
static void for_runs(struct run_ctx *c, const int64_t *pages, const uint8_t *picked, size_t n, int mode)
{
    int64_t maxrun = GPH_SCRATCH_BYTES / (int64_t)c->r->d.page_size;
    size_t i = 0;
    while (i < n) {
        if (!picked[i]) {
            i++;
            continue;
        }
        int64_t first = pages[i], len = 0;
        while (i < n && picked[i] && pages[i] == first + len && len < maxrun) {
            len++;
            i++;
        }
        detach_and_place(c, first, len, mode);
    }
}

/* Start a host operation: one at a time (the scratch area), regions pinned (read lock), the
 * region and every page index checked.  Returns the region or NULL with *rc set; either way the
 * caller ends with end_host_op. */
static struct gph_region *begin_host_op(struct gph_service *s, int rid, const int64_t *pages, size_t n,
                                        long *rc, struct gph_err *err)
{
    pthread_mutex_lock(&s->host_lock);
    pthread_rwlock_rdlock(&s->lock);
    struct gph_region *r = gph_region_open_(s, rid);   /* not while unregister reloads it */
    if (!r) {
        gph_err_set(err, "region", NULL, rid, 0);
        *rc = -ENOENT;
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (pages[i] < 0 || pages[i] >= r->d.npages) {
            *rc = gph_err_range(err, "page index", pages[i], 1, r->d.npages);
            return NULL;
        }
    }
    return r;
}

static void end_host_op(struct gph_service *s)
{
    pthread_rwlock_unlock(&s->lock);
    pthread_mutex_unlock(&s->host_lock);
}

long gph_host_swap_out(struct gph_service *s, int rid, const int64_t *pages, size_t n,
                       int32_t swap_id, const int64_t *slots, size_t nslots, uint8_t *used_slots, struct gph_err *err)
{
    if (!(s->features & UFFD_FEATURE_MOVE)) {
        gph_err_set(err, NULL, "UFFDIO_MOVE (Linux >= 6.8)", 0, 0);
        return -EOPNOTSUPP;
    }
    uint8_t *picked = calloc(n ? n : 1, 1);
    if (!picked) {
        gph_err_set(err, NULL, "calloc", 0, (int64_t)n);
        return -ENOMEM;
    }
    long rc = 0;
    struct gph_region *r = begin_host_op(s, rid, pages, n, &rc, err);
    if (!r)
        goto out;
    for (size_t i = 0; i < n; i++)
        picked[i] = (uint8_t)pick(s->hashed, &r->d.states[pages[i]], OK_S | OK_P, C_RESIDENT);
    gph_race_delay_(s);   /* holding BUSY: a test widens this window */
    struct run_ctx c = {.s = s, .r = r, .swap_id = swap_id, .slots = slots, .nslots = nslots, .used_slots = used_slots,
                        .dirty_ok = 0, .err = err};
    for_runs(&c, pages, picked, n, 0);
    rc = c.nerr && !c.swapped ? (c.first_rc < 0 ? c.first_rc : -EIO) : c.swapped;
out:
    end_host_op(s);
    free(picked);
    return rc;
}

long gph_host_discard(struct gph_service *s, int rid, const int64_t *pages, size_t n,
                      int advice, int submit, int pidfd, int32_t swap_id, const int64_t *slots,
                      size_t nslots, uint8_t *used_slots, int64_t *preserved,
                      struct gph_discard_stats *st, struct gph_err *err)
{
    uint8_t *picked = calloc(n ? 2 * n : 1, 1);
    int64_t *vu = malloc((n ? 2 * n : 1) * sizeof(int64_t));   /* (first, npages) per run */
    if (!picked || !vu) {
        free(picked);
        free(vu);
        gph_err_set(err, NULL, "malloc", 0, (int64_t)n);
        return -ENOMEM;
    }
    uint8_t *ppicked = picked + n;
    long rc = 0;
    size_t nvu = 0, np = 0;
    int64_t vpages = 0;
    *preserved = 0;
    struct gph_region *r = begin_host_op(s, rid, pages, n, &rc, err);
    if (!r)
        goto out;
    /* POT_VOLATILE pages need UFFDIO_MOVE, and either a dirty bit or a swap slot: without
     * write tracking every P page counts as dirty, and a dirty page with nowhere to go stays */
    int take_p = (s->features & UFFD_FEATURE_MOVE) && ((s->features & UFFD_FEATURE_WP_ASYNC) || nslots);
    /* MADV_FREE on a page already lazily freed would change nothing: only DONTNEED takes them */
    uint8_t vu_content = advice == GPH_ADVICE_FREE ? C_RESIDENT : (C_RESIDENT | C_LAZY);
    uint8_t gone = advice == GPH_ADVICE_FREE ? GPH_CONTENT_LAZY : GPH_CONTENT_ZERO;
    /* each stretch of consecutive indices (pages[] is ascending: the seam sorts) is picked as a
     * run; its picked U/V pages become runs for the madvise, the others may be P pages */
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && pages[j] == pages[j - 1] + 1)
            j++;
        int64_t got = pick_run(r->d.states, pages[i], (int64_t)(j - i), OK_U | OK_V, vu_content,
                               &picked[i], vu, &nvu, s->hashed);
        vpages += got;
        for (size_t k = i; take_p && got < (int64_t)(j - i) && k < j; k++) {
            if (!picked[k] && pick(s->hashed, &r->d.states[pages[k]], OK_P, C_RESIDENT)) {
                ppicked[k] = 1;
                np++;
            }
        }
        i = j;
    }
    gph_race_delay_(s);   /* holding BUSY: a test widens this window */
    /* UNUSED / VOLATILE: one vectored madvise; the fault thread serves any access meanwhile */
    if (nvu) {
        long d = gph_discard_runs(r->d.base, r->d.page_size, r->d.npages, vu, nvu, advice, submit,
                                  pidfd, st, err);
        /* on failure some pages may be gone and others not: LAZY says exactly that -- the
         * guest's next transition asks the kernel (lazyfree.c), and a fault on one that is gone
         * is served from its state as ever */
        for (size_t i = 0; i < nvu; i++)
            finish_run(r->d.states, vu[2 * i], vu[2 * i + 1], 0xff, d < 0 ? GPH_CONTENT_LAZY : gone,
                       s->hashed);
        if (d < 0) {
            for (size_t i = 0; i < n; i++)   /* the P pages picked too: released untouched */
                if (ppicked[i])
                    finish(s->hashed, &r->d.states[pages[i]], 0xff, GPH_CONTENT_RESIDENT);
            rc = d;
            goto out;
        }
        rc = (long)vpages;
    }
    if (np) {
        struct run_ctx c = {.s = s, .r = r, .swap_id = swap_id, .slots = slots, .nslots = nslots, .used_slots = used_slots,
                            .dirty_ok = (s->features & UFFD_FEATURE_WP_ASYNC) != 0, .st = st, .err = err};
        for_runs(&c, pages, ppicked, n, 1);
        rc += c.discarded;
        *preserved = c.swapped;
    }
out:
    end_host_op(s);
    free(picked);
    free(vu);
    return rc;
}

/* Sp -> Sz: the host gives up its swap copy of a page whose content nobody needs any more -- a
 * free page a hint-less guest handed over (a free page report, a balloon inflation), whose
 * entry the device's MADV_DONTNEED would drop from Linux's swap too (mm/madvise.c zaps swap
 * entries with the range).  pick (CAS Sp -> Sp|BUSY: a fault meanwhile waits, faults.c), free
 * the slot and clear the record, finish Sz: the page's next access is a zero fill.  Pages in
 * any other state, or held, are left alone.  The pure-Python reading of this transition is
 * gphint._fallback.drop_preserved.  Returns pages dropped. */
long gph_host_drop_preserved(struct gph_service *s, int rid, const int64_t *pages, size_t n,
                             struct gph_err *err)
{
    long rc = 0;
    struct gph_region *r = begin_host_op(s, rid, pages, n, &rc, err);
    for (size_t i = 0; r && i < n; i++) {
        uint8_t *b = &r->d.states[pages[i]];
        if (!pick(s->hashed, b, OK_S, C_PRESERVED))
            continue;
        int32_t swap_id = __atomic_load_n(&r->d.swap_store[pages[i]], __ATOMIC_ACQUIRE);
        if (swap_id != 0) {
            gph_store_free_slots_(swap_id, __atomic_load_n(&r->d.swap_slot[pages[i]], __ATOMIC_ACQUIRE), 1);
            __atomic_store_n(&r->d.swap_store[pages[i]], 0, __ATOMIC_RELEASE);
        }
        finish(s->hashed, b, GPH_USAGE_STABLE, GPH_CONTENT_ZERO);
        rc++;
    }
    end_host_op(s);
    return rc;
}

/* --- a reclaim tier's per-page work in one call: scan, pick, discard, finish ------------------
 * The host's policy (gphint.host.strategies: which usage states a tier takes, how many pages
 * from each guest) stays in Python; what it costs per page is here.  The Python tier read every
 * state byte and residency byte with numpy to list candidates, re-read the states of each batch
 * before handing it to gph_host_discard, which read them once more to pick: three passes and a
 * page list per batch.  gph_host_take reads each byte once to choose (a candidate: unheld, a
 * usage the tier takes, content the advice can take -- exactly what pick accepts -- and resident
 * in the host's last mincore sample), then claims the chosen runs with pick_run, so the protocol
 * is gph_host_discard's to the byte: a page that changed between the read and the CAS is skipped.
 * Residency: the chosen pages are cleared in the caller's sample (the host took them away; the
 * next sample re-reads the kernel), which is what ResidencyTracker.forget did. */
static void candidate_table(uint8_t table[256], uint8_t usage_mask_ok, uint8_t content_mask_ok)
{
    for (int b = 0; b < 256; b++)
        table[b] = !(b & GPH_FLAG_MASK) && (content_mask_ok & (1u << (b & GPH_CONTENT_MASK))) &&
                   (usage_mask_ok & (1u << ((b & GPH_USAGE_MASK) >> 2)));
}

static uint64_t load_word(const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

/* Candidates of [*pos, npages), ascending, up to `want`, as (first, len) runs appended to
 * runs[] (room for `want` runs); *pos ends past the last page looked at.  Chosen pages are
 * cleared in resident[].  Returns pages chosen.  A uniform word (8 equal state bytes, all
 * resident) is taken or skipped whole: the free memory of a guest is a few long runs. */
static int64_t choose(const uint8_t *states, uint8_t *resident, int64_t npages, int64_t *pos,
                      int64_t want, const uint8_t table[256], int64_t *runs, size_t *nruns)
{
    int64_t p = *pos, got = 0;
    const uint64_t ones = BYTES8(1);
    while (p < npages && got < want) {
        int64_t take = 0;
        if (p + 8 <= npages && ((uintptr_t)&states[p] & 7) == 0) {
            uint64_t w = __atomic_load_n((const state_word *)&states[p], __ATOMIC_RELAXED);
            if (w == BYTES8(w)) {
                if (!table[w & 0xff]) {
                    p += 8;
                    continue;
                }
                if (want - got >= 8 && load_word(&resident[p]) == ones)
                    take = 8;
            }
        }
        if (!take) {
            uint8_t b = __atomic_load_n(&states[p], __ATOMIC_RELAXED);
            if (!(table[b] && resident[p])) {
                p++;
                continue;
            }
            take = 1;
        }
        memset(&resident[p], 0, (size_t)take);
        if (*nruns && runs[2 * *nruns - 2] + runs[2 * *nruns - 1] == p) {
            runs[2 * *nruns - 1] += take;
        } else {
            runs[2 * *nruns] = p;
            runs[2 * *nruns + 1] = take;
            (*nruns)++;
        }
        got += take;
        p += take;
    }
    *pos = p;
    return got;
}

long gph_host_take(struct gph_service *s, int rid, int usage_mask_ok, uint8_t *resident,
                   int64_t resident_len, int64_t need, int64_t host_batch, int advice, int submit,
                   int pidfd, int64_t *chosen, struct gph_discard_stats *st, struct gph_err *err)
{
    *chosen = 0;
    if (usage_mask_ok & ~(OK_U | OK_V)) {   /* POT_VOLATILE pages need the dirty bit: gph_host_discard */
        gph_err_set(err, "usage states (UNUSED and VOLATILE only)", NULL, usage_mask_ok, 0);
        return -EINVAL;
    }
    if (need <= 0 || host_batch <= 0)
        return 0;
    int64_t batch = host_batch < need ? host_batch : need;
    /* runs of one batch: at most `batch` (one per page), for the choice and for the picks */
    int64_t *cand = malloc((size_t)batch * 2 * sizeof(int64_t));
    int64_t *vu = malloc((size_t)batch * 2 * sizeof(int64_t));
    uint8_t *picked = malloc((size_t)batch);
    if (!cand || !vu || !picked) {
        free(cand);
        free(vu);
        free(picked);
        gph_err_set(err, NULL, "malloc", 0, batch);
        return -ENOMEM;
    }
    long rc = 0;
    struct gph_region *r = begin_host_op(s, rid, NULL, 0, &rc, err);
    if (!r)
        goto out;
    if (resident_len < r->d.npages) {
        rc = gph_err_range(err, "residency sample", resident_len, 1, r->d.npages);
        goto out;
    }
    uint8_t vu_content = advice == GPH_ADVICE_FREE ? C_RESIDENT : (C_RESIDENT | C_LAZY);
    uint8_t gone = advice == GPH_ADVICE_FREE ? GPH_CONTENT_LAZY : GPH_CONTENT_ZERO;
    uint8_t table[256];
    candidate_table(table, (uint8_t)usage_mask_ok, vu_content);
    int64_t pos = 0, taken = 0;
    /* one submission per host_batch chosen pages, as the host's batching cycle makes them */
    while (pos < r->d.npages && *chosen < need) {
        size_t ncand = 0, nvu = 0;
        int64_t want = need - *chosen < batch ? need - *chosen : batch;
        int64_t n = choose(r->d.states, resident, r->d.npages, &pos, want, table, cand, &ncand);
        if (n == 0)
            break;
        *chosen += n;
        int64_t got = 0;
        for (size_t i = 0; i < ncand; i++)
            got += pick_run(r->d.states, cand[2 * i], cand[2 * i + 1], (uint8_t)usage_mask_ok, vu_content,
                            picked, vu, &nvu, s->hashed);
        gph_race_delay_(s);   /* holding BUSY: a test widens this window */
        if (!nvu)
            continue;
        long d = gph_discard_runs(r->d.base, r->d.page_size, r->d.npages, vu, nvu, advice, submit,
                                  pidfd, st, err);
        /* as gph_host_discard: on failure LAZY says some may be gone (lazyfree.c resolves it) */
        for (size_t i = 0; i < nvu; i++)
            finish_run(r->d.states, vu[2 * i], vu[2 * i + 1], 0xff, d < 0 ? GPH_CONTENT_LAZY : gone,
                       s->hashed);
        if (d < 0) {   /* raised: earlier submissions' pages are taken, their states say so */
            rc = d;
            goto out;
        }
        taken += got;
    }
    rc = (long)taken;
out:
    end_host_op(s);
    free(cand);
    free(vu);
    free(picked);
    return rc;
}

/* The fleet's calls: one C call for every guest of a host, so that a pass's cost is what it
 * does, not a Python loop (and a GIL release and re-take) per guest -- with 512 guests the
 * per-guest calls were most of the host's CPU per MiB taken back, and each re-take of the GIL
 * waited behind the busy guests' threads.  The host's residency tables of all its guests are
 * one array each (gphint.host.residency.FleetResidency): guest i's pages are at
 * [offsets[i], offsets[i] + its npages) of resident/since_tick/ever (and vec, scratch), `total`
 * entries in all.  A region that is gone (unregistered meanwhile) fails the call (-ENOENT) --
 * the caller samples guest by guest then -- except in the count, where it counts 0. */
static int fleet_span(struct gph_region *r, int64_t off, int64_t total)
{
    return off >= 0 && off <= total && r->d.npages <= total - off;
}

/* Candidates gph_host_take would choose in each guest (counts[i] for region rids[i]): what the
 * host's share of a tier is computed from.  usage_mask_ok may name any usage here: the
 * POT_VOLATILE tier counts its candidates the same way. */
long gph_host_count(struct gph_service *s, const int32_t *rids, size_t n, const int64_t *offsets,
                    const uint8_t *resident, int64_t total, int usage_mask_ok, int advice,
                    int64_t *counts, struct gph_err *err)
{
    (void)err;
    uint8_t table[256];
    candidate_table(table, (uint8_t)usage_mask_ok,
                    advice == GPH_ADVICE_FREE ? C_RESIDENT : (C_RESIDENT | C_LAZY));
    pthread_rwlock_rdlock(&s->lock);
    long sum = 0;
    for (size_t i = 0; i < n; i++) {
        counts[i] = 0;
        struct gph_region *r = gph_region_open_(s, rids[i]);
        if (!r || !fleet_span(r, offsets[i], total))
            continue;
        const uint8_t *st = r->d.states, *res = resident + offsets[i];
        int64_t c = 0, np = r->d.npages, p = 0;
        for (; p < np && ((uintptr_t)&st[p] & 7); p++)
            c += table[__atomic_load_n(&st[p], __ATOMIC_RELAXED)] & res[p] & 1;
        for (; p + 8 <= np; p += 8) {
            uint64_t w = __atomic_load_n((const state_word *)&st[p], __ATOMIC_RELAXED);
            if (w == BYTES8(w)) {
                if (table[w & 0xff])
                    c += __builtin_popcountll(load_word(&res[p]) & BYTES8(1));
                continue;
            }
            for (int k = 0; k < 8; k++)
                c += table[__atomic_load_n(&st[p + k], __ATOMIC_RELAXED)] & res[p + k] & 1;
        }
        for (; p < np; p++)
            c += table[__atomic_load_n(&st[p], __ATOMIC_RELAXED)] & res[p] & 1;
        counts[i] = c;
        sum += c;
    }
    pthread_rwlock_unlock(&s->lock);
    return sum;
}

/* gph_host_take on every guest with quota[i] > 0; out[6 i ..] = (discarded, chosen, madvise
 * calls, runs, resident, lazy) of guest i.  Stops at the first failure (returned; out says
 * what the guests before it gave).  Returns pages discarded in all. */
long gph_host_take_fleet(struct gph_service *s, const int32_t *rids, size_t n, const int64_t *offsets,
                         const int64_t *quota, uint8_t *resident, int64_t total, int usage_mask_ok,
                         int64_t host_batch, int advice, int submit, int pidfd, int64_t *out,
                         struct gph_err *err)
{
    long sum = 0;
    memset(out, 0, n * 6 * sizeof(int64_t));
    for (size_t i = 0; i < n; i++) {
        if (quota[i] <= 0)
            continue;
        if (offsets[i] < 0 || offsets[i] > total)
            return gph_err_range(err, "residency offset", offsets[i], 1, total);
        struct gph_discard_stats st = {0};
        long rc = gph_host_take(s, rids[i], usage_mask_ok, resident + offsets[i], total - offsets[i],
                                quota[i], host_batch, advice, submit, pidfd, &out[6 * i + 1], &st, err);
        if (rc < 0)
            return rc;
        int64_t *o = &out[6 * i];
        o[0] = rc;
        o[2] = (int64_t)st.calls;
        o[3] = (int64_t)st.runs;
        o[4] = (int64_t)st.resident;
        o[5] = (int64_t)st.lazy;
        sum += rc;
    }
    return sum;
}

/* The host's residency sample of one guest (gphint.host.residency.ResidencyTracker.sample) in
 * one pass over the mincore vector: resident[i] = the kernel's bit, since_tick[i] = tick where
 * a page arrived (FIFO order for host swap), ever[i] |= resident[i].  The numpy version made
 * five passes and two temporaries per sample; the host samples every guest each step.
 * vec is scratch of npages bytes.  Returns the resident count. */
long gph_residency_track(uint8_t *base, size_t page_size, int64_t npages, uint8_t *vec,
                         uint8_t *resident, int64_t *since_tick, uint8_t *ever, int64_t tick,
                         struct gph_err *err)
{
    long n = gph_residency(base, page_size, npages, vec, err);   /* vec[i] = 0 or 1 */
    if (n < 0)
        return n;
    int64_t i = 0;
    for (; i + 8 <= npages; i += 8) {
        uint64_t v = load_word(&vec[i]), old = load_word(&resident[i]);
        uint64_t arrived = v & ~old, e = load_word(&ever[i]) | v;
        for (int k = 0; arrived && k < 8; k++, arrived >>= 8)
            if (arrived & 1)
                since_tick[i + k] = tick;
        memcpy(&resident[i], &v, 8);
        memcpy(&ever[i], &e, 8);
    }
    for (; i < npages; i++) {
        if (vec[i] && !resident[i])
            since_tick[i] = tick;
        resident[i] = vec[i];
        ever[i] |= vec[i];
    }
    return n;
}

/* The fleet's residency sample: gph_residency_track for every guest, counts[i] its resident
 * pages.  Regions pinned (read lock) for the whole sample.  Returns resident pages in all. */
long gph_host_sample(struct gph_service *s, const int32_t *rids, size_t n, const int64_t *offsets,
                     uint8_t *vec, uint8_t *resident, int64_t *since_tick, uint8_t *ever, int64_t total,
                     int64_t tick, int64_t *counts, struct gph_err *err)
{
    long sum = 0;
    pthread_rwlock_rdlock(&s->lock);
    for (size_t i = 0; i < n; i++) {
        struct gph_region *r = gph_region_open_(s, rids[i]);
        if (!r) {
            gph_err_set(err, "region", NULL, rids[i], 0);
            sum = -ENOENT;
            break;
        }
        int64_t off = offsets[i];
        if (!fleet_span(r, off, total)) {
            sum = gph_err_range(err, "residency offset", off, r->d.npages, total);
            break;
        }
        long c = gph_residency_track(r->d.base, r->d.page_size, r->d.npages, vec + off, resident + off,
                                     since_tick + off, ever + off, tick, err);
        if (c < 0) {
            sum = c;
            break;
        }
        counts[i] = c;
        sum += c;
    }
    pthread_rwlock_unlock(&s->lock);
    return sum;
}
