"""Helpers that several test files share, imported as a plain module (`from helpers import ...`;
pytest puts tests/ on sys.path).  Fixtures live in conftest.py."""
import mmap
import os

import numpy as np
import pytest

from gphint import caps
from gphint.host.hostswap import fault_service_available

PAGE = mmap.PAGESIZE
EXAMPLES = int(os.environ.get("GPHINT_EXAMPLES", 10))   # hypothesis examples; raise for a deeper search

needs_service = pytest.mark.skipif(not fault_service_available()[0],
                                   reason="needs the discard-fault service: %s" % fault_service_available()[1])


def pattern(npages, seed=0):
    """Deterministic, page-distinct content: page i is filled from (seed, i)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(npages, PAGE), dtype=np.uint8)


def fault_service_or_skip():
    """A discard-fault service, or a skip saying why there is none here."""
    if not caps.has("compiled"):
        pytest.skip("no C fault service in the pure-Python mechanism: VOLATILE discards need it")
    if not caps.has("userfaultfd"):
        pytest.skip("userfaultfd unavailable: %s" % caps.probe().features["userfaultfd"].reason)
    from gphint.faults import FaultService
    return FaultService()


class Clock:
    """A host clock the test moves by hand (the scan period and delay rules are timing)."""

    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t
