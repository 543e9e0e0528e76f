/* register.c -- guests in and out of the fault service: register (the region table and
 * UFFDIO_REGISTER under one write lock), unregister (shut the host out, reload what lives
 * elsewhere, UFFDIO_UNREGISTER), and what Python reads of a region: counters, errors, the
 * discarded-page list, swap slots given up. */
#include "faults_internal.h"
#include "statelock.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct gph_region *gph_region_(struct gph_service *s, int rid)
{
    return gph_regions_get_(&s->regions, rid);
}

struct gph_region *gph_region_open_(struct gph_service *s, int rid)
{
    struct gph_region *r = gph_region_(s, rid);
    return r && !r->closing ? r : NULL;
}

long gph_service_register(struct gph_service *s, const struct gph_region_desc *d, struct gph_err *err)
{
    if (d->page_size != s->page_size) {   /* userfaultfd fills and wakes whole kernel pages */
        gph_err_set(err, "register: page size is not the kernel's", NULL, 0, d->npages);
        return -EINVAL;
    }
    struct gph_region *r = calloc(1, sizeof *r);
    if (!r) {
        gph_err_set(err, NULL, "calloc", 0, 0);
        return -ENOMEM;
    }
    r->d = *d;
    r->ring_cap = (uint64_t)d->npages + 1024;
    pthread_mutex_init(&r->ring_lock, NULL);
    struct uffdio_register reg = {.range = {.start = (uint64_t)(uintptr_t)d->base,
                                            .len = (uint64_t)d->npages * d->page_size},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING |
                                          ((s->features & UFFD_FEATURE_WP_ASYNC) ? UFFDIO_REGISTER_MODE_WP : 0)};
    /* enter and register the region under one write lock: a second registration cannot take
     * the same id, and the fault thread (which serves under the read lock) finds the region
     * complete before the first fault on it can be served */
    pthread_rwlock_wrlock(&s->lock);
    gph_race_delay_(s);   /* tests: a concurrent registration waits here, at the lock */
    /* hashed: the guest's transitions must take the locks before the first host or fault-thread
     * hold on this table, so the table is marked before the region can be found */
    long rc = s->hashed ? gph_statelock_register(d->states) : 0;
    int table_full = rc == -ENOSPC;
    if (table_full)
        gph_err_set(err, "register: hashed-lock table registry full (8192 tables)", NULL, 0, 0);
    else
        rc = gph_regions_add_(&s->regions, r);
    if (rc == -ENOSPC && !table_full)
        gph_err_set(err, "register: region table full (1048576 regions)", NULL, 0, 0);
    else if (rc < 0)
        gph_err_set(err, NULL, "realloc", 0, 0);
    else if (ioctl(s->uffd, UFFDIO_REGISTER, &reg) != 0) {
        rc = -errno;
        gph_err_set(err, NULL, "ioctl(UFFDIO_REGISTER)", 0, d->npages);
        gph_regions_remove_(&s->regions, r->rid);
    }
    if (rc < 0 && s->hashed)
        gph_statelock_unregister(d->states);
    pthread_rwlock_unlock(&s->lock);
    if (rc < 0) {
        pthread_mutex_destroy(&r->ring_lock);
        free(r);
    }
    return rc;
}

long gph_service_unregister(struct gph_service *s, int rid, int materialize, struct gph_err *err)
{
    /* Close the region to the host first.  A host operation holds the read lock from its region
     * check to its last state change, so once this write lock is ours none that saw the region
     * open is still running, and none that starts later takes a page.  Only then is "reload
     * what lives elsewhere" final: nothing can be swapped out or discarded behind it. */
    pthread_rwlock_wrlock(&s->lock);
    struct gph_region *r = gph_region_open_(s, rid);
    if (r)
        r->closing = 1;
    pthread_rwlock_unlock(&s->lock);
    if (!r)
        return -ENOENT;   /* not registered, or another unregister is under way */
    long rc = 0;
    if (materialize) {
        uint8_t *bounce = gph_map_buf_(GPH_WINDOW_MAX);
        if (!bounce) {
            gph_err_set(err, NULL, "mmap", 0, 0);
            pthread_rwlock_wrlock(&s->lock);
            r->closing = 0;   /* still served: the caller may try again */
            pthread_rwlock_unlock(&s->lock);
            return -ENOMEM;
        }
        memset(bounce, 0, GPH_WINDOW_MAX);
        pthread_rwlock_rdlock(&s->lock);
        for (int64_t p = 0; p < r->d.npages; p++) {
            uint8_t st = __atomic_load_n(&r->d.states[p], __ATOMIC_ACQUIRE);
            uint8_t c = st & GPH_CONTENT_MASK;
            if (c == GPH_CONTENT_LAZY && (st & GPH_USAGE_MASK) == GPH_USAGE_VOLATILE) {
                /* a lazily freed cache page: keep it if present (the kernel could still reclaim
                 * it once unserved), else it is discarded and reloaded below (lazyfree.c) */
                gph_resolve_lazy_page(&r->d.states[p], r->d.base + (size_t)p * r->d.page_size,
                                      r->d.page_size, 1, NULL);
                st = __atomic_load_n(&r->d.states[p], __ATOMIC_ACQUIRE);
                c = st & GPH_CONTENT_MASK;
            }
            if (c == GPH_CONTENT_PRESERVED ||
                (c == GPH_CONTENT_ZERO && (st & GPH_USAGE_MASK) == GPH_USAGE_VOLATILE))
                gph_serve_page_(s, r, p, -1, bounce, gph_now_ns_());
        }
        pthread_rwlock_unlock(&s->lock);
        munmap(bounce, GPH_WINDOW_MAX);
    }
    struct uffdio_range range = {.start = (uint64_t)(uintptr_t)r->d.base,
                                 .len = (uint64_t)r->d.npages * r->d.page_size};
    /* UNREGISTER wakes every thread still waiting on this range; with the write lock held the
     * fault thread is between batches, so it never serves into a region being torn down */
    pthread_rwlock_wrlock(&s->lock);
    if (ioctl(s->uffd, UFFDIO_UNREGISTER, &range) != 0) {
        rc = -errno;
        gph_err_set(err, NULL, "ioctl(UFFDIO_UNREGISTER)", 0, r->d.npages);
    }
    gph_regions_remove_(&s->regions, rid);
    if (s->hashed)   /* last: no host or fault-thread hold on the table can follow */
        gph_statelock_unregister(r->d.states);
    pthread_rwlock_unlock(&s->lock);
    pthread_mutex_destroy(&r->ring_lock);
    free(r->ring);
    free(r);
    return rc;
}

long gph_service_stats(struct gph_service *s, int rid, struct gph_fault_stats *out)
{
    /* the read lock: unregister frees a region (and register may move the table) under the
     * write lock */
    pthread_rwlock_rdlock(&s->lock);
    const struct gph_fault_stats *src = &s->total;
    if (rid != -1) {   /* -1: the service's total */
        struct gph_region *r = gph_region_(s, rid);
        src = r ? &r->st : NULL;
    }
    if (src) {
        const uint64_t *a = (const uint64_t *)src;
        uint64_t *b = (uint64_t *)out;
        for (size_t i = 0; i < sizeof *out / sizeof(uint64_t); i++)
            b[i] = __atomic_load_n(&a[i], __ATOMIC_RELAXED);
    }
    pthread_rwlock_unlock(&s->lock);
    return src ? 0 : -ENOENT;
}

long gph_service_error(struct gph_service *s, struct gph_fault_error *out)
{
    pthread_mutex_lock(&s->err_lock);
    long n = (long)s->nerrors;
    *out = s->error;
    pthread_mutex_unlock(&s->err_lock);
    return n;
}

/* Free the swap slots of pages the guest gave up while preserved (Sp -> Uz/Vz, never accessed
 * since): the holds keep the host and the fault thread out while a record is cleared. */
long gph_service_reclaim_slots(struct gph_service *s, int rid, int32_t swap_id)
{
    long freed = 0;
    pthread_rwlock_rdlock(&s->lock);
    struct gph_region *r = gph_region_(s, rid);
    if (!r) {
        pthread_rwlock_unlock(&s->lock);
        return -ENOENT;
    }
    for (int64_t p = 0; p < r->d.npages; p++) {
        if (__atomic_load_n(&r->d.swap_store[p], __ATOMIC_ACQUIRE) != swap_id)
            continue;
        uint8_t st = __atomic_load_n(&r->d.states[p], __ATOMIC_ACQUIRE);
        /* a preserved page still needs its slot; a held one is the host's or the fault
         * thread's business (they free or set records only while holding the page).  Hashed
         * mode: they hold its lock instead, so the bit is taken under it (only tried) */
        if ((st & GPH_FLAG_MASK) || (st & GPH_CONTENT_MASK) == GPH_CONTENT_PRESERVED)
            continue;
        if (s->hashed && !gph_statelock_try(&r->d.states[p]))
            continue;
        st = __atomic_load_n(&r->d.states[p], __ATOMIC_ACQUIRE);
        int taken = !(st & GPH_FLAG_MASK) && (st & GPH_CONTENT_MASK) != GPH_CONTENT_PRESERVED &&
                    __atomic_compare_exchange_n(&r->d.states[p], &st, (uint8_t)(st | GPH_FLAG_SERVING), 0,
                                                __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
        if (s->hashed)
            gph_statelock_unlock(&r->d.states[p]);
        if (!taken)
            continue;
        if (__atomic_load_n(&r->d.swap_store[p], __ATOMIC_ACQUIRE) == swap_id) {
            gph_store_free_slots_(swap_id, __atomic_load_n(&r->d.swap_slot[p], __ATOMIC_ACQUIRE), 1);
            __atomic_store_n(&r->d.swap_store[p], 0, __ATOMIC_RELEASE);
            freed++;
        }
        __atomic_fetch_and(&r->d.states[p], (uint8_t)~GPH_FLAG_SERVING, __ATOMIC_ACQ_REL);
    }
    pthread_rwlock_unlock(&s->lock);
    return freed;
}

long gph_service_drain(struct gph_service *s, int rid, int64_t *out, size_t cap)
{
    /* the read lock: unregister frees the ring under the write lock */
    pthread_rwlock_rdlock(&s->lock);
    struct gph_region *r = gph_region_(s, rid);
    size_t n = 0;
    if (r) {
        pthread_mutex_lock(&r->ring_lock);
        while (r->ring_tail < r->ring_head && n < cap)
            out[n++] = r->ring[r->ring_tail++ % r->ring_cap];
        pthread_mutex_unlock(&r->ring_lock);
    }
    pthread_rwlock_unlock(&s->lock);
    return r ? (long)n : -ENOENT;
}


/* Choose the holds (GPH_LOCKING_*) before the first region: a table's mode is fixed while it is
 * served.  -EBUSY once a region was registered, -EINVAL for an unknown mode. */
long gph_service_set_locking(struct gph_service *s, int locking)
{
    if (locking != GPH_LOCKING_HOLDBITS && locking != GPH_LOCKING_HASHED)
        return -EINVAL;
    pthread_rwlock_wrlock(&s->lock);
    long rc = s->regions.nslot ? -EBUSY : 0;
    if (rc == 0)
        s->hashed = locking == GPH_LOCKING_HASHED;
    pthread_rwlock_unlock(&s->lock);
    return rc;
}
