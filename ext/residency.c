/* residency.c -- ask the kernel which guest pages are resident (mincore: ~2 ns/page). */
#include "gphint_internal.h"

#include <errno.h>
#include <sys/mman.h>

long gph_residency(uint8_t *base, size_t page_size, int64_t npages, uint8_t *vec,
                   struct gph_err *err)
{
    if (npages == 0)
        return 0;
    if (mincore(base, (size_t)npages * page_size, vec) != 0) {
        gph_err_set(err, NULL, "mincore", 0, npages);
        return -errno;
    }
    long n = 0;
    for (int64_t i = 0; i < npages; i++) {
        vec[i] &= 1;
        n += vec[i];
    }
    return n;
}
