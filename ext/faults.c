/* faults.c -- the discard-fault service: one pthread that gives discarded pages back.
 *
 * Every GuestMemory region it serves is registered with UFFDIO_REGISTER_MODE_MISSING on one
 * userfaultfd.  The thread polls (uffd, wake eventfd), reads fault messages in batches and serves
 * each missing page by what the C-owned tables say about it (docs/state-protocol.md):
 *   content PRESERVED                      -> host swap slot (swap_store/swap_slot); slot freed
 *   VOLATILE with a backing record          -> backing file at backing_offset (a discard fault)
 *   anything else (UNUSED, zero, untouched) -> zeros (UFFDIO_ZEROPAGE on reads, a zeroed
 *                                              UFFDIO_COPY on writes: no second CoW fault)
 * Fault-around: neighbours in the same aligned window with the same kind of source (zero run,
 * contiguous file offsets, contiguous swap slots) are served by the same UFFDIO_COPY: a 4 KiB
 * round trip costs 10 us or more on this kind of machine, a 2 MiB copy ~1.2 us per page
 * (bench/bench_reload.py measures both).
 *
 * Rules (kernel selftests uffd-common.c, Firecracker's handlers): EINTR/EAGAIN are retried; EEXIST
 * is benign (the page is there; wake the waiter); short reads are looped and past-EOF reads give
 * zeros.  The thread never calls Python, never takes the GIL, and never waits for the guest: on a
 * source that cannot be read it records the error, serves zeros, counts the pages lost and goes
 * on, so no faulting thread is left hanging.  UFFD_FEATURE_EVENT_REMOVE is deliberately not used
 * (it would make every discard a synchronous round trip): the host records what it discards. */
#include "faults_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>


/* The guard against a fault that never ends.  Answering EEXIST means "the page is there": the
 * woken thread retries its access and should not fault again.  If it does, over and over, the
 * page is missing in a way the fill cannot see (the known case, a uffd-wp marker, is filled by
 * zero_copy_page) and the guest thread would spin forever -- with the GIL, the whole interpreter.
 * After GPH_REFAULT_RESOLVE such answers in a row the page is un-write-protected, which turns a
 * marker back into a none pte that the next fill installs over; the loop is counted
 * (refault_loops).  A loop that outlives that (GPH_REFAULT_REPORT) is recorded as an error naming
 * the page, so check() says where the guest is stuck.  A few EEXIST answers in a row are normal:
 * threads faulting on the same page at once are all answered by the first fill. */
#define GPH_REFAULT_RESOLVE 8
#define GPH_REFAULT_REPORT 1024

static void watch_refault(struct gph_service *s, struct gph_region *r, int rid, uint64_t page, int answered_eexist)
{
    struct gph_refault *w = &s->refaults[(page / s->page_size) % GPH_REFAULT_SLOTS];
    if (!answered_eexist) {
        if (w->page == page)
            w->count = 0;
        return;
    }
    if (w->page != page) {
        w->page = page;
        w->count = 0;
    }
    if (++w->count % GPH_REFAULT_RESOLVE != 0)
        return;
    struct gph_fault_stats *sts[2] = {&r->st, &s->total};
    for (int i = 0; i < 2; i++)
        GPH_ADD(sts[i]->refault_loops, 1);
    if (s->features & UFFD_FEATURE_WP_ASYNC) {
        struct uffdio_writeprotect wp = {.range = {.start = page, .len = s->page_size}, .mode = 0};
        while (ioctl(s->uffd, UFFDIO_WRITEPROTECT, &wp) != 0 && (errno == EAGAIN || errno == EINTR))
            ;
    }
    if (w->count == GPH_REFAULT_REPORT)
        gph_record_error_(s, EEXIST, "UFFDIO_COPY/ZEROPAGE (the page keeps faulting)", rid,
                          (int64_t)((page - (uint64_t)(uintptr_t)r->d.base) / r->d.page_size));
    gph_uffd_wake_(s, (uint8_t *)(uintptr_t)page, s->page_size);
}

static void serve_msg(struct gph_service *s, const struct uffd_msg *m, uint64_t t0)
{
    if (m->event != UFFD_EVENT_PAGEFAULT)
        return;   /* no other event was asked for (no EVENT_REMOVE: see the header comment) */
    uint64_t addr = m->arg.pagefault.address;
    uint64_t page = addr & ~(uint64_t)(s->page_size - 1);
    int write = (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE) != 0;
    struct gph_region *r = gph_regions_at_(&s->regions, addr);
    if (!r) {
        /* the host's scratch area (a hole left by UFFDIO_MOVE), or a region unregistered since
         * the message was queued: zeros for scratch, a wake for the rest */
        if (addr >= (uint64_t)(uintptr_t)s->scratch &&
            addr < (uint64_t)(uintptr_t)s->scratch + GPH_SCRATCH_BYTES) {
            gph_uffd_fill_(s, (uint8_t *)(uintptr_t)page, s->zeros, s->page_size, s->page_size);
        }
        gph_uffd_wake_(s, (uint8_t *)(uintptr_t)page, s->page_size);
        return;
    }
    int64_t p = (int64_t)((addr - (uint64_t)(uintptr_t)r->d.base) / r->d.page_size);
    /* other threads count EEXIST too (fills, materialize): the guard may see one too many, which
     * costs at most an early un-write-protect (the page then reads written: preserved, not lost) */
    uint64_t eexist0 = __atomic_load_n(&s->total.eexist, __ATOMIC_RELAXED);
    gph_serve_page_(s, r, p, write, s->bounce, t0);
    watch_refault(s, r, r->rid, page, __atomic_load_n(&s->total.eexist, __ATOMIC_RELAXED) != eexist0);
}

#define MSG_BATCH 64

static void *fault_main(void *arg)
{
    struct gph_service *s = arg;
    struct uffd_msg msgs[MSG_BATCH];
    struct pollfd pf[2] = {{.fd = s->uffd, .events = POLLIN}, {.fd = s->wakefd, .events = POLLIN}};
    for (;;) {
        int stopping = __atomic_load_n(&s->stopping, __ATOMIC_ACQUIRE);
        /* when stopping, drain what is queued without blocking, then leave */
        int n = poll(pf, 2, stopping ? 0 : -1);
        if (n < 0) {
            /* never leave: a faulting thread would hang.  Record, breathe, poll again. */
            if (errno != EINTR) {
                gph_record_error_(s, errno, "poll", -1, -1);
                usleep(1000);
            }
            continue;
        }
        if (pf[1].revents & POLLIN) {
            uint64_t v;
            ssize_t rr = read(s->wakefd, &v, sizeof v);
            (void)rr;
            continue;   /* re-read `stopping` and drain */
        }
        if (!(pf[0].revents & POLLIN)) {
            if (stopping)
                break;
            continue;
        }
        ssize_t got = read(s->uffd, msgs, sizeof msgs);
        if (got < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                gph_record_error_(s, errno, "read(userfaultfd)", -1, -1);
                usleep(1000);
            }
            continue;
        }
        uint64_t t0 = gph_now_ns_();
        pthread_rwlock_rdlock(&s->lock);
        for (size_t i = 0; i < (size_t)got / sizeof msgs[0]; i++)
            serve_msg(s, &msgs[i], t0);
        pthread_rwlock_unlock(&s->lock);
    }
    return NULL;
}

/* --- lifetime ------------------------------------------------------------------------------ */
void *gph_map_buf_(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    madvise(p, len, MADV_NOHUGEPAGE);
    return p;
}

/* The service's userfaultfd (with the features asked for) and its wake eventfd. */
static long open_fds(struct gph_service *s, int flags, struct gph_err *err)
{
    int uflags = O_CLOEXEC | O_NONBLOCK | ((flags & GPH_SVC_USER_MODE_ONLY) ? UFFD_USER_MODE_ONLY : 0);
    s->uffd = (int)syscall(SYS_userfaultfd, uflags);
    if (s->uffd < 0) {
        gph_err_set(err, NULL, (flags & GPH_SVC_USER_MODE_ONLY) ? "userfaultfd(UFFD_USER_MODE_ONLY)" : "userfaultfd",
                    0, 0);
        return -errno;
    }
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
    if (flags & GPH_SVC_DIRTY)
        api.features |= UFFD_FEATURE_WP_ASYNC;
    if (flags & GPH_SVC_MOVE)
        api.features |= UFFD_FEATURE_MOVE;
    if (ioctl(s->uffd, UFFDIO_API, &api) != 0) {
        gph_err_set(err, NULL, "ioctl(UFFDIO_API)", 0, 0);
        return -errno;
    }
    s->features = api.features;
    s->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->wakefd < 0) {
        gph_err_set(err, NULL, "eventfd", 0, 0);
        return -errno;
    }
    return 0;
}

/* The fault thread's and the host's buffers, populated so that neither ever faults on its own
 * buffer; with GPH_SVC_MOVE the scratch area is registered (UFFDIO_MOVE's destination). */
static long map_buffers(struct gph_service *s, int flags, struct gph_err *err)
{
    s->bounce = gph_map_buf_(GPH_WINDOW_MAX);
    s->zeros = gph_map_buf_(GPH_WINDOW_MAX);
    s->host_buf = gph_map_buf_(GPH_SCRATCH_BYTES);
    s->scratch = gph_map_buf_(GPH_SCRATCH_BYTES);
    if (!s->bounce || !s->zeros || !s->host_buf || !s->scratch) {
        gph_err_set(err, NULL, "mmap", 0, 0);
        return -ENOMEM;
    }
    memset(s->bounce, 0, GPH_WINDOW_MAX);
    memset(s->host_buf, 0, GPH_SCRATCH_BYTES);
    for (size_t i = 0; i < GPH_WINDOW_MAX; i += s->page_size)
        ((volatile uint8_t *)s->zeros)[i];
    if (!(flags & GPH_SVC_MOVE))
        return 0;
    struct uffdio_register reg = {.range = {.start = (uint64_t)(uintptr_t)s->scratch, .len = GPH_SCRATCH_BYTES},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING |
                                          ((flags & GPH_SVC_DIRTY) ? UFFDIO_REGISTER_MODE_WP : 0)};
    if (ioctl(s->uffd, UFFDIO_REGISTER, &reg) != 0) {
        gph_err_set(err, NULL, "ioctl(UFFDIO_REGISTER) scratch", 0, 0);
        return -errno;
    }
    return 0;
}

long gph_service_create(struct gph_service **out, int flags, size_t window_bytes, uint64_t *features_out,
                        struct gph_err *err)
{
    struct gph_service *s = calloc(1, sizeof *s);
    if (!s) {
        gph_err_set(err, NULL, "calloc", 0, 0);
        return -ENOMEM;
    }
    s->uffd = s->wakefd = -1;
    s->flags = flags;
    s->page_size = (size_t)sysconf(_SC_PAGESIZE);
    s->window_bytes = window_bytes;
    pthread_rwlock_init(&s->lock, NULL);
    pthread_mutex_init(&s->err_lock, NULL);
    pthread_mutex_init(&s->host_lock, NULL);
    long rc = open_fds(s, flags, err);
    if (rc == 0)
        rc = map_buffers(s, flags, err);
    if (rc < 0) {
        gph_service_destroy(s);
        return rc;
    }
    if (features_out)
        *features_out = s->features;
    *out = s;
    return 0;
}

long gph_service_start(struct gph_service *s, struct gph_err *err)
{
    if (s->started)
        return 0;
    int e = pthread_create(&s->thread, NULL, fault_main, s);
    if (e) {
        gph_err_set(err, NULL, "pthread_create", 0, 0);
        return -e;
    }
    /* named, so that a measurement can tell its CPU time from the host's and the guests'
     * (/proc/self/task/TID/comm; gphint.scale.takeback) -- a failure here changes nothing */
    pthread_setname_np(s->thread, GPH_FAULT_THREAD_NAME);
    s->started = 1;
    return 0;
}

void gph_race_delay_(struct gph_service *s)
{
    uint64_t ns = __atomic_load_n(&s->race_delay_ns, __ATOMIC_RELAXED);
    if (ns) {
        struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u), .tv_nsec = (long)(ns % 1000000000u)};
        nanosleep(&ts, NULL);
    }
}

long gph_service_set_race_delay(struct gph_service *s, uint64_t ns)
{
    __atomic_store_n(&s->race_delay_ns, ns, __ATOMIC_RELAXED);
    return 0;
}

long gph_service_set_window(struct gph_service *s, size_t window_bytes)
{
    if (window_bytes > GPH_WINDOW_MAX)
        return -EINVAL;
    __atomic_store_n(&s->window_bytes, window_bytes, __ATOMIC_RELAXED);
    return 0;
}

long gph_service_stop(struct gph_service *s)
{
    if (!s->started)
        return 0;
    __atomic_store_n(&s->stopping, 1, __ATOMIC_RELEASE);
    uint64_t one = 1;
    ssize_t w = write(s->wakefd, &one, sizeof one);
    (void)w;
    pthread_join(s->thread, NULL);
    s->started = 0;
    __atomic_store_n(&s->stopping, 0, __ATOMIC_RELEASE);
    return 0;
}

void gph_service_destroy(struct gph_service *s)
{
    if (!s)
        return;
    gph_service_stop(s);
    while (s->regions.nspan > 0) {
        int rid = s->regions.span[0]->rid;
        if (gph_service_unregister(s, rid, 0, NULL) == -ENOENT) {   /* left closing: drop it */
            struct gph_region *r = gph_regions_remove_(&s->regions, rid);
            pthread_mutex_destroy(&r->ring_lock);
            free(r->ring);
            free(r);
        }
    }
    if (s->uffd >= 0)
        close(s->uffd);   /* wakes anything left; the ranges become ordinary memory */
    if (s->wakefd >= 0)
        close(s->wakefd);
    if (s->bounce)
        munmap(s->bounce, GPH_WINDOW_MAX);
    if (s->zeros)
        munmap(s->zeros, GPH_WINDOW_MAX);
    if (s->host_buf)
        munmap(s->host_buf, GPH_SCRATCH_BYTES);
    if (s->scratch)
        munmap(s->scratch, GPH_SCRATCH_BYTES);
    gph_regions_free_(&s->regions);
    pthread_rwlock_destroy(&s->lock);
    pthread_mutex_destroy(&s->err_lock);
    pthread_mutex_destroy(&s->host_lock);
    free(s);
}

