/* swapped.c -- which pages of a range the *kernel* has swapped out (pagemap bit 62).
 *
 * mincore says "not resident" both for a hole (no page at all: reads as zeros) and for a page
 * the kernel swapped to a swap area (its bytes are in swap).  Under a memory cgroup the kernel
 * swaps guest memory too, so a page gphint detaches for its own host swap may be such a page
 * between the host's residency sample and the UFFDIO_MOVE: treating it as a hole would write
 * zeros for it -- data lost.  Pagemap tells the two apart (Documentation/admin-guide/mm/
 * pagemap.rst: bit 62 "page swapped", bit 63 "page present"); reading a swapped page faults it
 * back in from swap in the kernel, not through userfaultfd (its pte is not missing). */
#include "gphint_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#define PM_SWAP (1ULL << 62)
#define PM_PRESENT (1ULL << 63)
#define PM_CHUNK 512

/* /proc/self/pagemap, opened once for the process (also dirty.c's soft-dirty scan). */
int gph_pagemap_fd_(void)
{
    static int fd = -1;
    int f = __atomic_load_n(&fd, __ATOMIC_ACQUIRE);
    if (f >= 0)
        return f;
    f = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (f < 0)
        return -errno;
    int expected = -1;
    if (!__atomic_compare_exchange_n(&fd, &expected, f, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        close(f);   /* another thread won */
        return expected;
    }
    return f;
}

/* Set bit 0 of resident[i] for each page of [addr, addr + n pages) that is swapped out or
 * present; returns how many were added, or -errno (then the caller must assume content: the
 * safe side is to read the page, never to write zeros for it). */
long gph_mark_swapped_(const uint8_t *addr, size_t page_size, int64_t n, uint8_t *resident)
{
    int fd = gph_pagemap_fd_();
    if (fd < 0)
        return fd;
    uint64_t ent[PM_CHUNK];
    long added = 0;
    for (int64_t i = 0; i < n; i += PM_CHUNK) {
        int64_t k = n - i < PM_CHUNK ? n - i : PM_CHUNK;
        off_t off = (off_t)((uintptr_t)addr / page_size + (uint64_t)i) * (off_t)sizeof(uint64_t);
        long got = gph_read_full(fd, ent, (size_t)k * sizeof(uint64_t), off);
        if (got < 0)
            return got;
        for (int64_t j = 0; j < k; j++)
            if (!(resident[i + j] & 1) && (ent[j] & (PM_SWAP | PM_PRESENT))) {
                resident[i + j] |= 1;
                added++;
            }
    }
    return added;
}
