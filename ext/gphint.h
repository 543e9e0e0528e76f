/* gphint.h -- the C contract of gphint's mechanism, on one screen (the rest: gphint_internal.h).
 * Every function returns >= 0 on success, -errno on failure with *err filled; never includes
 * Python.h nor takes the GIL; makes no policy decision (Python chose pages, advice, mode). */
#ifndef GPHINT_H
#define GPHINT_H

#include <stddef.h>
#include <stdint.h>

/* One state byte per guest page, written by the guest, the host and the fault thread alike
 * (CAS, each keeping the bits it does not own).  gphint/states.py holds the same values. */
#define GPH_USAGE_MASK        0x0c  /* bits 2-3: guest usage, the s390 ESSA encoding */
#define GPH_USAGE_STABLE      0x00  /* content needed: never discarded */
#define GPH_USAGE_UNUSED      0x04  /* free in the guest: discard freely, reads back zeros */
#define GPH_USAGE_POTVOL      0x08  /* discardable while clean (host dirty bit) */
#define GPH_USAGE_VOLATILE    0x0c  /* clean cache: discardable, reloaded from its backing file */
#define GPH_CONTENT_MASK      0x03  /* bits 0-1: where the host has the content */
#define GPH_CONTENT_RESIDENT  0x00  /* in the frame */
#define GPH_CONTENT_LAZY      0x01  /* MADV_FREE'd: present until the kernel reclaims it */
#define GPH_CONTENT_PRESERVED 0x02  /* in host swap (swap_store/swap_slot) */
#define GPH_CONTENT_ZERO      0x03  /* discarded: the next access faults */
#define GPH_PAIR_MASK         0x0f  /* usage | content: the index into transition tables */
#define GPH_FLAG_MASK         0xf0  /* holds of the state protocol (protocol.c) */
#define GPH_FLAG_BUSY         0x10  /* the host holds the page (discard / swap-out) */
#define GPH_FLAG_FILLED       0x20  /* the fault thread served it while the host held it */
#define GPH_FLAG_SERVING      0x40  /* the fault thread (or a fill) holds it */

struct gph_err {
    const char *what;      /* what was wrong when no call failed ("page index", "region"), or NULL */
    const char *syscall;   /* the call that failed, e.g. "process_madvise", or NULL */
    int64_t first_page;    /* first page of the failing range (or the offending index / id) */
    int64_t npages;        /* pages in the failing range */
    int64_t bound;         /* a range error: the valid pages are [0, bound); else -1 */
};

/* Guest side (protocol.c): move pages to usage, validated first, each after any hold. */
long gph_set_usage(uint8_t *states, int64_t npages, const int64_t *pages, size_t n,
                   uint8_t usage, const uint8_t next[64], uint8_t *old_out, struct gph_err *err);
/* Make pages STABLE; discarded ones (Vz) are left and listed in discarded_out. */
long gph_make_stable(uint8_t *states, int64_t npages, const int64_t *pages, size_t n,
                     int64_t *discarded_out, struct gph_err *err);

/* Host side: one fault service (one userfaultfd, one C thread) serves every registered region. */
struct gph_service;
struct gph_region_desc {
    uint8_t *base;             /* the guest's frames: one anonymous mapping */
    size_t page_size;          /* the kernel's base page */
    int64_t npages;            /* frames, and entries in each table below */
    uint8_t *states;           /* state bytes */
    int32_t *backing_store;    /* store id of a VOLATILE page's file (0: none, zeros) */
    int64_t *backing_offset;   /* byte offset in that file */
    int32_t *swap_store;       /* store id of a PRESERVED page's host swap (0: none) */
    int64_t *swap_slot;        /* its slot there */
};
long gph_service_register(struct gph_service *s, const struct gph_region_desc *d, struct gph_err *err);
long gph_service_unregister(struct gph_service *s, int region, int materialize, struct gph_err *err);
/* Discard U/V/clean-P pages under the protocol (held or changed pages skipped). */
struct gph_discard_stats;
long gph_host_discard(struct gph_service *s, int region, const int64_t *pages, size_t n,
                      int advice, int submit, int pidfd, int32_t swap_id, const int64_t *slots,
                      size_t nslots, uint8_t *used_slots, int64_t *preserved,
                      struct gph_discard_stats *st, struct gph_err *err);

#endif /* GPHINT_H */
