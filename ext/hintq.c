/* hintq.c -- the guest's hint queue: batched usage transitions (gphint/guest/hints.py).
 *
 * The 2006 follow-up to guest page hinting collects the guest's state changes in a per-guest
 * buffer and submits them together.  This is that buffer's mechanism: one call per request
 * classifies every page (apply now / cancel / defer), and submits whole batches of
 * `capacity` deferred transitions through gph_set_usage, the state protocol's only setter.
 * The batching rule is gphint/batching.py's cycle, the one the host's submissions follow too
 * (after mm/page_reporting.c): while filling, only whole batches are submitted
 * (gph_hintq_submit with whole_batches_only); a flush submits the remainder; no state change
 * ever carries more than `capacity` pages (apply, gph_hintq_make_stable).
 * The policy -- what may wait -- is the SAFETY ORDER in hints.py, restated where it is applied:
 *
 *   - a page whose usage is not STABLE has nothing pending (the invariant below), and its
 *     transition is applied now: leaving it pending could let the host discard a page the
 *     guest no longer holds in that state (a freed VOLATILE page), or keep a page more
 *     discardable than the guest allows (VOLATILE -> POT_VOLATILE);
 *   - a request for STABLE on a STABLE page cancels its pending transition: no change at all;
 *   - a request out of STABLE is deferred: delaying it only keeps the page STABLE for longer.
 *
 * Invariant: every page with a pending transition is STABLE in the state table, and has at
 * least one entry in the queue.  A queue entry whose page has no pending transition (it was
 * cancelled, or submitted through an earlier entry of the same page) is dead and skipped.
 *
 * Not thread-safe: the caller serialises calls on one queue (the Python seam holds the GIL
 * throughout; the waits inside gph_set_usage are bounded by one host or fault-thread C call,
 * neither of which needs the GIL to finish).
 */
#include "gphint.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MARK 0x40   /* compaction only: "this page's first live entry was kept already" */

static int grow(void **buf, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 256;
    while (ncap < need)
        ncap *= 2;
    void *nb = realloc(*buf, ncap * elem);
    if (nb == NULL)
        return -ENOMEM;
    *buf = nb;
    *cap = ncap;
    return 0;
}

long gph_hintq_init(struct gph_hintq *q, uint8_t *states, int64_t npages, const uint8_t next[64],
                    uint8_t *pending, uint64_t *ops_total, size_t capacity)
{
    memset(q, 0, sizeof *q);
    if (capacity < 1)
        return -EINVAL;
    q->states = states;
    q->npages = npages;
    q->next = next;
    q->pending = pending;
    q->ops_total = ops_total;
    q->capacity = capacity;
    q->now_ns = -1;
    return 0;
}

void gph_hintq_record_unused(struct gph_hintq *q, int64_t *since_ns, int64_t now_ns)
{
    q->unused_since_ns = since_ns;
    q->now_ns = now_ns;
}

/* The host's proactive scan discards an UNUSED page only `delay` after the guest freed it, and
 * must date the free from the transition itself: a page freed, re-allocated and freed again
 * between two scans looks, to a scan, like a page that stayed free.  The time is written
 * before the state byte (release), so a host that reads UNUSED and then the time never pairs a
 * new UNUSED with an older time; pairing an old UNUSED with a newer time only delays it. */
static void record_unused(struct gph_hintq *q, const int64_t *pages, size_t n)
{
    int64_t now = q->now_ns;
    if (now < 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    }
    for (size_t i = 0; i < n; i++)
        __atomic_store_n(&q->unused_since_ns[pages[i]], now, __ATOMIC_RELEASE);
}

void gph_hintq_free(struct gph_hintq *q)
{
    free(q->queue);
    free(q->work);
    free(q->targets);
    free(q->refused);
    free(q->refused_usage);
    q->queue = q->work = q->refused = NULL;
    q->targets = q->refused_usage = NULL;
    q->qlen = q->qcap = q->wcap = q->tcap = q->nrefused = q->rcap = 0;
}

/* Record a chunk the state table refused, for the caller to redo through its checked setter
 * (which names the page and both states, or completes a transition a concurrent host change
 * made gph_set_usage give up on). */
static long refuse(struct gph_hintq *q, const int64_t *pages, size_t n, uint8_t usage)
{
    size_t need = q->nrefused + n;
    if (need > q->rcap) {
        size_t ncap = need * 2;
        int64_t *rp = realloc(q->refused, ncap * sizeof *rp);
        if (rp == NULL)
            return -ENOMEM;
        q->refused = rp;
        uint8_t *ru = realloc(q->refused_usage, ncap);
        if (ru == NULL)
            return -ENOMEM;
        q->refused_usage = ru;
        q->rcap = ncap;
    }
    memcpy(q->refused + q->nrefused, pages, n * sizeof *pages);
    memset(q->refused_usage + q->nrefused, usage, n);
    q->nrefused += n;
    return 0;
}

/* Apply pages -> usage now, capacity pages per state change. */
static long apply(struct gph_hintq *q, const int64_t *pages, size_t n, uint8_t usage)
{
    struct gph_err err;
    uint8_t old;
    for (size_t lo = 0; lo < n; lo += q->capacity) {
        size_t k = n - lo < q->capacity ? n - lo : q->capacity;
        if (usage == GPH_USAGE_UNUSED && q->unused_since_ns != NULL)
            record_unused(q, pages + lo, k);
        if (gph_set_usage(q->states, q->npages, pages + lo, k, usage, q->next, &old, &err) < 0) {
            if (refuse(q, pages + lo, k, usage) < 0)
                return -ENOMEM;
            continue;
        }
        q->hint_ops++;
        (*q->ops_total)++;
        q->transitions += k;
    }
    return 0;
}

/* Drop dead and repeated entries, keeping the first live entry of each page, in order. */
static void compact(struct gph_hintq *q)
{
    size_t out = 0;
    for (size_t i = 0; i < q->qlen; i++) {
        int64_t p = q->queue[i];
        uint8_t t = q->pending[p];
        if (t == GPH_NO_PENDING || (t & MARK))
            continue;
        q->pending[p] = t | MARK;
        q->queue[out++] = p;
    }
    for (size_t i = 0; i < out; i++)
        q->pending[q->queue[i]] &= (uint8_t)~MARK;
    q->qlen = out;
}

long gph_hintq_submit(struct gph_hintq *q, int whole_batches_only)
{
    /* filling: whole batches only; the flush: all (gphint/batching.py, whole_batches) */
    size_t ngo = whole_batches_only ? q->npending / q->capacity * q->capacity : q->npending;
    if (ngo > 0) {
        if (grow((void **)&q->work, &q->wcap, ngo, sizeof *q->work) < 0
            || grow((void **)&q->targets, &q->tcap, ngo, 1) < 0)
            return -ENOMEM;
        /* take the oldest ngo live entries; clearing pending makes a repeated entry dead */
        size_t take = 0, i = 0;
        while (take < ngo) {
            int64_t p = q->queue[i++];
            uint8_t t = q->pending[p];
            if (t == GPH_NO_PENDING)
                continue;
            q->work[take] = p;
            q->targets[take++] = t;
            q->pending[p] = GPH_NO_PENDING;
        }
        q->npending -= ngo;
        if (q->npending == 0)
            q->qlen = 0;   /* whatever is left is dead */
        else {
            memmove(q->queue, q->queue + i, (q->qlen - i) * sizeof *q->queue);
            q->qlen -= i;
        }
        /* one group per target usage (every one a transition out of STABLE, so their order
         * does not matter), grouped in place by swapping */
        static const uint8_t order[3] = {GPH_USAGE_UNUSED, GPH_USAGE_POTVOL, GPH_USAGE_VOLATILE};
        size_t lo = 0;
        for (int k = 0; k < 3 && lo < ngo; k++) {
            uint8_t u = order[k];
            size_t mid = lo;
            for (size_t j = lo; j < ngo; j++) {
                if (q->targets[j] != u)
                    continue;
                int64_t p = q->work[j];
                uint8_t t = q->targets[mid];
                q->work[j] = q->work[mid];
                q->targets[j] = t;
                q->work[mid] = p;
                q->targets[mid++] = u;
            }
            if (mid > lo && apply(q, q->work + lo, mid - lo, u) < 0)
                return -ENOMEM;
            lo = mid;
        }
    }
    if (q->qlen > 4 * q->capacity + 1024)
        compact(q);   /* free/re-allocate churn leaves cancelled entries behind */
    return (long)ngo;
}

/* Range-check a request before touching anything, and make room to collect its pages. */
static long take_request(struct gph_hintq *q, const int64_t *pages, size_t n, struct gph_err *err)
{
    for (size_t i = 0; i < n; i++) {
        if (pages[i] < 0 || pages[i] >= q->npages) {
            err->syscall = "page index";
            err->first_page = (int64_t)i;
            err->npages = 1;
            return -ERANGE;
        }
    }
    return grow((void **)&q->work, &q->wcap, n, sizeof *q->work);
}

/* A page still STABLE in the state table: cancelling its pending transition is the whole change. */
static void cancel(struct gph_hintq *q, int64_t p)
{
    if (q->pending[p] != GPH_NO_PENDING) {
        q->pending[p] = GPH_NO_PENDING;
        q->npending--;
        q->cancelled++;
    }
}

long gph_hintq_hint(struct gph_hintq *q, const int64_t *pages, size_t n, int usage_code,
                    struct gph_err *err)
{
    if ((usage_code & ~GPH_USAGE_MASK) != 0) {
        err->syscall = "usage state";
        err->first_page = usage_code;
        err->npages = 0;
        return -EINVAL;
    }
    uint8_t usage = (uint8_t)usage_code;
    long rc = take_request(q, pages, n, err);
    if (rc < 0 || (rc = grow((void **)&q->queue, &q->qcap, q->qlen + n, sizeof *q->queue)) < 0)
        return rc;
    size_t nnow = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t p = pages[i];
        /* the host changes usage bits too (hostops.c: Pr -> Vz or Sp), but never a STABLE
         * page's, and a page that is not STABLE has nothing pending and goes through
         * gph_set_usage now; the caller serialises the guest's own calls */
        uint8_t cur = __atomic_load_n(&q->states[p], __ATOMIC_ACQUIRE) & GPH_USAGE_MASK;
        if (cur != GPH_USAGE_STABLE) {
            if (cur != usage)
                q->work[nnow++] = p;   /* not STABLE, so nothing pending: apply now */
            continue;                  /* already there: a no-op */
        }
        uint8_t was = q->pending[p];
        if (usage == GPH_USAGE_STABLE) {
            cancel(q, p);              /* e.g. freed and re-allocated within one batch */
            continue;
        }
        if (was == GPH_NO_PENDING) {
            q->npending++;
            q->queue[q->qlen++] = p;
        } else {
            q->cancelled++;                /* superseded; its queue entry is still live */
        }
        q->pending[p] = usage;
    }
    if (nnow && apply(q, q->work, nnow, usage) < 0)
        return -ENOMEM;
    rc = gph_hintq_submit(q, 1);
    return rc < 0 ? rc : (long)n;
}

long gph_hintq_make_stable(struct gph_hintq *q, const int64_t *pages, size_t n,
                           int64_t *discarded_out, struct gph_err *err)
{
    long rc = take_request(q, pages, n, err);
    if (rc < 0)
        return rc;
    size_t nnow = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t p = pages[i];
        uint8_t cur = __atomic_load_n(&q->states[p], __ATOMIC_ACQUIRE) & GPH_USAGE_MASK;
        if (cur != GPH_USAGE_STABLE)
            q->work[nnow++] = p;
        else
            cancel(q, p);
    }
    long ndisc = 0;
    for (size_t lo = 0; lo < nnow; lo += q->capacity) {
        size_t k = nnow - lo < q->capacity ? nnow - lo : q->capacity;
        rc = gph_make_stable(q->states, q->npages, q->work + lo, k, discarded_out + ndisc, err);
        if (rc < 0)
            return rc;   /* only -ERANGE, excluded above */
        ndisc += rc;
        q->hint_ops++;
        (*q->ops_total)++;
        q->transitions += k - (size_t)rc;
    }
    return ndisc;
}
