/* stores.c -- the store table: where discarded content lives (UMap's Store idea: the reload path
 * knows only "read page-sized data at an offset of store N").
 *
 * The table is process-wide and fixed-size so the fault thread can read it without locks: ids
 * are set from Python (GIL held, one writer) with atomic stores, read by fault threads with atomic
 * loads.  fd is kept +1 so a zeroed entry means "no store". */
#include "gphint.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct store_entry {
    int fd_plus1;
    uint8_t *slot_used;   /* swap stores: one byte per slot, 1 = in use */
    int64_t nslots;
    /* A read-only shared mapping of the whole file: the fault thread hands it to UFFDIO_COPY
     * directly (one copy from the page cache instead of pread + copy).  Only the kernel ever
     * reads it (copy_from_user), so a file truncated under it gives EFAULT -- then pread, which
     * zero-fills past EOF -- never SIGBUS.  `users` keeps close() from unmapping it mid-copy. */
    uint8_t *map;
    size_t map_len;
    int users;
};

static struct store_entry table[GPH_MAX_STORES];

long gph_store_set(int32_t id, int fd, uint8_t *slot_used, int64_t nslots)
{
    if (id <= 0 || id >= GPH_MAX_STORES)
        return -ERANGE;
    gph_store_clear(id);
    struct stat st;
    uint8_t *map = NULL;
    size_t len = 0;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 && !gph_fd_direct_(fd)) {
        void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (m != MAP_FAILED) {
            map = m;
            len = (size_t)st.st_size;
        }
    }
    __atomic_store_n(&table[id].slot_used, slot_used, __ATOMIC_RELAXED);
    __atomic_store_n(&table[id].nslots, nslots, __ATOMIC_RELAXED);
    __atomic_store_n(&table[id].map_len, len, __ATOMIC_RELAXED);
    __atomic_store_n(&table[id].map, map, __ATOMIC_SEQ_CST);
    __atomic_store_n(&table[id].fd_plus1, fd + 1, __ATOMIC_RELEASE);
    return 0;
}

/* An O_DIRECT store (the host swap, a cache=none guest disk) must never be read through a
 * mapping: that would fill the host page cache the store was opened to avoid.  Such a store is
 * read with pread into page-aligned buffers (the fault thread's bounce is mmap'd). */
int gph_fd_direct_(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl >= 0 && (fl & O_DIRECT) != 0;
}

const uint8_t *gph_store_map_get_(int32_t id, int64_t off, size_t len)
{
    if (id <= 0 || id >= GPH_MAX_STORES || off < 0)
        return NULL;
    struct store_entry *e = &table[id];
    __atomic_fetch_add(&e->users, 1, __ATOMIC_SEQ_CST);
    uint8_t *map = __atomic_load_n(&e->map, __ATOMIC_SEQ_CST);
    if (map && (size_t)off + len <= __atomic_load_n(&e->map_len, __ATOMIC_RELAXED))
        return map + off;
    __atomic_fetch_sub(&e->users, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

void gph_store_map_put_(int32_t id)
{
    __atomic_fetch_sub(&table[id].users, 1, __ATOMIC_SEQ_CST);
}

long gph_store_clear(int32_t id)
{
    if (id <= 0 || id >= GPH_MAX_STORES)
        return -ERANGE;
    __atomic_store_n(&table[id].fd_plus1, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&table[id].slot_used, NULL, __ATOMIC_RELEASE);   /* Python keeps the table
                                                                         mapped until GC anyway */
    uint8_t *map = __atomic_exchange_n(&table[id].map, NULL, __ATOMIC_SEQ_CST);
    if (map) {
        while (__atomic_load_n(&table[id].users, __ATOMIC_SEQ_CST) > 0)   /* a copy in flight */
            sched_yield();
        munmap(map, table[id].map_len);
    }
    return 0;
}

/* -EBADF for an unknown or closed store: the reload records it as a lost page. */
int gph_store_fd_(int32_t id)
{
    if (id <= 0 || id >= GPH_MAX_STORES)
        return -EBADF;
    int f = __atomic_load_n(&table[id].fd_plus1, __ATOMIC_ACQUIRE);
    return f > 0 ? f - 1 : -EBADF;
}

/* The fault thread frees swap slots after a swap-in (1 -> 0 only; Python allocates 0 -> 1). */
void gph_store_free_slots_(int32_t id, int64_t slot, int64_t n)
{
    if (id <= 0 || id >= GPH_MAX_STORES)
        return;
    uint8_t *used = __atomic_load_n(&table[id].slot_used, __ATOMIC_ACQUIRE);
    int64_t nslots = __atomic_load_n(&table[id].nslots, __ATOMIC_RELAXED);
    if (!used)
        return;
    for (int64_t i = slot; i < slot + n && i < nslots; i++)
        if (i >= 0)
            __atomic_store_n(&used[i], 0, __ATOMIC_RELEASE);
}

long gph_read_full(int fd, void *buf, size_t len, int64_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t r = pread(fd, (char *)buf + done, len - done, off + (int64_t)done);
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            if (gph_direct_eof_(errno, done))
                break;
            return -errno;
        }
        if (r == 0)   /* EOF: the rest of the page reads as zero, as a file mapping would */
            break;
        done += (size_t)r;
    }
    if (done < len)
        memset((char *)buf + done, 0, len - done);
    return (long)done;
}

long gph_write_full(int fd, const void *buf, size_t len, int64_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t w = pwrite(fd, (const char *)buf + done, len - done, off + (int64_t)done);
        if (w < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno;
        }
        if (w == 0)
            return -EIO;
        done += (size_t)w;
    }
    return (long)done;
}

/* O_DIRECT reads the file's last, partial block as a short read; the next pread would start at
 * an unaligned offset and fail with EINVAL.  A short read of an O_DIRECT file happens only at
 * EOF, so EINVAL after an unaligned amount read means end of file (buffered I/O never gives
 * EINVAL for an offset: this only ever applies to O_DIRECT). */
int gph_direct_eof_(int err, size_t done)
{
    return err == EINVAL && done % 512 != 0;
}
