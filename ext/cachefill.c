/* cachefill.c -- the guest's page-cache read into frames of a served region, installing
 * missing frames without a fault. */
#include "faults_internal.h"
#include "statelock.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>


/* One request's work lists: which frames this thread holds to install, and the rest (with
 * their file offsets) to read into in place. */
struct fill {
    const int64_t *pages, *offsets;
    size_t n;
    uint8_t *take;
    int64_t *rest, *rest_off;
    size_t nrest;
};

static void read_in_place(struct fill *f, size_t i, size_t k)
{
    for (size_t j = i; j < i + k; j++) {
        f->rest[f->nrest] = f->pages[j];
        f->rest_off[f->nrest++] = f->offsets[j];
    }
}

/* Hold (SERVING) every frame that is missing (content ZERO, nobody holding it).  Hashed mode:
 * the bit is set under the frame's lock, only tried (a frame whose lock is taken is read into in
 * place, like a held one), so a host checking the byte under that lock sees it. */
static void take_missing(struct gph_region *r, struct fill *f, int hashed)
{
    for (size_t i = 0; i < f->n; i++) {
        uint8_t *b = &r->d.states[f->pages[i]];
        if (hashed && !gph_statelock_try(b)) {
            f->take[i] = 0;
            continue;
        }
        uint8_t st = __atomic_load_n(b, __ATOMIC_ACQUIRE);
        f->take[i] = !(st & GPH_FLAG_MASK) && (st & GPH_CONTENT_MASK) == GPH_CONTENT_ZERO &&
                     __atomic_compare_exchange_n(b, &st, (uint8_t)(st | GPH_FLAG_SERVING), 0,
                                                 __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
        if (hashed)
            gph_statelock_unlock(b);
    }
}

/* Install the k held frames f->pages[i..i+k) (contiguous in memory and file) from fd through
 * buf, release them, wake any waiter.  Returns k installed, 0 (left to read in place), or the
 * pread's -errno (frames released still missing). */
static long install_run(struct gph_service *s, struct gph_region *r, struct fill *f, size_t i, size_t k,
                        int fd, uint8_t *buf)
{
    size_t ps = r->d.page_size;
    uint8_t *dst = r->d.base + (size_t)f->pages[i] * ps;
    long got = gph_read_full(fd, buf, k * ps, f->offsets[i]);
    long c = got < 0 ? got : gph_uffd_copy_(s, dst, buf, k * ps, ps);
    for (size_t j = i; j < i + k; j++) {
        if (got < 0)   /* nothing installed: still missing, just no longer held */
            __atomic_fetch_and(&r->d.states[f->pages[j]], (uint8_t)~GPH_FLAG_SERVING, __ATOMIC_ACQ_REL);
        else
            gph_mark_served_(&r->d.states[f->pages[j]]);
    }
    gph_uffd_wake_(s, dst, k * ps);
    if (got < 0)
        return got;
    return c < 0 ? 0 : (long)k;   /* could not install (the range is going away): read in place */
}

/* Install the held frames in runs of up to GPH_COPY_CHUNK; list the rest.  Returns 0 or -errno. */
static long install_held(struct gph_service *s, struct gph_region *r, struct fill *f, int fd, uint8_t *buf,
                         int64_t *installed, struct gph_err *err)
{
    size_t ps = r->d.page_size, maxk = GPH_COPY_CHUNK / ps;
    long rc = 0;
    for (size_t i = 0, k; i < f->n; i += k) {
        k = 1;
        if (!f->take[i]) {
            read_in_place(f, i, 1);
            continue;
        }
        while (i + k < f->n && k < maxk && f->take[i + k] && f->pages[i + k] == f->pages[i] + (int64_t)k &&
               f->offsets[i + k] == f->offsets[i] + (int64_t)(k * ps))
            k++;
        long got = install_run(s, r, f, i, k, fd, buf);
        if (got < 0 && !rc) {
            gph_err_set(err, NULL, "pread", f->pages[i], (int64_t)k);
            rc = got;
        } else if (got == 0) {
            read_in_place(f, i, k);
        } else if (got > 0) {
            *installed += got;
        }
    }
    return rc;
}

/* The bounce buffer of the calling (guest) thread, kept: a fresh 128 KiB malloc is a fresh mmap,
 * 32 faults.  Page-aligned: a cache=none (O_DIRECT) backing file reads only into aligned buffers. */
static uint8_t *thread_buf(void)
{
    static __thread uint8_t *buf;
    void *aligned = NULL;
    if (!buf && posix_memalign(&aligned, 4096, GPH_COPY_CHUNK) == 0) {
        buf = aligned;
        memset(buf, 0, GPH_COPY_CHUNK);
    }
    return buf;
}

/* The guest's page-cache read miss into frames of a served region.  A frame whose content is
 * ZERO is missing (nothing was ever put there since the discard): instead of letting pread's
 * kernel-mode write fault to the fault thread, which would fill it with zeros first (a round
 * trip per window, each 10+ us), the calling thread holds it (SERVING), reads the file into a
 * buffer and installs it with UFFDIO_COPY.  Every other frame is read into in place
 * (gph_fill_from_file).  The caller holds no page while it reads in place, so a fault there is
 * served as usual. */
long gph_service_fill(struct gph_service *s, int rid, const int64_t *pages, size_t n, int fd,
                      const int64_t *offsets, int force_bounce, int64_t *installed, struct gph_err *err)
{
    long rc = 0;
    *installed = 0;
    size_t room = n ? n : 1;
    struct fill f = {.pages = pages, .offsets = offsets, .n = n, .take = calloc(room, 1),
                     .rest = malloc(room * sizeof(int64_t)), .rest_off = malloc(room * sizeof(int64_t))};
    uint8_t *buf = thread_buf();
    if (!f.take || !f.rest || !f.rest_off || !buf) {
        gph_err_set(err, NULL, "malloc", 0, (int64_t)n);
        rc = -ENOMEM;
        goto out_free;
    }
    pthread_rwlock_rdlock(&s->lock);
    struct gph_region *r = gph_region_(s, rid);
    if (!r) {
        gph_err_set(err, "region", NULL, rid, 0);
        rc = -ENOENT;
        goto out;
    }
    /* every index before the first hold: a refusal must leave no page held */
    for (size_t i = 0; i < n && rc == 0; i++)
        if (pages[i] < 0 || pages[i] >= r->d.npages)
            rc = gph_err_range(err, "page index", pages[i], 1, r->d.npages);
    if (rc < 0)
        goto out;
    take_missing(r, &f, s->hashed);
    rc = install_held(s, r, &f, fd, buf, installed, err);
    if (rc == 0 && f.nrest) {
        int64_t bounced = 0;
        rc = gph_fill_from_file(r->d.base, r->d.page_size, r->d.npages, f.rest, f.nrest, fd, f.rest_off,
                                force_bounce, &bounced, err);
    }
    if (rc >= 0)
        rc = (long)n;
out:
    pthread_rwlock_unlock(&s->lock);
out_free:
    free(f.take);
    free(f.rest);
    free(f.rest_off);
    return rc;
}
