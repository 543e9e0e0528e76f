/* lazyfree.c -- pages the host gave back with MADV_FREE, and how their fate is learnt.
 *
 * MADV_FREE (mm/madvise.c, madvise_free_pte_range) clears the PTE's dirty bit and moves the folio
 * to the lazyfree list; the page stays mapped with its bytes until reclaim takes it.  Reclaim
 * (mm/rmap.c, try_to_unmap_one) clears the PTE, then discards the folio only if it was not
 * written since: a redirtied one is mapped back and stays.  So after MADV_FREE a page is neither
 * resident nor discarded: it is *lazily freed* (content GPH_CONTENT_LAZY: "Uf", "Vf"), and only
 * the kernel knows which it became:
 *   present (mincore)  its old bytes are there (the file's for V, garbage for U), and a write now
 *                      keeps them for good -- no fault, no reload: the reason to pick MADV_FREE;
 *   missing            reclaimed: the next access faults (a userfaultfd MISSING fault when the
 *                      memory is served), exactly like a page discarded with MADV_DONTNEED.
 * A present lazily freed page may go missing at any moment, so "present" is acted on only while
 * the page is held and only by writing to it: resolve_page holds the page with BUSY (the host's
 * hold: guest transitions wait it out, the host skips it, the fault thread serves it without
 * waiting and marks it FILLED), asks mincore, and if present writes one of its bytes back with a
 * CAS -- a write access whatever the compiler does.  If reclaim won the race, that write faults
 * and the fault thread fills the page (zeros for U, the file for V) before the write lands.
 * Missing never turns into present by itself: only a fault or a UFFDIO_COPY fills an anonymous
 * page, and both change the state byte (so the CAS that ends the hold sees them: FILLED).
 *
 * The registry: the guest's setters (protocol.c, called by the hint queue with only a state
 * table) find a memory's frames by its state table here.  GuestMemory registers at creation and
 * unregisters at close; a lookup happens only for a lazily freed page. */
#include "gphint_internal.h"
#include "statelock.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/mman.h>

struct frames {
    uint8_t *states;
    int64_t npages;
    uint8_t *base;
    size_t page_size;
    struct gph_lazy_stats st;   /* updated atomically */
};

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct frames **reg;     /* an entry is never freed while registered */
static size_t nreg, capreg;

long gph_frames_register(uint8_t *states, int64_t npages, uint8_t *base, size_t page_size)
{
    struct frames *f = calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    *f = (struct frames){.states = states, .npages = npages, .base = base, .page_size = page_size};
    pthread_mutex_lock(&reg_lock);
    if (nreg == capreg) {
        size_t cap = capreg ? 2 * capreg : 16;
        struct frames **n = realloc(reg, cap * sizeof *n);
        if (!n) {
            pthread_mutex_unlock(&reg_lock);
            free(f);
            return -ENOMEM;
        }
        reg = n;
        capreg = cap;
    }
    reg[nreg++] = f;
    pthread_mutex_unlock(&reg_lock);
    return 0;
}

long gph_frames_unregister(uint8_t *states)
{
    long rc = -ENOENT;
    pthread_mutex_lock(&reg_lock);
    for (size_t i = 0; i < nreg; i++) {
        if (reg[i]->states == states) {
            free(reg[i]);
            reg[i] = reg[--nreg];
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&reg_lock);
    return rc;
}

/* The caller uses the entry only while the memory is open (it cannot be unregistered then). */
static struct frames *find(uint8_t *states)
{
    struct frames *f = NULL;
    pthread_mutex_lock(&reg_lock);
    for (size_t i = 0; i < nreg; i++) {
        if (reg[i]->states == states) {
            f = reg[i];
            break;
        }
    }
    pthread_mutex_unlock(&reg_lock);
    return f;
}

long gph_frames_stats(uint8_t *states, struct gph_lazy_stats *out)
{
    struct frames *f = find(states);
    if (!f)
        return -ENOENT;
    out->reused = __atomic_load_n(&f->st.reused, __ATOMIC_RELAXED);
    out->reclaimed = __atomic_load_n(&f->st.reclaimed, __ATOMIC_RELAXED);
    return 0;
}

/* A write that changes nothing: the CAS stores the byte it read (a locked write cycle). */
static void rewrite_byte(uint8_t *addr)
{
    uint8_t v = __atomic_load_n(addr, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(addr, &v, v, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

int gph_resolve_lazy_page(uint8_t *b, uint8_t *addr, size_t page_size, int keep_present,
                          struct gph_lazy_stats *st)
{
    uint8_t old;
    for (;;) {
        /* the page's hashed lock around the check and the CAS: in a hashed table (statelock.h)
         * the host and the fault thread hold the lock, not a bit.  Taken in either mode (the
         * table is not known here; unused locks cost one uncontended CAS on this rare path), and
         * never held across the store below, which may fault */
        gph_statelock_lock(b);
        old = __atomic_load_n(b, __ATOMIC_ACQUIRE);
        int held = (old & GPH_FLAG_HELD) != 0, taken = 0;
        if (!held && (old & GPH_CONTENT_MASK) == GPH_CONTENT_LAZY)
            taken = __atomic_compare_exchange_n(b, &old, (uint8_t)(old | GPH_FLAG_BUSY), 0,
                                                __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
        gph_statelock_unlock(b);
        if (held) {   /* the host or the fault thread: one C call of theirs */
            sched_yield();
            continue;
        }
        if ((old & GPH_CONTENT_MASK) != GPH_CONTENT_LAZY)
            return GPH_LAZY_NOT;
        if (taken)
            break;
    }
    unsigned char vec = 1;   /* mincore failing: take it as present -- the write is always safe */
    if (mincore(addr, page_size, &vec) != 0)
        vec = 1;
    int present = vec & 1, outcome;
    uint8_t content;
    if (!present) {
        content = GPH_CONTENT_ZERO;
        outcome = GPH_LAZY_RECLAIMED;
    } else if (keep_present) {
        rewrite_byte(addr);
        content = GPH_CONTENT_RESIDENT;
        outcome = GPH_LAZY_REUSED;
    } else {
        content = GPH_CONTENT_LAZY;
        outcome = GPH_LAZY_LEFT;
    }
    uint8_t cur = __atomic_load_n(b, __ATOMIC_ACQUIRE), want;
    do {
        uint8_t c = content;
        if (cur & GPH_FLAG_FILLED) {   /* reclaimed and refaulted meanwhile: filled, resident */
            c = GPH_CONTENT_RESIDENT;
            outcome = GPH_LAZY_REFAULTED;
        }
        want = (uint8_t)((cur & GPH_USAGE_MASK) | c);
    } while (!__atomic_compare_exchange_n(b, &cur, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
    if (st && outcome == GPH_LAZY_REUSED)
        __atomic_fetch_add(&st->reused, 1, __ATOMIC_RELAXED);
    else if (st && outcome == GPH_LAZY_RECLAIMED)
        __atomic_fetch_add(&st->reclaimed, 1, __ATOMIC_RELAXED);
    /* GPH_LAZY_REFAULTED: the fault thread counted it (lazy_refaults) */
    return outcome;
}

/* protocol.c's hook: resolve page p of the memory whose state table is states. */
long gph_resolve_lazy_one_(uint8_t *states, int64_t p)
{
    struct frames *f = find(states);
    if (!f || p < 0 || p >= f->npages)
        return -ENOENT;
    return gph_resolve_lazy_page(&states[p], f->base + (size_t)p * f->page_size, f->page_size, 1, &f->st);
}

long gph_resolve_lazy(uint8_t *states, int64_t npages, const int64_t *pages, size_t n,
                      int keep_present, struct gph_err *err)
{
    struct frames *f = find(states);
    if (!f) {
        gph_err_set(err, "frames registry", NULL, 0, npages);
        return -ENOENT;
    }
    long resolved = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t p = pages[i];
        if (p < 0 || p >= npages || p >= f->npages) {
            return gph_err_range(err, "page index", p, 1, npages < f->npages ? npages : f->npages);
        }
        if ((__atomic_load_n(&states[p], __ATOMIC_ACQUIRE) & GPH_CONTENT_MASK) != GPH_CONTENT_LAZY)
            continue;
        int o = gph_resolve_lazy_page(&states[p], f->base + (size_t)p * f->page_size, f->page_size,
                                      keep_present, &f->st);
        resolved += o != GPH_LAZY_NOT && o != GPH_LAZY_LEFT;
    }
    return resolved;
}
