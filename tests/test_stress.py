"""Concurrent stress of the state protocol: guest threads change states and write versioned
content, a host thread discards and swaps, everyone verifies -- zero mismatches, zero lost pages.

Seconds in the suite; minutes with --stress."""
import contextlib
import os
import threading
import time

import numpy as np
import pytest

import gphint
from gphint import PageState
from gphint.faults import FaultService, FileStore, HostSwap
from helpers import PAGE

needs_move = pytest.mark.skipif(not gphint.caps.has("uffd_move"),
                                reason=gphint.caps.probe().features["uffd_move"].reason)

NONE, FILE, VER = 0, 1, 2


def version_page(page, version):
    """Distinct bytes for (page, version): the verifier can tell any two apart."""
    out = np.full(PAGE, (page * 131 + version * 7) & 0xFF, dtype=np.uint8)
    out[:16] = np.frombuffer(np.array([page, version], dtype=np.int64).tobytes(), dtype=np.uint8)
    return out


class GuestModel(threading.Thread):
    """Owns pages [lo, hi): read misses (V), writes (S), frees (U), writable mappings (P)."""

    def __init__(self, mem, svc, fd, data, lo, hi, seed, deadline):
        super().__init__(daemon=True)
        self.mem, self.svc, self.fd, self.data = mem, svc, fd, data
        self.lo, self.hi = lo, hi
        self.rng = np.random.default_rng(seed)
        self.deadline = deadline
        self.kind = np.zeros(mem.npages, dtype=np.int8)
        self.ver = np.zeros(mem.npages, dtype=np.int64)
        self.mismatches = []
        self.ops = 0
        self.error = None

    def expected(self, p):
        return self.data[p] if self.kind[p] == FILE else version_page(p, int(self.ver[p]))

    def verify(self, pages):
        for p in pages.tolist():
            if self.kind[p] != NONE and not np.array_equal(self.mem.frames[p], self.expected(p)):
                self.mismatches.append((p, int(self.kind[p]), int(self.ver[p]),
                                        gphint.states.pair_name(self.mem.states[p])))

    def stable(self, b):
        """Make b stable; pages found discarded (a discard fault) are freed and re-allocated."""
        lost = self.mem.make_stable(b)
        if lost.size:
            self.mem.set_state(lost, PageState.UNUSED)
            self.mem.set_state(lost, PageState.STABLE)
            self.kind[lost] = NONE
        return lost

    def map_writable(self, b):
        """S -> P needs a resident page: a page the host swapped out meanwhile (Sp) is touched,
        which swaps it back in, and the transition retried."""
        for _ in range(100):
            try:
                self.mem.set_state(b, PageState.POT_VOLATILE)
                return
            except gphint.StateError:
                int(self.mem.frames[b].sum())
        raise AssertionError("pages %s never became resident" % b)

    def run(self):
        try:
            while time.monotonic() < self.deadline:
                first = int(self.rng.integers(self.lo, self.hi - 8))
                b = np.arange(first, first + int(self.rng.integers(1, 9)), dtype=np.int64)
                op = int(self.rng.integers(0, 5))
                usage = self.mem.usage(b)
                if op == 4:       # a store through a writable mapping, no state change
                    b = b[usage == PageState.POT_VOLATILE]
                    self.ver[b] += 1
                    for p in b.tolist():
                        self.mem.frames[p] = version_page(p, int(self.ver[p]))
                    self.kind[b] = VER
                    # a store into a page the host had already found clean went to a reloaded
                    # VOLATILE copy: the guest sees it as a discard fault and drops the page
                    lost = self.stable(b)
                    self.kind[lost] = NONE
                    self.verify(b)
                    self.ops += 1
                    continue
                self.verify(b)                               # reads while the host works
                if op == 0:       # page-cache read miss: reload from the file, make volatile
                    self.stable(b)
                    self.mem.fill_from_file(b, self.fd, b * PAGE)
                    self.kind[b] = FILE
                    self.mem.set_state(b, PageState.VOLATILE)
                elif op == 1:     # write: stable, new version
                    self.stable(b)
                    self.ver[b] += 1
                    for p in b.tolist():
                        self.mem.frames[p] = version_page(p, int(self.ver[p]))
                    self.kind[b] = VER
                elif op == 2:     # free
                    self.mem.set_state(b, PageState.UNUSED)
                    self.kind[b] = NONE
                elif op == 3:     # map writable after writeback: stable, clean, then P
                    self.stable(b)
                    self.mem.fill_from_file(b, self.fd, b * PAGE)
                    self.kind[b] = FILE
                    self.svc.clear_dirty(self.mem, b)        # stable first, then clear (§1 race rule)
                    self.map_writable(b)
                self.verify(b)
                self.ops += 1
        except Exception as e:   # reported by the test, never swallowed
            self.error = e


MADV_PAGEOUT = 21


def host_loop(mem, svc, swap, deadline, seed, counts, errors, advice="dontneed"):
    rng = np.random.default_rng(seed)
    try:
        while time.monotonic() < deadline:
            first = int(rng.integers(0, mem.npages - 64))
            b = np.arange(first, first + int(rng.integers(1, 64)), dtype=np.int64)
            op = int(rng.integers(0, 4 if advice == "free" else 3))
            if op == 3:
                # the kernel's reclaim of lazily freed pages, at a moment nobody chose: pages
                # MADV_FREE'd and not written since go missing
                mem._map.madvise(MADV_PAGEOUT, mem._offset + first * PAGE, b.size * PAGE)
                counts["pageouts"] += 1
            elif op:
                counts["discarded"] += svc.discard(mem, b, advice=advice)
            else:
                counts["swapped"] += svc.swap_out(mem, b, swap)
    except Exception as e:
        errors.append(e)


@contextlib.contextmanager
def served_memory(tmp_path, npages, seed, race_delay_ns, name=None, locking="holdbits"):
    """A served GuestMemory whose every page is backed by a random file; yields (data, mem,
    svc, fd, swap) and closes all of it however the test ends.  locking: the service's holds
    (hold bits or the hashed lock, docs/state-protocol.md)."""
    data = np.random.default_rng(seed).integers(0, 256, size=(npages, PAGE), dtype=np.uint8)
    path = tmp_path / "backing"
    data.tofile(path)
    store = FileStore(path)
    fd = os.open(path, os.O_RDONLY)
    swap = HostSwap(npages * PAGE)
    svc = FaultService(window="64K", swap=swap, locking=locking)
    svc.set_race_delay(race_delay_ns)
    mem = gphint.GuestMemory(npages * PAGE, name=name)
    try:
        svc.register(mem)
        mem.set_backing(np.arange(npages), store, np.arange(npages) * PAGE)
        yield data, mem, svc, fd, swap
    finally:
        svc.stop()
        mem.close()
        os.close(fd)
        store.close()
        swap.close()


def verify_nothing_lost(guests, svc, mem):
    """Every page of every guest byte for byte, and the service lost none; returns its stats."""
    for g in guests:                                 # final pass over every page
        g.verify(np.arange(g.lo, g.hi))
    mismatches = [m for g in guests for m in g.mismatches]
    assert mismatches == [], mismatches[:10]
    st = svc.stats(mem)
    assert st["lost_pages"] == 0
    svc.check()
    return st


def run_stress(tmp_path, seconds, npages=4096, race_delay_ns=0, advice="dontneed", locking="holdbits"):
    with served_memory(tmp_path, npages, 99, race_delay_ns, locking=locking) as (data, mem, svc, fd, swap):
        return _stress(mem, svc, fd, swap, data, npages, seconds, advice)


def _stress(mem, svc, fd, swap, data, npages, seconds, advice):
    deadline = time.monotonic() + seconds
    half = npages // 2
    guests = [GuestModel(mem, svc, fd, data, 0, half, 1, deadline),
              GuestModel(mem, svc, fd, data, half, npages, 2, deadline)]
    counts, errors = {"discarded": 0, "swapped": 0, "pageouts": 0}, []
    host = threading.Thread(target=host_loop, args=(mem, svc, swap, deadline, 3, counts, errors, advice),
                            daemon=True)
    for t in guests + [host]:
        t.start()
    for t in guests + [host]:
        t.join(seconds + 60)
    assert not any(t.is_alive() for t in guests + [host]), "a thread hung"
    assert not errors and not [g.error for g in guests if g.error], (errors, [g.error for g in guests])
    st = verify_nothing_lost(guests, svc, mem)
    assert counts["discarded"] > 0 and counts["swapped"] > 0 and st["file_reloads"] > 0 \
        and st["swap_ins"] > 0, (counts, st)
    if advice == "free":   # both fates of a lazily freed page happened
        ms = mem.stats
        assert ms["lazy_freed_pages"] > 0 and ms["lazy_reused_pages"] > 0 \
            and ms["lazy_reclaimed_pages"] > 0, ms
    return counts, st, sum(g.ops for g in guests)


@needs_move
@pytest.mark.parametrize("advice", ["dontneed", "free"])
@pytest.mark.parametrize("race_delay_ns", [0, 200_000], ids=["natural", "widened-windows"])
@pytest.mark.parametrize("locking", ["holdbits", "hashed"])
def test_concurrent_guest_and_host_never_lose_a_page(compiled_only, tmp_path, stress, race_delay_ns, advice,
                                                     locking):
    if advice == "free" and not gphint.caps.has("madv_free"):
        pytest.skip(gphint.caps.probe().features["madv_free"].reason)
    counts, st, ops = run_stress(tmp_path, 60.0 if stress else 2.5, race_delay_ns=race_delay_ns,
                                 advice=advice, locking=locking)
    print("stress: %d guest ops, %s, faults %d" % (ops, counts, st["faults"]))
