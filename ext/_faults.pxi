# The discard-fault service seam (issue 3) is included here; see ext/faults.c.
