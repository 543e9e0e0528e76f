/* dirty.c -- the host dirty bit of POT_VOLATILE pages: real write tracking by the kernel.
 *
 * Ranges are registered with UFFDIO_REGISTER_MODE_WP on a userfaultfd opened with
 * UFFD_FEATURE_WP_ASYNC: a write to a write-protected page is resolved inside the kernel (no
 * round trip to the fault thread) and leaves the page "written".  PAGEMAP_SCAN (Linux >= 6.7)
 * reads PAGE_IS_WRITTEN over a range, and with PM_SCAN_WP_MATCHING write-protects the written
 * pages again in the same page-table walk: test-and-clear, atomic per page. */
#include "gphint_internal.h"
#include "uffd_compat.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#define SCAN_VEC 256

static int pagemap_fd(void)
{
    return gph_pagemap_fd_();   /* one process-wide fd, opened once (swapped.c) */
}

long gph_dirty_scan(uint8_t *base, size_t page_size, int64_t first, int64_t n, int clear,
                    uint8_t *written, struct gph_err *err)
{
    if (n <= 0)
        return 0;
    memset(written, 0, (size_t)n);
    int fd = pagemap_fd();
    if (fd < 0) {
        gph_err_set(err, NULL, "open(/proc/self/pagemap)", first, n);
        return fd;
    }
    uint64_t start = (uint64_t)(uintptr_t)(base + (size_t)first * page_size);
    uint64_t end = start + (uint64_t)n * page_size;
    struct page_region vec[SCAN_VEC];
    long nwritten = 0;
    while (start < end) {
        struct pm_scan_arg arg;
        memset(&arg, 0, sizeof arg);
        arg.size = sizeof arg;
        arg.flags = clear ? (PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC) : 0;
        arg.start = start;
        arg.end = end;
        arg.vec = (uint64_t)(uintptr_t)vec;
        arg.vec_len = SCAN_VEC;
        arg.category_mask = PAGE_IS_WRITTEN;
        arg.return_mask = PAGE_IS_WRITTEN;
        long got = ioctl(fd, PAGEMAP_SCAN, &arg);
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            gph_err_set(err, NULL, "ioctl(PAGEMAP_SCAN)", first, n);
            return -errno;
        }
        for (long i = 0; i < got; i++) {
            int64_t a = (int64_t)((vec[i].start - (uint64_t)(uintptr_t)base) / page_size) - first;
            int64_t b = (int64_t)((vec[i].end - (uint64_t)(uintptr_t)base) / page_size) - first;
            for (int64_t j = a < 0 ? 0 : a; j < b && j < n; j++) {
                written[j] = 1;
                nwritten++;
            }
        }
        /* walk_end says where the kernel stopped (vec full); resume there */
        if (arg.walk_end <= start || arg.walk_end >= end)
            break;
        start = arg.walk_end;
    }
    return nwritten;
}
