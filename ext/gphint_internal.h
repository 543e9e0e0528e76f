/* gphint_internal.h -- what the C files share with each other and with the seam, beyond the
 * public contract in gphint.h. */
#ifndef GPHINT_INTERNAL_H
#define GPHINT_INTERNAL_H

#include "gphint.h"

/* err.c: fill *err (NULL allowed).  what: what was wrong when no call failed (a page index, a
 * region id, a mode), else NULL; call: the system or library call that failed, else NULL. */
void gph_err_set(struct gph_err *err, const char *what, const char *call, int64_t first, int64_t n);
/* Pages [first, first+n) not inside [0, bound) (what: "page index", "page run"): returns -ERANGE. */
long gph_err_range(struct gph_err *err, const char *what, int64_t first, int64_t n, int64_t bound);

#endif
