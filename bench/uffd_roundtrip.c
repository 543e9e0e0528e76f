/* uffd_roundtrip.c -- what a 4 KiB userfaultfd round trip costs in a given CPU placement.
 *
 * Standalone (no gphint): one thread touches every page of a discarded region, a helper thread
 * serves each fault with one UFFDIO_COPY.  Pin the toucher and the helper to CPUs of your choice
 * and, optionally, let the helper spin for a while before it blocks in poll(), to see what the
 * fault thread's wait strategy changes.  bench/README.md ("Reload") explains why placement
 * decides the cost on a VM whose idle vCPUs halt.
 *
 *   gcc -O2 -pthread -o uffd_roundtrip bench/uffd_roundtrip.c
 *   ./uffd_roundtrip MAIN_CPU HELPER_CPU SPIN_NS MIB     # -1 = leave unpinned; needs userfaultfd
 *   perf stat -a -e irq_vectors:reschedule_entry,irq_vectors:call_function_single_entry,context-switches \
 *       ./uffd_roundtrip 0 1 0 32
 *
 * Prints the fastest and the mean of five rounds, in microseconds per fault. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int uffd, stopfd, helper_cpu;
static long spin_ns;
static volatile int stop;
static uint8_t page[4096] __attribute__((aligned(4096)));

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void pin(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (sched_setaffinity(0, sizeof s, &s) != 0)
        perror("sched_setaffinity");
}

static void *serve(void *arg)
{
    (void)arg;
    pin(helper_cpu);
    struct pollfd pf[2] = {{.fd = uffd, .events = POLLIN}, {.fd = stopfd, .events = POLLIN}};
    uint64_t last = now_ns();
    for (;;) {
        struct uffd_msg m;
        if (read(uffd, &m, sizeof m) == sizeof m) {   /* non-blocking: EAGAIN when none queued */
            struct uffdio_copy c = {.dst = m.arg.pagefault.address & ~4095ull,
                                    .src = (uint64_t)(uintptr_t)page, .len = 4096};
            while (ioctl(uffd, UFFDIO_COPY, &c) != 0 && (errno == EAGAIN || errno == EINTR))
                ;
            last = now_ns();
            continue;
        }
        if (stop)
            return NULL;
        if (spin_ns && now_ns() - last < (uint64_t)spin_ns)
            continue;   /* spin: this CPU stays awake for the next fault */
        if (poll(pf, 2, -1) < 0 && errno != EINTR)
            return NULL;
        if (pf[1].revents & POLLIN)
            return NULL;
        last = now_ns();
    }
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s MAIN_CPU HELPER_CPU SPIN_NS MIB\n", argv[0]);
        return 2;
    }
    int main_cpu = atoi(argv[1]);
    helper_cpu = atoi(argv[2]);
    spin_ns = atol(argv[3]);
    size_t len = (size_t)atol(argv[4]) << 20;
    pin(main_cpu);
    memset(page, 0x5a, sizeof page);
    uint8_t *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    madvise(base, len, MADV_NOHUGEPAGE);
    memset(base, 1, len);   /* prewarm: the host's own faults before any timing */
    double best = 1e18, sum = 0;
    const int rounds = 5;
    for (int r = 0; r < rounds; r++) {
        madvise(base, len, MADV_DONTNEED);
        uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
        struct uffdio_api api = {.api = UFFD_API};
        struct uffdio_register reg = {.range = {.start = (uint64_t)(uintptr_t)base, .len = len},
                                      .mode = UFFDIO_REGISTER_MODE_MISSING};
        if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) || ioctl(uffd, UFFDIO_REGISTER, &reg)) {
            perror("userfaultfd");
            return 1;
        }
        stopfd = eventfd(0, EFD_CLOEXEC);
        stop = 0;
        pthread_t t;
        if (stopfd < 0 || pthread_create(&t, NULL, serve, NULL) != 0) {
            perror("eventfd/pthread_create");
            return 1;
        }
        usleep(2000);   /* the helper is pinned and waiting before the clock starts */
        uint64_t t0 = now_ns();
        for (size_t off = 0; off < len; off += 4096)
            ((volatile uint8_t *)base)[off] = 1;
        uint64_t t1 = now_ns();
        stop = 1;
        uint64_t one = 1;
        if (write(stopfd, &one, sizeof one) < 0)
            perror("write(eventfd)");
        pthread_join(t, NULL);
        ioctl(uffd, UFFDIO_UNREGISTER, &reg.range);
        close(uffd);
        close(stopfd);
        double us = (double)(t1 - t0) / 1e3 / (double)(len / 4096);
        best = us < best ? us : best;
        sum += us;
    }
    printf("main=%d helper=%d spin_ns=%ld: fastest %.2f us/fault, mean %.2f\n", main_cpu, helper_cpu, spin_ns,
           best, sum / rounds);
    return 0;
}
