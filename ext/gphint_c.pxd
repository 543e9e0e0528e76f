# C declarations of ext/gphint.h, kept apart from the seam's logic (uvloop style).
from libc.stdint cimport uint8_t, int64_t, uint64_t

cdef extern from "gphint.h" nogil:
    struct gph_err:
        const char *syscall
        int64_t first_page
        int64_t npages

    struct gph_discard_stats:
        uint64_t calls
        uint64_t runs
        uint64_t pages

    long gph_discard_pages(uint8_t *base, size_t page_size, int64_t npages,
                           const int64_t *pages, size_t n, int advice, int submit, int pidfd,
                           gph_discard_stats *st, gph_err *err)
    long gph_discard_runs(uint8_t *base, size_t page_size, int64_t npages,
                          const int64_t *runs, size_t n, int advice, int submit, int pidfd,
                          gph_discard_stats *st, gph_err *err)
    long gph_set_usage(uint8_t *states, int64_t npages, const int64_t *pages, size_t n,
                       uint8_t usage, const uint8_t *next, uint8_t *old_out, gph_err *err)
    long gph_set_content(uint8_t *states, int64_t npages, const int64_t *pages, size_t n,
                         uint8_t content, gph_err *err)
    long gph_residency(uint8_t *base, size_t page_size, int64_t npages, uint8_t *vec,
                       gph_err *err)
