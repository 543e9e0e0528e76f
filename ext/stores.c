/* stores.c -- the store table: where discarded content lives (UMap's Store idea: the reload path
 * knows only "read page-sized data at an offset of store N").
 *
 * The table is process-wide so the fault thread can read it without locks: ids are set from
 * Python (one writer per id, under the id allocator's lock) with atomic stores, read by fault
 * threads with atomic loads.  It grows in chunks of GPH_STORE_CHUNK entries that are allocated on
 * first use and never freed, so a fault thread never sees an entry move.  fd is kept +1 so a
 * zeroed entry means "no store".
 *
 * Content records: a file store may carry a digest table, one 64-bit digest per page of the file
 * (gph_page_digest of the bytes the guest read from it or wrote to it; 0 = none).  A reload of a
 * page whose bytes no longer match is lost, not served: a backing file rewritten or truncated in
 * place under a discarded page would otherwise come back as foreign bytes or zeros, silently.  The
 * check is on content, not on size/mtime/ctime, because rename and unlink change ctime while the
 * content stays valid (they must reload byte-exact), and a rewrite can restore mtime (utime).  The
 * metadata recorded at open only names the likely reason in the error. */
#include "gphint_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GPH_STORE_CHUNK 1024
#define GPH_STORE_NCHUNKS (GPH_MAX_STORES / GPH_STORE_CHUNK)

struct store_entry {
    int fd_plus1;
    uint8_t *slot_used;   /* swap stores: one byte per slot, 1 = in use */
    int64_t nslots;
    /* A read-only shared mapping of the whole file (stores without a digest table): the fault
     * thread hands it to UFFDIO_COPY directly (one copy from the page cache instead of pread +
     * copy).  Only the kernel ever reads it (copy_from_user), so a file truncated under it gives
     * EFAULT -- then pread, which zero-fills past EOF -- never SIGBUS.  `users` keeps close() from
     * unmapping it mid-copy.  A store with digests never uses it: its bytes must be checked in
     * user space before they reach the guest, and touching the mapping there could SIGBUS. */
    uint8_t *map;
    size_t map_len;
    int users;
    const uint64_t *digest;   /* per file page (Python-owned, kept mapped until the store closes) */
    int64_t ndigest;
    int64_t size_at_open, mtime_ns_at_open, ctime_ns_at_open;
};

static struct store_entry *chunks[GPH_STORE_NCHUNKS];

/* The entry of id, or NULL; create: allocate its chunk (only the Python side does). */
static struct store_entry *entry(int32_t id, int create)
{
    if (id <= 0 || id >= GPH_MAX_STORES)
        return NULL;
    struct store_entry **slot = &chunks[id / GPH_STORE_CHUNK];
    struct store_entry *c = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (!c && create) {
        struct store_entry *fresh = calloc(GPH_STORE_CHUNK, sizeof *fresh);
        if (!fresh)
            return NULL;
        if (__atomic_compare_exchange_n(slot, &c, fresh, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            c = fresh;
        else
            free(fresh);   /* another thread made it first: c is theirs */
    }
    return c ? &c[id % GPH_STORE_CHUNK] : NULL;
}

long gph_store_set(int32_t id, int fd, uint8_t *slot_used, int64_t nslots, const uint64_t *digest,
                   int64_t ndigest)
{
    if (id <= 0 || id >= GPH_MAX_STORES)
        return -ERANGE;
    struct store_entry *e = entry(id, 1);
    if (!e)
        return -ENOMEM;
    gph_store_clear(id);
    struct stat st;
    uint8_t *map = NULL;
    size_t len = 0;
    int64_t size = -1, mtime = 0, ctime = 0;
    if (fstat(fd, &st) == 0) {
        size = st.st_size;
        mtime = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
        ctime = (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec;
        if (!digest && S_ISREG(st.st_mode) && st.st_size > 0 && !gph_fd_direct_(fd)) {
            void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
            if (m != MAP_FAILED) {
                map = m;
                len = (size_t)st.st_size;
            }
        }
    }
    e->size_at_open = size;
    e->mtime_ns_at_open = mtime;
    e->ctime_ns_at_open = ctime;
    __atomic_store_n(&e->slot_used, slot_used, __ATOMIC_RELAXED);
    __atomic_store_n(&e->nslots, nslots, __ATOMIC_RELAXED);
    __atomic_store_n(&e->digest, digest, __ATOMIC_RELAXED);
    __atomic_store_n(&e->ndigest, digest ? ndigest : 0, __ATOMIC_RELAXED);
    __atomic_store_n(&e->map_len, len, __ATOMIC_RELAXED);
    __atomic_store_n(&e->map, map, __ATOMIC_SEQ_CST);
    __atomic_store_n(&e->fd_plus1, fd + 1, __ATOMIC_RELEASE);
    return 0;
}

long gph_store_set_digests(int32_t id, const uint64_t *digest, int64_t ndigest)
{
    struct store_entry *e = entry(id, 0);
    if (!e || !__atomic_load_n(&e->digest, __ATOMIC_ACQUIRE))
        return -ENOENT;   /* only a store opened with a table may change it (no mapping in use) */
    /* table before its length: a reader that sees the new length also sees the new table; the
     * old table stays mapped (Python keeps it until close), so a reader with the old pair is safe */
    __atomic_store_n(&e->digest, digest, __ATOMIC_RELEASE);
    __atomic_store_n(&e->ndigest, ndigest, __ATOMIC_RELEASE);
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
    struct store_entry *e = entry(id, 0);
    if (!e || off < 0)
        return NULL;
    __atomic_fetch_add(&e->users, 1, __ATOMIC_SEQ_CST);
    uint8_t *map = __atomic_load_n(&e->map, __ATOMIC_SEQ_CST);
    if (map && (size_t)off + len <= __atomic_load_n(&e->map_len, __ATOMIC_RELAXED))
        return map + off;
    __atomic_fetch_sub(&e->users, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

void gph_store_map_put_(int32_t id)
{
    struct store_entry *e = entry(id, 0);
    if (e)
        __atomic_fetch_sub(&e->users, 1, __ATOMIC_SEQ_CST);
}

long gph_store_clear(int32_t id)
{
    if (id <= 0 || id >= GPH_MAX_STORES)
        return -ERANGE;
    struct store_entry *e = entry(id, 0);
    if (!e)
        return 0;
    __atomic_store_n(&e->fd_plus1, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&e->slot_used, NULL, __ATOMIC_RELEASE);   /* Python keeps the table
                                                                  mapped until GC anyway */
    __atomic_store_n(&e->ndigest, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&e->digest, NULL, __ATOMIC_RELEASE);
    uint8_t *map = __atomic_exchange_n(&e->map, NULL, __ATOMIC_SEQ_CST);
    if (map) {
        while (__atomic_load_n(&e->users, __ATOMIC_SEQ_CST) > 0)   /* a copy in flight */
            sched_yield();
        munmap(map, e->map_len);
    }
    return 0;
}

/* -EBADF for an unknown or closed store: the reload records it as a lost page. */
int gph_store_fd_(int32_t id)
{
    struct store_entry *e = entry(id, 0);
    if (!e)
        return -EBADF;
    int f = __atomic_load_n(&e->fd_plus1, __ATOMIC_ACQUIRE);
    return f > 0 ? f - 1 : -EBADF;
}

/* The fault thread frees swap slots after a swap-in (1 -> 0 only; Python allocates 0 -> 1). */
void gph_store_free_slots_(int32_t id, int64_t slot, int64_t n)
{
    struct store_entry *e = entry(id, 0);
    if (!e)
        return;
    uint8_t *used = __atomic_load_n(&e->slot_used, __ATOMIC_ACQUIRE);
    int64_t nslots = __atomic_load_n(&e->nslots, __ATOMIC_RELAXED);
    if (!used)
        return;
    for (int64_t i = slot; i < slot + n && i < nslots; i++)
        if (i >= 0)
            __atomic_store_n(&used[i], 0, __ATOMIC_RELEASE);
}

/* splitmix64's finaliser (Steele, Lea, Flood: "Fast splittable pseudorandom number generators",
 * OOPSLA 2014), as gphint/guest/content.py's _mix. */
static uint64_t mix64(uint64_t z)
{
    z ^= z >> 30;
    z *= 0xBF58476D1CE4E5B9ull;
    z ^= z >> 27;
    z *= 0x94D049BB133111EBull;
    z ^= z >> 31;
    return z;
}

uint64_t gph_page_digest(const uint8_t *page, size_t page_size)
{
    /* sum of word_i * K_i (mod 2^64) with every K_i odd: a change to any one word always changes
     * the sum (multiplication by an odd number is a bijection mod 2^64); more changes cancel with
     * probability about 2^-63.  Four sums keep the multiplier busy.  Bit 0 set: 0 means "none". */
    const uint64_t golden = 0x9E3779B97F4A7C15ull;
    size_t n = page_size / 8;   /* a multiple of 4: page sizes are powers of two >= 4 KiB */
    /* K_i = (2i + 1) * golden, stepped by addition: sum j takes words i = j mod 4 */
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, w0, w1, w2, w3;
    uint64_t k0 = golden, k1 = 3 * golden, k2 = 5 * golden, k3 = 7 * golden;
    const uint64_t step = 8 * golden;
    for (size_t i = 0; i + 4 <= n; i += 4) {
        memcpy(&w0, page + 8 * i, 8);   /* no alignment assumption; compiles to plain loads */
        memcpy(&w1, page + 8 * i + 8, 8);
        memcpy(&w2, page + 8 * i + 16, 8);
        memcpy(&w3, page + 8 * i + 24, 8);
        a0 += w0 * k0;
        a1 += w1 * k1;
        a2 += w2 * k2;
        a3 += w3 * k3;
        k0 += step;
        k1 += step;
        k2 += step;
        k3 += step;
    }
    return mix64((a0 + a1 + a2 + a3) ^ (uint64_t)n) | 1;
}

long gph_page_digests(const uint8_t *base, size_t page_size, int64_t npages, const int64_t *pages,
                      size_t n, uint64_t *out)
{
    for (size_t i = 0; i < n; i++) {
        int64_t p = pages ? pages[i] : (int64_t)i;
        if (p < 0 || p >= npages)
            return -ERANGE;
        out[i] = gph_page_digest(base + (size_t)p * page_size, page_size);
    }
    return (long)n;
}

static const char *changed_reason(const struct store_entry *e, int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return "backing file changed (content)";
    int64_t mtime = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    int64_t ctime = (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec;
    if (st.st_size != e->size_at_open)
        return "backing file changed (size)";
    if (mtime != e->mtime_ns_at_open)
        return "backing file changed (mtime)";
    if (ctime != e->ctime_ns_at_open)
        return "backing file changed (ctime)";
    return "backing file changed (content)";
}

long gph_store_check_(int32_t id, int64_t off, uint8_t *buf, size_t len, size_t page_size,
                      int64_t *first_bad, const char **why)
{
    struct store_entry *e = entry(id, 0);
    if (!e || off < 0 || page_size == 0)
        return 0;
    int64_t nd = __atomic_load_n(&e->ndigest, __ATOMIC_ACQUIRE);
    const uint64_t *dg = __atomic_load_n(&e->digest, __ATOMIC_ACQUIRE);
    if (!dg || nd <= 0)
        return 0;
    long bad = 0;
    for (size_t k = 0; k * page_size < len; k++) {
        int64_t fp = off / (int64_t)page_size + (int64_t)k;
        if (fp >= nd)
            break;
        uint64_t want = __atomic_load_n(&dg[fp], __ATOMIC_RELAXED);
        uint8_t *pg = buf + k * page_size;
        if (want == 0 || gph_page_digest(pg, page_size) == want)
            continue;
        if (bad++ == 0) {
            *first_bad = (int64_t)k;
            *why = changed_reason(e, gph_store_fd_(id));
        }
        memset(pg, 0, page_size);   /* a lost page reads as zeros, never as foreign bytes */
    }
    return bad;
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
