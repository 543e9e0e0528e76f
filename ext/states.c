/* states.c -- per-page state bytes, updated with byte-wide atomics.
 *
 * The guest thread (set_usage), the host thread (discard: set_content) and the fault thread
 * (reload: content back to resident) all write the same bytes.  A plain read-modify-write would
 * let one of them overwrite another's update (e.g. a guest making a page STABLE while the host
 * marks it discarded), so every update is a compare-and-swap that keeps the bits it does not own.
 * The guest's usage changes (gph_set_usage) live in protocol.c: they also wait out host holds.
 */
#include "gphint_internal.h"

#include <errno.h>

long gph_set_content(uint8_t *states, int64_t npages, const int64_t *pages, size_t n,
                     uint8_t content, struct gph_err *err)
{
    for (size_t i = 0; i < n; i++)   /* every index first: a refusal changes nothing */
        if (pages[i] < 0 || pages[i] >= npages)
            return gph_err_range(err, "page index", pages[i], 1, npages);
    for (size_t i = 0; i < n; i++) {
        uint8_t *b = &states[pages[i]];
        uint8_t old = __atomic_load_n(b, __ATOMIC_ACQUIRE);
        uint8_t want;
        do {
            want = (uint8_t)((old & ~GPH_CONTENT_MASK) | (content & GPH_CONTENT_MASK));
        } while (!__atomic_compare_exchange_n(b, &old, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
    }
    return (long)n;
}
