/* stores.c -- the store table: where discarded content lives (UMap's Store idea: the reload path
 * knows only "read page-sized data at an offset of store N").
 *
 * The table is process-wide and fixed-size so the fault thread can read it without locks: ids
 * are set from Python (GIL held, one writer) with atomic stores, read by fault threads with atomic
 * loads.  fd is kept +1 so a zeroed entry means "no store". */
#include "gphint.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

struct store_entry {
    int fd_plus1;
    uint8_t *slot_used;   /* swap stores: one byte per slot, 1 = in use */
    int64_t nslots;
};

static struct store_entry table[GPH_MAX_STORES];

long gph_store_set(int32_t id, int fd, uint8_t *slot_used, int64_t nslots)
{
    if (id <= 0 || id >= GPH_MAX_STORES)
        return -ERANGE;
    __atomic_store_n(&table[id].slot_used, slot_used, __ATOMIC_RELAXED);
    __atomic_store_n(&table[id].nslots, nslots, __ATOMIC_RELAXED);
    __atomic_store_n(&table[id].fd_plus1, fd + 1, __ATOMIC_RELEASE);
    return 0;
}

long gph_store_clear(int32_t id)
{
    if (id <= 0 || id >= GPH_MAX_STORES)
        return -ERANGE;
    __atomic_store_n(&table[id].fd_plus1, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&table[id].slot_used, NULL, __ATOMIC_RELEASE);   /* Python keeps the table
                                                                         mapped until GC anyway */
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
