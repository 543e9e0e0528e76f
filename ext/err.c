/* err.c -- how the C mechanism says what went wrong: every public function returns -errno and
 * fills its struct gph_err (gphint.h) through these two, so the seam reads every failure the
 * same way (ext/_mech.pyx: raise_mech) and Python turns it into one domain error
 * (gphint/errors.py: translate). */
#include "gphint_internal.h"

#include <errno.h>

void gph_err_set(struct gph_err *err, const char *what, const char *call, int64_t first, int64_t n)
{
    if (!err)
        return;
    err->what = what;
    err->syscall = call;
    err->first_page = first;
    err->npages = n;
    err->bound = -1;
}

long gph_err_range(struct gph_err *err, const char *what, int64_t first, int64_t n, int64_t bound)
{
    gph_err_set(err, what, NULL, first, n);
    if (err)
        err->bound = bound;
    return -ERANGE;
}
