/* gphint.h -- the C contract of gphint's mechanism, on one screen.
 *
 * Rules for everything declared here:
 *   - returns >= 0 on success, -errno on failure; on failure *err names the syscall and range;
 *   - never includes Python.h, never allocates Python objects, safe to call without the GIL;
 *   - makes no policy decisions: Python chose the pages, the advice and the submission mode.
 */
#ifndef GPHINT_H
#define GPHINT_H

#include <stddef.h>
#include <stdint.h>

/* --- page state byte (one per guest page; shared by guest thread, host thread, fault thread) ---
 * bits 2-3: guest usage state, s390 ESSA encoding; bits 0-1: host content state;
 * bits 4-7: transient flags owned by the state protocol (see faults.c / docs/state-protocol.md). */
#define GPH_USAGE_MASK     0x0c
#define GPH_USAGE_STABLE   0x00
#define GPH_USAGE_UNUSED   0x04
#define GPH_USAGE_POTVOL   0x08
#define GPH_USAGE_VOLATILE 0x0c
#define GPH_CONTENT_MASK     0x03
#define GPH_CONTENT_RESIDENT 0x00
#define GPH_CONTENT_PRESERVED 0x02
#define GPH_CONTENT_ZERO     0x03
#define GPH_PAIR_MASK  0x0f   /* usage | content: the index into transition tables */
#define GPH_FLAG_MASK  0xf0

struct gph_err {
    const char *syscall;   /* the call that failed, e.g. "process_madvise" */
    int64_t first_page;    /* first page of the failing range (or the offending index) */
    int64_t npages;        /* pages in the failing range */
};

/* --- discard.c: give pages back to the host kernel --- */
enum { GPH_ADVICE_DONTNEED = 0, GPH_ADVICE_FREE = 1 };
enum { GPH_SUBMIT_PER_PAGE = 0, GPH_SUBMIT_COALESCE = 1, GPH_SUBMIT_VECTORED = 2 };
#define GPH_IOV_MAX 1024   /* UIO_MAXIOV: iovecs per process_madvise call */

struct gph_discard_stats {
    uint64_t calls;   /* madvise/process_madvise system calls issued */
    uint64_t runs;    /* contiguous runs after coalescing */
    uint64_t pages;   /* pages discarded */
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

/* --- states.c: atomic per-byte state updates --- */
/* next[(old & GPH_PAIR_MASK) << 2 | usage >> 2] is the new pair, or 0xff when forbidden.
 * Validates all pages first (nothing written on a refusal), then applies each with a CAS so a
 * concurrent host/fault-thread update is never overwritten.  Flags (bits 4-7) are preserved.
 * Refusal: -EPERM (forbidden) or -EAGAIN (a concurrent change made it forbidden) with
 * err->first_page = the index into pages[] and *old_out = the state seen. */
long gph_set_usage(uint8_t *states, int64_t npages, const int64_t *pages, size_t n,
                   uint8_t usage, const uint8_t next[64], uint8_t *old_out, struct gph_err *err);
/* Set the content bits of pages[] to content (CAS, other bits preserved). */
long gph_set_content(uint8_t *states, int64_t npages, const int64_t *pages, size_t n,
                     uint8_t content, struct gph_err *err);

/* --- residency.c: what the kernel says is resident --- */
/* vec gets one byte per page (bit 0 = resident); returns the number of resident pages. */
long gph_residency(uint8_t *base, size_t page_size, int64_t npages, uint8_t *vec,
                   struct gph_err *err);

#endif /* GPHINT_H */
