/* regions.c -- the fault service's region table: ids for the host, addresses for the fault thread.
 *
 * A region id is an index into `slot` (stable for the region's life, reused after it is gone);
 * `span` lists the registered ranges sorted by address, so the fault thread finds the region of
 * a faulting address by binary search: O(log n) with hundreds of guests behind one userfaultfd.
 * Both arrays grow by doubling.  Every function here runs with the service's rwlock held: the
 * read lock for lookups, the write lock for add and remove (which may move the arrays). */
#include "faults_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int grow(void **arr, uint32_t *cap, size_t elem, uint32_t want)
{
    if (want <= *cap)
        return 0;
    uint32_t ncap = *cap ? *cap : 16;
    while (ncap < want)
        ncap *= 2;
    void *p = realloc(*arr, (size_t)ncap * elem);
    if (!p)
        return -ENOMEM;
    memset((char *)p + (size_t)*cap * elem, 0, (size_t)(ncap - *cap) * elem);
    *arr = p;
    *cap = ncap;
    return 0;
}

static uint64_t region_start(const struct gph_region *r)
{
    return (uint64_t)(uintptr_t)r->d.base;
}

static uint64_t region_end(const struct gph_region *r)
{
    return region_start(r) + (uint64_t)r->d.npages * r->d.page_size;
}

/* Index of the first span whose start is > addr. */
static uint32_t spans_after(const struct gph_regions *t, uint64_t addr)
{
    uint32_t lo = 0, hi = t->nspan;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (region_start(t->span[mid]) <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Enter r (filled in, not yet active) under a free id; write lock held.  Returns the id, or
 * -ENOSPC (GPH_MAX_REGIONS ids in use) / -ENOMEM. */
int gph_regions_add_(struct gph_regions *t, struct gph_region *r)
{
    uint32_t rid = t->lowest_free;
    while (rid < t->nslot && t->slot[rid])
        rid++;
    if (rid >= GPH_MAX_REGIONS)
        return -ENOSPC;
    if (grow((void **)&t->slot, &t->cap_slot, sizeof *t->slot, rid + 1) ||
        grow((void **)&t->span, &t->cap_span, sizeof *t->span, t->nspan + 1))
        return -ENOMEM;
    uint32_t at = spans_after(t, region_start(r));
    memmove(&t->span[at + 1], &t->span[at], (size_t)(t->nspan - at) * sizeof *t->span);
    t->span[at] = r;
    t->nspan++;
    t->slot[rid] = r;
    if (rid >= t->nslot)
        t->nslot = rid + 1;
    t->lowest_free = rid + 1;
    r->rid = (int)rid;
    return (int)rid;
}

/* Take region rid out of both arrays and return it (the caller frees it); write lock held. */
struct gph_region *gph_regions_remove_(struct gph_regions *t, int rid)
{
    struct gph_region *r = gph_regions_get_(t, rid);
    if (!r)
        return NULL;
    uint32_t at = spans_after(t, region_start(r)) - 1;   /* ranges never overlap: this is r */
    memmove(&t->span[at], &t->span[at + 1], (size_t)(t->nspan - at - 1) * sizeof *t->span);
    t->nspan--;
    t->slot[rid] = NULL;
    while (t->nslot > 0 && !t->slot[t->nslot - 1])
        t->nslot--;
    if ((uint32_t)rid < t->lowest_free)
        t->lowest_free = (uint32_t)rid;
    return r;
}

struct gph_region *gph_regions_get_(struct gph_regions *t, int rid)
{
    if (rid < 0 || (uint32_t)rid >= t->nslot)   /* bounds before the address */
        return NULL;
    return t->slot[rid];
}

struct gph_region *gph_regions_at_(struct gph_regions *t, uint64_t addr)
{
    uint32_t after = spans_after(t, addr);
    if (after == 0)
        return NULL;
    struct gph_region *r = t->span[after - 1];
    return addr < region_end(r) ? r : NULL;
}

void gph_regions_free_(struct gph_regions *t)
{
    free(t->slot);
    free(t->span);
    memset(t, 0, sizeof *t);
}
