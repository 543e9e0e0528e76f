/* fill.c -- the guest's page-cache I/O into and out of its frames, in C with the GIL released.
 *
 * A read miss preads file bytes straight into the frame (kernel-mode write).  With a full
 * userfaultfd a missing frame faults to the fault service, which fills it, and the read goes on.
 * With UFFD_USER_MODE_ONLY the kernel-mode access to a missing page fails with EFAULT instead
 * (fs/userfaultfd.c, handle_userfault: a kernel-mode fault is refused in such a context): then the bytes go through a user-space bounce buffer and a memcpy,
 * whose user-mode fault the service does see.  Contiguous pages at contiguous offsets are one
 * preadv/pwritev. */
#include "gphint_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define BOUNCE_PAGES 64

/* Bounce one run: file <-> buffer in the kernel, buffer <-> frames in user space. */
static long bounce_run(uint8_t *frames, size_t len, int fd, int64_t off, int to_file, uint8_t *buf,
                       size_t bufsize)
{
    for (size_t done = 0; done < len;) {
        size_t chunk = len - done < bufsize ? len - done : bufsize;
        long rc;
        if (to_file) {
            memcpy(buf, frames + done, chunk);
            rc = gph_write_full(fd, buf, chunk, off + (int64_t)done);
        } else {
            rc = gph_read_full(fd, buf, chunk, off + (int64_t)done);
            if (rc >= 0)
                memcpy(frames + done, buf, chunk);
        }
        if (rc < 0)
            return rc;
        done += chunk;
    }
    return 0;
}

static long direct_run(uint8_t *frames, size_t len, int fd, int64_t off, int to_file, size_t *done)
{
    while (*done < len) {
        ssize_t r = to_file ? pwrite(fd, frames + *done, len - *done, off + (int64_t)*done)
                            : pread(fd, frames + *done, len - *done, off + (int64_t)*done);
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            if (!to_file && gph_direct_eof_(errno, *done)) {   /* O_DIRECT: EOF (stores.c) */
                memset(frames + *done, 0, len - *done);
                *done = len;
                break;
            }
            return -errno;
        }
        if (r == 0) {
            if (to_file)
                return -EIO;
            memset(frames + *done, 0, len - *done);   /* past EOF: zeros, as a file mapping */
            *done = len;
            break;
        }
        *done += (size_t)r;
    }
    return 0;
}

static long io_pages(uint8_t *base, size_t ps, int64_t npages, const int64_t *pages, size_t n, int fd,
                     const int64_t *offsets, int force_bounce, int64_t *bounced, int to_file,
                     struct gph_err *err)
{
    uint8_t *buf = NULL;
    *bounced = 0;
    for (size_t i = 0; i < n; i++)
        if (pages[i] < 0 || pages[i] >= npages) {
            return gph_err_range(err, "page index", pages[i], 1, npages);
        }
    long rc = 0;
    for (size_t i = 0; i < n;) {
        size_t k = 1;
        while (i + k < n && pages[i + k] == pages[i] + (int64_t)k &&
               offsets[i + k] == offsets[i] + (int64_t)(k * ps))
            k++;
        uint8_t *frames = base + (size_t)pages[i] * ps;
        size_t len = k * ps, done = 0;
        if (!force_bounce)
            rc = direct_run(frames, len, fd, offsets[i], to_file, &done);
        if (force_bounce || rc == -EFAULT) {
            /* page-aligned: a backing file opened with O_DIRECT (--cache none) refuses an
             * unaligned buffer with EINVAL */
            if (!buf && posix_memalign((void **)&buf, ps, BOUNCE_PAGES * ps) != 0) {
                buf = NULL;
                gph_err_set(err, NULL, "posix_memalign", pages[i], (int64_t)k);
                return -ENOMEM;
            }
            size_t pdone = done / ps * ps;   /* redo the partial page through the bounce */
            rc = bounce_run(frames + pdone, len - pdone, fd, offsets[i] + (int64_t)pdone, to_file, buf,
                            BOUNCE_PAGES * ps);
            *bounced += (int64_t)((len - pdone) / ps);
        }
        if (rc < 0) {
            gph_err_set(err, NULL, to_file ? "pwrite" : "pread", pages[i], (int64_t)k);
            free(buf);
            return rc;
        }
        i += k;
    }
    free(buf);
    return (long)n;
}

long gph_fill_from_file(uint8_t *base, size_t page_size, int64_t npages, const int64_t *pages,
                        size_t n, int fd, const int64_t *offsets, int force_bounce, int64_t *bounced,
                        struct gph_err *err)
{
    return io_pages(base, page_size, npages, pages, n, fd, offsets, force_bounce, bounced, 0, err);
}

long gph_write_to_file(uint8_t *base, size_t page_size, int64_t npages, const int64_t *pages,
                       size_t n, int fd, const int64_t *offsets, int force_bounce, int64_t *bounced,
                       struct gph_err *err)
{
    return io_pages(base, page_size, npages, pages, n, fd, offsets, force_bounce, bounced, 1, err);
}
