"""Ending a run early from outside: a signal handler sets STOP; the runner and compare check it."""
import threading

# Set (by the CLI's SIGTERM handler) to end a run early: the runner stops at its next step, from
# a consistent state, and cleans up.  An exception raised from the signal handler itself could
# land anywhere -- inside a finalizer that swallows it, or half-way through a page-state change.
STOP = threading.Event()


class Stopped(BaseException):
    """The run was told to stop (STOP); not an error of the run, so not an Exception."""
