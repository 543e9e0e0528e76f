"""`gphint sweep`: a grid of `gphint run` cells (axes x seeds), each in a fresh process, on this
host or as Ray tasks, with a resumable JSON-lines results file and `gphint report` over it.

grid (the TOML file) -> runner (local or raycells backend) -> results (JSON lines) -> report,
plots.  See docs/sweep.md.
"""
