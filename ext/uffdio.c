/* uffdio.c -- the userfaultfd ioctls every filler uses, with the rules that keep a fault from
 * hanging (kernel selftests uffd-common.c, Firecracker's handlers): EAGAIN/EINTR are retried;
 * EEXIST is benign (the page is already there: skip it, the caller's wake covers it); tables
 * are updated before the wake, so a woken thread finds the state it expects. */
#include "faults_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

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
long gph_uffd_fill_(struct gph_service *s, uint8_t *dst, const uint8_t *src, size_t len, size_t ps)
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
                    GPH_ADD(s->total.eexist, 1);
                done += ps;
            }
            per_page = 1;
            continue;
        }
        return -e;
    }
    return 0;
}

void gph_uffd_wake_(struct gph_service *s, uint8_t *start, size_t len)
{
    struct uffdio_range w = {.start = (uint64_t)(uintptr_t)start, .len = len};
    while (ioctl(s->uffd, UFFDIO_WAKE, &w) != 0 && (errno == EINTR || errno == EAGAIN))
        ;
}

