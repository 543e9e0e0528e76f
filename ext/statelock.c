/* statelock.c -- the hashed page-state locks and the registry of tables that use them
 * (statelock.h; docs/state-protocol.md "The hashed lock").
 *
 * A spinlock with a sched_yield fallback, not a mutex: every hold is one C call (a madvise, an
 * UFFDIO_COPY, a few CASes), the same bound the hold bits rely on, and the waiter is a thread
 * that holds nothing else; a futex per bucket would cost a syscall on every contended release
 * for waits that are mostly shorter than one. */
#include "statelock.h"
#include "cpu_relax.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <time.h>

struct statelock {
    uintptr_t owner;   /* the owning thread's token (&me_), 0: free */
    uint32_t depth;    /* re-entries by the owner; touched by the owner only */
};

static struct statelock locks[GPH_STATELOCK_BUCKETS];
static __thread char me_;   /* its address names the thread */

static struct statelock *bucket(const uint8_t *b)
{
    uint64_t h = (uint64_t)(uintptr_t)b * 0x9e3779b97f4a7c15ull;   /* Fibonacci hashing */
    return &locks[h >> (64 - 12)];
}

int gph_statelock_try(const uint8_t *b)
{
    struct statelock *l = bucket(b);
    uintptr_t me = (uintptr_t)&me_, cur = __atomic_load_n(&l->owner, __ATOMIC_RELAXED);
    if (cur == me) {
        l->depth++;
        return 1;
    }
    cur = 0;
    if (!__atomic_compare_exchange_n(&l->owner, &cur, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        return 0;
    l->depth = 1;
    return 1;
}

void gph_statelock_lock(const uint8_t *b)
{
    unsigned spins = 0;
    while (!gph_statelock_try(b)) {
        if (++spins < 64)
            gph_cpu_relax();
        else
            sched_yield();
    }
}

void gph_statelock_unlock(const uint8_t *b)
{
    struct statelock *l = bucket(b);
    if (--l->depth == 0)
        __atomic_store_n(&l->owner, 0, __ATOMIC_RELEASE);
}

int gph_statelock_taken(const uint8_t *b)
{
    return __atomic_load_n(&bucket(b)->owner, __ATOMIC_ACQUIRE) != 0;
}

void gph_statelock_hold_test(const uint8_t *b, uint64_t ns, uint8_t *first, uint8_t *last)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u), .tv_nsec = (long)(ns % 1000000000u)};
    gph_statelock_lock(b);
    *first = __atomic_load_n(b, __ATOMIC_ACQUIRE);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    *last = __atomic_load_n(b, __ATOMIC_ACQUIRE);
    gph_statelock_unlock(b);
}

/* --- the registry: open addressing over table addresses; a removed entry becomes GONE so later
 * probes pass it.  Writers serialise on a mutex; readers only load. --- */
#define SLOTS 8192   /* tables in hashed mode at once (a guest each); -ENOSPC beyond */
#define GONE ((const uint8_t *)1)
static const uint8_t *tables[SLOTS];
static pthread_mutex_t tables_lock = PTHREAD_MUTEX_INITIALIZER;

static size_t home(const uint8_t *states)
{
    return (size_t)(((uint64_t)(uintptr_t)states * 0x9e3779b97f4a7c15ull) >> (64 - 13));
}

long gph_statelock_register(const uint8_t *states)
{
    long rc = -ENOSPC;
    size_t free_slot = SLOTS;   /* the first NULL or GONE on the probe path */
    pthread_mutex_lock(&tables_lock);
    for (size_t i = 0, j = home(states); i < SLOTS; i++, j = (j + 1) % SLOTS) {
        const uint8_t *t = __atomic_load_n(&tables[j], __ATOMIC_RELAXED);
        if (t == states) {       /* already registered: one entry per table, or an unregister
                                  * would leave a second one saying "hashed" */
            free_slot = SLOTS;
            rc = 0;
            break;
        }
        if ((t == NULL || t == GONE) && free_slot == SLOTS)
            free_slot = j;
        if (t == NULL)
            break;
    }
    if (free_slot != SLOTS) {
        __atomic_store_n(&tables[free_slot], states, __ATOMIC_RELEASE);
        rc = 0;
    }
    pthread_mutex_unlock(&tables_lock);
    return rc;
}

void gph_statelock_unregister(const uint8_t *states)
{
    pthread_mutex_lock(&tables_lock);
    for (size_t i = 0, j = home(states); i < SLOTS; i++, j = (j + 1) % SLOTS) {
        const uint8_t *t = __atomic_load_n(&tables[j], __ATOMIC_RELAXED);
        if (t == NULL)
            break;
        if (t == states) {
            __atomic_store_n(&tables[j], GONE, __ATOMIC_RELEASE);
            /* GONE entries that end a probe chain (a NULL follows) are passed by no probe:
             * clear them, backwards, so that guests registered and closed over a long run
             * do not leave every lookup (one per state change) scanning the whole table */
            for (size_t k = j; __atomic_load_n(&tables[(k + 1) % SLOTS], __ATOMIC_RELAXED) == NULL
                               && __atomic_load_n(&tables[k], __ATOMIC_RELAXED) == GONE;
                 k = (k + SLOTS - 1) % SLOTS)
                __atomic_store_n(&tables[k], NULL, __ATOMIC_RELEASE);
            break;
        }
    }
    pthread_mutex_unlock(&tables_lock);
}

int gph_statelock_hashed(const uint8_t *states)
{
    for (size_t i = 0, j = home(states); i < SLOTS; i++, j = (j + 1) % SLOTS) {
        const uint8_t *t = __atomic_load_n(&tables[j], __ATOMIC_ACQUIRE);
        if (t == NULL)
            return 0;
        if (t == states)
            return 1;
    }
    return 0;
}
