/* discard.c -- coalesce page indices into runs and hand them back to the kernel.
 *
 * Three submission modes, because comparing them is one of gphint's purposes:
 *   per_page  one madvise() per 4 KiB page (what a naive hinting guest costs the host);
 *   coalesce  one madvise() per contiguous run;
 *   vectored  process_madvise() on our own pidfd with up to GPH_IOV_MAX runs per call
 *             (Linux >= 6.13 accepts any advice for the calling process).  One call means
 *             one TLB shootdown for the whole batch once other threads run (a madvise per 4 KiB
 *             page costs ~6x more then: one shootdown IPI per call; bench_discard measures it).
 * Counted: every system call made (a retried call counts again: it is what the kernel was
 * asked), and how many of the pages were resident just before (mincore), since advising a page
 * that was never touched or is already gone frees nothing.
 */
#include "gphint_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef MADV_FREE
#define MADV_FREE 8
#endif
#ifndef SYS_process_madvise
#define SYS_process_madvise 440
#endif

static int advice_flag(int advice)
{
    return advice == GPH_ADVICE_FREE ? MADV_FREE : MADV_DONTNEED;
}

static long madvise_range(uint8_t *base, size_t ps, int64_t first, int64_t n, int adv,
                          struct gph_discard_stats *st, struct gph_err *err)
{
    for (;;) {
        st->calls++;
        if (madvise(base + (size_t)first * ps, (size_t)n * ps, adv) == 0)
            return 0;
        if (errno == EINTR || errno == EAGAIN)
            continue;
        gph_err_set(err, NULL, "madvise", first, n);
        return -errno;
    }
}

/* One process_madvise() per GPH_IOV_MAX runs.  The kernel may stop part-way (it returns the
 * bytes advised so far); resume after the last complete iovec rather than trusting a count. */
static long vectored(uint8_t *base, size_t ps, const int64_t *runs, size_t nruns, int adv,
                     int pidfd, struct gph_discard_stats *st, struct gph_err *err)
{
    struct iovec iov[GPH_IOV_MAX];
    size_t i = 0;
    while (i < nruns) {
        size_t k = nruns - i < GPH_IOV_MAX ? nruns - i : GPH_IOV_MAX;
        size_t want = 0;
        for (size_t j = 0; j < k; j++) {
            iov[j].iov_base = base + (size_t)runs[2 * (i + j)] * ps;
            iov[j].iov_len = (size_t)runs[2 * (i + j) + 1] * ps;
            want += iov[j].iov_len;
        }
        st->calls++;
        long done = syscall(SYS_process_madvise, pidfd, iov, k, adv, 0);
        if (done < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            gph_err_set(err, NULL, "process_madvise", runs[2 * i], runs[2 * i + 1]);
            return -errno;
        }
        if ((size_t)done == want) {
            i += k;
            continue;
        }
        /* partial: skip the iovecs fully covered, redo from the first incomplete one */
        size_t covered = 0, j = 0;
        while (j < k && covered + iov[j].iov_len <= (size_t)done)
            covered += iov[j++].iov_len;
        if (j == 0) {  /* no progress and no error: refuse to spin */
            gph_err_set(err, NULL, "process_madvise", runs[2 * i], runs[2 * i + 1]);
            return -EIO;
        }
        i += j;
    }
    return 0;
}

static long submit_runs(uint8_t *base, size_t ps, const int64_t *runs, size_t nruns, int advice,
                        int submit, int pidfd, struct gph_discard_stats *st, struct gph_err *err)
{
    int adv = advice_flag(advice);
    long rc = 0;
    switch (submit) {
    case GPH_SUBMIT_PER_PAGE:
        for (size_t r = 0; r < nruns && rc == 0; r++)
            for (int64_t p = runs[2 * r]; p < runs[2 * r] + runs[2 * r + 1] && rc == 0; p++)
                rc = madvise_range(base, ps, p, 1, adv, st, err);
        return rc;
    case GPH_SUBMIT_COALESCE:
        for (size_t r = 0; r < nruns && rc == 0; r++)
            rc = madvise_range(base, ps, runs[2 * r], runs[2 * r + 1], adv, st, err);
        return rc;
    case GPH_SUBMIT_VECTORED:
        return vectored(base, ps, runs, nruns, adv, pidfd, st, err);
    default:
        gph_err_set(err, "submit mode", NULL, submit, 0);
        return -EINVAL;
    }
}

/* Resident pages among runs (mincore just before the advice): one call over the runs' span when
 * it is dense enough, else one per run.  A range mincore refuses (a hole) counts as not resident. */
static uint64_t count_resident(uint8_t *base, size_t ps, const int64_t *runs, size_t nruns)
{
    int64_t lo = INT64_MAX, hi = 0, total = 0;
    for (size_t r = 0; r < nruns; r++) {
        if (runs[2 * r] < lo)
            lo = runs[2 * r];
        if (runs[2 * r] + runs[2 * r + 1] > hi)
            hi = runs[2 * r] + runs[2 * r + 1];
        total += runs[2 * r + 1];
    }
    if (total == 0)
        return 0;
    uint64_t n = 0;
    int64_t span = hi - lo;
    unsigned char *vec = (span <= 4 * total || span <= 4096) ? malloc((size_t)span) : NULL;
    if (vec && mincore(base + (size_t)lo * ps, (size_t)span * ps, vec) == 0) {
        for (size_t r = 0; r < nruns; r++)
            for (int64_t p = runs[2 * r]; p < runs[2 * r] + runs[2 * r + 1]; p++)
                n += vec[p - lo] & 1;
        free(vec);
        return n;
    }
    free(vec);
    unsigned char small[512];
    for (size_t r = 0; r < nruns; r++) {
        for (int64_t p = runs[2 * r]; p < runs[2 * r] + runs[2 * r + 1];) {
            int64_t k = runs[2 * r] + runs[2 * r + 1] - p;
            if (k > (int64_t)sizeof small)
                k = (int64_t)sizeof small;
            if (mincore(base + (size_t)p * ps, (size_t)k * ps, small) == 0)
                for (int64_t j = 0; j < k; j++)
                    n += small[j] & 1;
            p += k;
        }
    }
    return n;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Sorted, de-duplicated indices -> (first, npages) pairs in out; returns the number of runs. */
static size_t coalesce(const int64_t *p, size_t n, int64_t *out)
{
    size_t nruns = 0;
    for (size_t i = 0; i < n;) {
        int64_t first = p[i], last = p[i];
        for (i++; i < n && p[i] <= last + 1; i++)
            last = p[i] > last ? p[i] : last;
        out[2 * nruns] = first;
        out[2 * nruns + 1] = last - first + 1;
        nruns++;
    }
    return nruns;
}

long gph_discard_pages(uint8_t *base, size_t page_size, int64_t npages,
                       const int64_t *pages, size_t n, int advice, int submit, int pidfd,
                       struct gph_discard_stats *st, struct gph_err *err)
{
    int sorted = 1;
    for (size_t i = 0; i < n; i++) {
        if (pages[i] < 0 || pages[i] >= npages) {
            return gph_err_range(err, "page index", pages[i], 1, npages);
        }
        if (i && pages[i] < pages[i - 1])
            sorted = 0;
    }
    if (n == 0)
        return 0;
    int64_t *copy = NULL;
    const int64_t *p = pages;
    int64_t *runs = malloc(2 * n * sizeof(int64_t));
    if (!runs) {
        gph_err_set(err, NULL, "malloc", 0, (int64_t)n);
        return -ENOMEM;
    }
    if (!sorted) {
        copy = malloc(n * sizeof(int64_t));
        if (!copy) {
            free(runs);
            gph_err_set(err, NULL, "malloc", 0, (int64_t)n);
            return -ENOMEM;
        }
        memcpy(copy, pages, n * sizeof(int64_t));
        qsort(copy, n, sizeof(int64_t), cmp_i64);
        p = copy;
    }
    size_t nruns = coalesce(p, n, runs);
    long total = 0;
    for (size_t r = 0; r < nruns; r++)
        total += runs[2 * r + 1];
    uint64_t resident = count_resident(base, page_size, runs, nruns);
    long rc = submit_runs(base, page_size, runs, nruns, advice, submit, pidfd, st, err);
    free(copy);
    free(runs);
    if (rc < 0)
        return rc;
    st->runs += nruns;
    st->pages += total;
    st->resident += resident;
    if (advice == GPH_ADVICE_FREE)
        st->lazy += (uint64_t)total;
    return total;
}

long gph_discard_runs(uint8_t *base, size_t page_size, int64_t npages,
                      const int64_t *runs, size_t n, int advice, int submit, int pidfd,
                      struct gph_discard_stats *st, struct gph_err *err)
{
    long total = 0;
    for (size_t r = 0; r < n; r++) {
        int64_t first = runs[2 * r], len = runs[2 * r + 1];
        if (first < 0 || len < 0 || first + len > npages) {
            return gph_err_range(err, "page run", first, len, npages);
        }
        total += len;
    }
    uint64_t resident = count_resident(base, page_size, runs, n);
    long rc = submit_runs(base, page_size, runs, n, advice, submit, pidfd, st, err);
    if (rc < 0)
        return rc;
    st->runs += n;
    st->pages += total;
    st->resident += resident;
    if (advice == GPH_ADVICE_FREE)
        st->lazy += (uint64_t)total;
    return total;
}
