/* faults_internal.h -- the fault service's private state, shared by faults.c (the fault thread)
 * and hostops.c (host discard / swap-out, which use the service's uffd and scratch area). */
#ifndef GPHINT_FAULTS_INTERNAL_H
#define GPHINT_FAULTS_INTERNAL_H

#include "cpu_relax.h"
#include "gphint_internal.h"
#include "uffd_compat.h"

#include <pthread.h>

/* Region ids in use at once: far above what fits in one process (each region is a mapping, and
 * vm.max_map_count defaults to 65530); the table itself grows as guests are registered. */
#define GPH_MAX_REGIONS 1048576   /* named in the "region table full" message (faults.c) */
#define GPH_FAULT_THREAD_NAME "gphint-faults"   /* its comm: gphint.faults.FAULT_THREAD_NAME */
#define GPH_WINDOW_MAX (2u << 20)    /* fault-around cap: 2 MiB, one UFFDIO_COPY */
#define GPH_SCRATCH_BYTES (2u << 20) /* host's detach area for UFFDIO_MOVE */
#define GPH_REFAULT_SLOTS 64         /* pages the fault thread watches for a refault loop */

struct gph_region {
    struct gph_region_desc d;
    int rid;                      /* its id: index in gph_regions.slot */
    int closing;                  /* unregister under way: host operations refused (see gph_region_open_) */
    pthread_mutex_t ring_lock;    /* fault thread (and materialize) append, Python drains */
    int64_t *ring;                /* allocated at the first append: an idle guest costs none */
    uint64_t ring_cap, ring_head, ring_tail;
    struct gph_fault_stats st;
};

/* The registered regions (regions.c), read under the service's rwlock, changed under its write lock. */
struct gph_regions {
    struct gph_region **slot;     /* by region id; NULL: free */
    uint32_t nslot, cap_slot;     /* ids below nslot may be in use */
    struct gph_region **span;     /* the registered regions sorted by base address */
    uint32_t nspan, cap_span;
    uint32_t lowest_free;         /* no free id below this */
};
int gph_regions_add_(struct gph_regions *t, struct gph_region *r);
struct gph_region *gph_regions_remove_(struct gph_regions *t, int rid);
struct gph_region *gph_regions_get_(struct gph_regions *t, int rid);
struct gph_region *gph_regions_at_(struct gph_regions *t, uint64_t addr);
void gph_regions_free_(struct gph_regions *t);

struct gph_service {
    int uffd, wakefd, flags;
    size_t page_size;             /* the kernel's base page (sysconf): userfaultfd's unit */
    uint64_t features;
    size_t window_bytes;          /* atomic: Python may tune it while the thread runs */
    int started, stopping;
    pthread_t thread;
    pthread_rwlock_t lock;        /* regions: the fault thread reads, register/unregister write */
    struct gph_regions regions;
    uint8_t *bounce;              /* fault thread's read buffer (GPH_WINDOW_MAX) */
    uint8_t *zeros;               /* GPH_WINDOW_MAX of zeros, never written */
    struct gph_fault_stats total;
    pthread_mutex_t err_lock;
    struct gph_fault_error error;
    uint64_t nerrors;
    pthread_mutex_t host_lock;    /* one host operation at a time uses the scratch area */
    uint8_t *scratch;             /* registered with our uffd: UFFDIO_MOVE destination */
    uint8_t *host_buf;            /* host's compare buffer (GPH_SCRATCH_BYTES) */
    uint64_t race_delay_ns;       /* tests only: sleep inside each hold to widen race windows */
    int hashed;                   /* GPH_LOCKING_HASHED: holds are hashed locks (statelock.h), set before any region */
    struct gph_refault {          /* fault thread only: pages answered "already there" (EEXIST) */
        uint64_t page;            /* page address */
        uint32_t count;           /* consecutive such answers */
    } refaults[GPH_REFAULT_SLOTS];
};

/* Regions, looked up with s->lock held (read or write) for as long as the region is used.
 * gph_region_: registered (also while closing: the fault thread serves it until it is gone);
 * gph_region_open_: registered and not closing -- what a host operation may work on.  A host
 * operation holds the read lock from this check to its last state change, and unregister marks
 * the region closing under the write lock, so no host operation overlaps an unregister. */
struct gph_region *gph_region_(struct gph_service *s, int rid);
struct gph_region *gph_region_open_(struct gph_service *s, int rid);

void gph_race_delay_(struct gph_service *s);

/* stores.c */
int gph_store_fd_(int32_t id);
void gph_store_free_slots_(int32_t id, int64_t slot, int64_t n);
/* The store's mapping at [off, off+len), pinned until gph_store_map_put_; NULL: use pread. */
const uint8_t *gph_store_map_get_(int32_t id, int64_t off, size_t len);
void gph_store_map_put_(int32_t id);
/* Check the pages read into buf from store offset off against the store's content record: each
 * page whose digest differs is zeroed in buf.  Returns the pages that differed (0: all match or
 * no record); *first_bad gets the first one's index in buf and *why the likely reason. */
long gph_store_check_(int32_t id, int64_t off, uint8_t *buf, size_t len, size_t page_size,
                      int64_t *first_bad, const char **why);

#define GPH_COPY_CHUNK (128u << 10)   /* pread + UFFDIO_COPY piece: fits in L2 */
#define GPH_ADD(field, v) __atomic_fetch_add(&(field), (uint64_t)(v), __ATOMIC_RELAXED)

/* uffdio.c: fill [dst, dst+len) without waking (src NULL: UFFDIO_ZEROPAGE), EEXIST skipped
 * page by page; returns 0 or -errno.  gph_uffd_copy_ is the same with a source. */
long gph_uffd_fill_(struct gph_service *s, uint8_t *dst, const uint8_t *src, size_t len, size_t ps);
#define gph_uffd_copy_ gph_uffd_fill_
void gph_uffd_wake_(struct gph_service *s, uint8_t *start, size_t len);

/* serve.c: serve page p of r (a fault; write -1: a materialize step), bounce GPH_WINDOW_MAX
 * bytes of the caller's; mark a filled page resident (FILLED if the host holds it). */
void gph_serve_page_(struct gph_service *s, struct gph_region *r, int64_t p, int write, uint8_t *bounce,
                     uint64_t t0);
void gph_mark_served_(uint8_t *b);
void gph_record_error_(struct gph_service *s, int errnum, const char *syscall, int region, int64_t page);
uint64_t gph_now_ns_(void);

/* faults.c: a private anonymous buffer without huge pages, or NULL */
void *gph_map_buf_(size_t len);

#endif
