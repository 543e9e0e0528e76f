/* uffd_baseline.c -- the minimal userfaultfd loop, for bench/bench_reload.py only.
 *
 * One helper thread, one UFFDIO_COPY of a static page per fault, no tables, no fault-around: the
 * floor that the fault service's 4 KiB path is judged against (kernel selftests' uffd-common.c
 * shape: poll, read one message, copy, EEXIST benign). */
#include "gphint_internal.h"
#include "uffd_compat.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct baseline {
    int uffd, stopfd;
    size_t ps;
    uint8_t page[65536] __attribute__((aligned(4096)));
};

static void *serve(void *arg)
{
    struct baseline *b = arg;
    struct pollfd pf[2] = {{.fd = b->uffd, .events = POLLIN}, {.fd = b->stopfd, .events = POLLIN}};
    for (;;) {
        /* leave only when told to: the measuring thread would hang on its next fault */
        if (poll(pf, 2, -1) < 0)
            continue;
        if (pf[1].revents & POLLIN)
            return NULL;
        struct uffd_msg m;
        if (read(b->uffd, &m, sizeof m) != sizeof m)
            continue;
        if (m.event != UFFD_EVENT_PAGEFAULT)
            continue;
        struct uffdio_copy c = {.dst = m.arg.pagefault.address & ~(uint64_t)(b->ps - 1),
                                .src = (uint64_t)(uintptr_t)b->page, .len = b->ps};
        while (ioctl(b->uffd, UFFDIO_COPY, &c) != 0 && (errno == EAGAIN || errno == EINTR))
            ;
    }
}

static long fail(struct gph_err *err, const char *syscall, long rc)
{
    gph_err_set(err, NULL, syscall, 0, 0);
    return rc;
}

long gph_uffd_baseline(uint8_t *base, size_t len, size_t page_size, struct gph_err *err)
{
    static struct baseline b;   /* the page must not be on a stack that may fault */
    if (page_size > sizeof b.page)
        return fail(err, "baseline: page size", -EINVAL);
    memset(b.page, 0x5a, sizeof b.page);
    b.ps = page_size;
    b.uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (b.uffd < 0)
        return fail(err, "userfaultfd", -errno);
    long rc = 0;
    struct uffdio_api api = {.api = UFFD_API};
    struct uffdio_register reg = {.range = {.start = (uint64_t)(uintptr_t)base, .len = len},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(b.uffd, UFFDIO_API, &api) || ioctl(b.uffd, UFFDIO_REGISTER, &reg)) {
        rc = fail(err, "ioctl(UFFDIO_API/REGISTER)", -errno);
        close(b.uffd);
        return rc;
    }
    /* Neither the stop fd nor the thread may be missing before the first touch: without a
     * server every touch below would wait forever, and without the stop fd so would the join. */
    b.stopfd = eventfd(0, EFD_CLOEXEC);
    if (b.stopfd < 0)
        rc = fail(err, "eventfd", -errno);
    pthread_t t;
    int e = rc < 0 ? 0 : pthread_create(&t, NULL, serve, &b);
    if (e)
        rc = fail(err, "pthread_create", -e);
    if (rc < 0) {
        ioctl(b.uffd, UFFDIO_UNREGISTER, &reg.range);
        close(b.uffd);
        if (b.stopfd >= 0)
            close(b.stopfd);
        return rc;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (size_t off = 0; off < len; off += page_size)
        ((volatile uint8_t *)base)[off] = 1;   /* write fault per page */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    uint64_t one = 1;
    while (write(b.stopfd, &one, sizeof one) < 0 && errno == EINTR)   /* an eventfd write of 1 */
        ;                                                              /* cannot otherwise fail */
    pthread_join(t, NULL);
    ioctl(b.uffd, UFFDIO_UNREGISTER, &reg.range);
    close(b.uffd);
    close(b.stopfd);
    if (rc < 0)
        return rc;
    return (long)((t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec));
}
