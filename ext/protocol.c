/* protocol.c -- the guest side of the per-page state protocol (docs/state-protocol.md).
 *
 * Three parties write a page's state byte: the guest (usage changes), the host (discard, swap-out)
 * and the fault thread (reload).  The host and the fault thread *hold* a page while they work on
 * it by setting a flag with a CAS (GPH_FLAG_BUSY, GPH_FLAG_SERVING); the guest waits out a held
 * page before changing its usage.  Hold times are one C call (a madvise / UFFDIO_MOVE / pwrite /
 * UFFDIO_COPY), and neither the host nor the fault thread ever waits for the guest, so the wait
 * cannot deadlock.
 *
 * Interleavings (guest G, host H, fault thread F; "pick" = H's CAS Xr -> Xr|BUSY):
 *  1. G make_stable before H pick: Vr -> Sr; H's pick CAS fails (state changed), page skipped.
 *  2. H pick before G make_stable: G waits until H finishes; it then sees Vz, leaves it and
 *     reports it discarded -- the guest never writes a page whose discard is in flight.
 *  3. G writes a STABLE page while H swaps it out: H detaches the page atomically (UFFDIO_MOVE)
 *     before reading it, so a write lands either before the detach (and is written to swap) or
 *     after it (it faults; F waits for BUSY to clear and swaps the page back in first).
 *  4. G writes a POT_VOLATILE page while H discards it: H reads the dirty bit, detaches the clean
 *     page, then compares the detached bytes with the backing file; a write that slipped in
 *     between makes them differ and the page is preserved in swap instead (Pr -> Sp).
 *  5. G frees (V -> U) or re-uses a page while F reloads it: F holds it (SERVING); G waits, so a
 *     freed-then-allocated page never receives stale file bytes after the guest zeroed it.
 *  6. F serves a page H holds (the access came after H's madvise): F marks it FILLED and H's
 *     finish leaves the content RESIDENT instead of ZERO.
 *  7. G allocates (Uf -> S) or makes stable (Vf -> S) a page H lazily freed (MADV_FREE): the
 *     page is resolved first (lazyfree.c, holding it like H does): present -> written back, kept
 *     (Xr); missing -> Xz (Vz is then a discard fault).  Then the transition of that pair applies.
 */
#include "cpu_relax.h"
#include "gphint_internal.h"
#include "statelock.h"

#include <errno.h>
#include <sched.h>

/* Wait until no host/fault-thread hold is on *b; returns the state seen. */
static uint8_t wait_unheld(uint8_t *b)
{
    unsigned spins = 0;
    uint8_t s;
    while ((s = __atomic_load_n(b, __ATOMIC_ACQUIRE)) & GPH_FLAG_HELD) {
        if (++spins < 64)
            gph_cpu_relax();
        else
            sched_yield();
    }
    return s;
}

/* Hashed mode (statelock.h): take the page's lock, then wait out any bit hold still on it (a
 * multi-page hold or a lazy resolution) with the lock released.  Returns the state seen; the
 * caller's CAS and unlock follow.  Hold-bit mode: wait_unheld. */
static uint8_t enter(uint8_t *b, int hashed)
{
    for (;;) {
        if (!hashed)
            return wait_unheld(b);
        gph_statelock_lock(b);
        uint8_t s = __atomic_load_n(b, __ATOMIC_ACQUIRE);
        if (!(s & GPH_FLAG_HELD))
            return s;
        gph_statelock_unlock(b);
        wait_unheld(b);
    }
}

static void leave(uint8_t *b, int hashed)
{
    if (hashed)
        gph_statelock_unlock(b);
}

static long refuse(struct gph_err *err, const char *what, size_t i, uint8_t *old_out, uint8_t old, long rc)
{
    gph_err_set(err, what, NULL, (int64_t)i, 1);
    *old_out = old;
    return rc;
}

long gph_set_usage(uint8_t *states, int64_t npages, const int64_t *pages, size_t n,
                   uint8_t usage, const uint8_t next[64], uint8_t *old_out, struct gph_err *err)
{
    unsigned u = (usage & GPH_USAGE_MASK) >> 2;
    for (size_t i = 0; i < n; i++) {   /* pass 1: validate, write nothing */
        int64_t p = pages[i];
        if (p < 0 || p >= npages)
            return refuse(err, "page index", i, old_out, 0, -ERANGE);
        uint8_t old = __atomic_load_n(&states[p], __ATOMIC_ACQUIRE);
        if (next[((old & GPH_PAIR_MASK) << 2) | u] == 0xff)
            return refuse(err, "set_usage", i, old_out, old, -EPERM);
    }
    int hashed = gph_statelock_hashed(states);
    for (size_t i = 0; i < n; i++) {   /* pass 2: apply, waiting out held pages */
        uint8_t *b = &states[pages[i]];
        for (;;) {
            uint8_t old = enter(b, hashed);
            uint8_t nx = next[((old & GPH_PAIR_MASK) << 2) | u];
            if (nx != GPH_NEXT_RESOLVE && nx != 0xff) {
                /* the CAS expects an unheld byte: a hold taken since the wait makes it fail */
                uint8_t want = (uint8_t)((old & GPH_FLAG_MASK & ~GPH_FLAG_HELD) | nx);
                int done = __atomic_compare_exchange_n(b, &old, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
                leave(b, hashed);
                if (done)
                    break;
                continue;
            }
            leave(b, hashed);   /* never across the resolver: its store may fault */
            if (nx == GPH_NEXT_RESOLVE) {   /* lazily freed: ask the kernel, then look again */
                if (gph_resolve_lazy_one_(states, pages[i]) < 0)
                    return refuse(err, "set_usage: lazily freed page of unregistered frames", i,
                                  old_out, old, -EPERM);
                continue;
            }
            /* a concurrent change made it forbidden */
            return refuse(err, "set_usage", i, old_out, old, -EAGAIN);
        }
    }
    return (long)n;
}

long gph_make_stable(uint8_t *states, int64_t npages, const int64_t *pages, size_t n,
                     int64_t *discarded_out, struct gph_err *err)
{
    long ndisc = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t p = pages[i];
        if (p < 0 || p >= npages) {
            return gph_err_range(err, "page index", p, 1, npages);
        }
    }
    int hashed = gph_statelock_hashed(states);
    for (size_t i = 0; i < n; i++) {
        uint8_t *b = &states[pages[i]];
        for (;;) {
            uint8_t old = enter(b, hashed);
            uint8_t usage = old & GPH_USAGE_MASK, content = old & GPH_CONTENT_MASK;
            if (content == GPH_CONTENT_LAZY || (usage == GPH_USAGE_VOLATILE && content == GPH_CONTENT_ZERO))
                leave(b, hashed);   /* never across the resolver: its store may fault */
            if (content == GPH_CONTENT_LAZY) {   /* Uf/Vf: present -> kept (Xr), missing -> Xz */
                if (gph_resolve_lazy_one_(states, pages[i]) < 0) {
                    gph_err_set(err, "make_stable: lazily freed page of unregistered frames", NULL, pages[i], 1);
                    return -EPERM;
                }
                continue;
            }
            if (usage == GPH_USAGE_VOLATILE && content == GPH_CONTENT_ZERO) {
                discarded_out[ndisc++] = pages[i];   /* Vz: a discard fault, the guest decides */
                break;
            }
            /* resident stays resident, preserved stays preserved, zero stays zero */
            uint8_t want = (uint8_t)((old & GPH_FLAG_MASK & ~GPH_FLAG_HELD) | GPH_USAGE_STABLE | content);
            if (usage == GPH_USAGE_POTVOL && content != GPH_CONTENT_RESIDENT)
                want = (uint8_t)(GPH_USAGE_STABLE | GPH_CONTENT_RESIDENT);   /* invalid Pp/Pz: never made */
            int done = __atomic_compare_exchange_n(b, &old, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
            leave(b, hashed);
            if (done)
                break;
        }
    }
    return ndisc;
}
