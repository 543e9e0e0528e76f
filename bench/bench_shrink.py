"""Shrinking one guest: a touched guest, mostly freed (as after a workload ends), taken down to
10% of its memory by each strategy -- wall time and host CPU per GiB taken back.

Method: one guest of GPHINT_SHRINK_MB (default 1024 MiB) whose buddy allocator (struct pages
in the guest's own frames) hands out all its memory in 64-page pieces (2 MiB pieces when THP-backed, as a THP-aware guest), and then frees
pieces at random (seeded) until what it still uses, struct pages included, fits the host's target
(10% less the host's headroom): the free memory is a few hundred runs of every size, and it is
exactly what the host must take back -- no strategy that sees free pages needs to swap.  Each strategy shrinks a fresh copy of that guest once (the operation frees the
memory, it cannot be repeated on the same pages), with 4 KiB-backed and THP-backed memory
(`GuestMemory(thp=True)`):
  cmma, unused   the host reads the states and discards the UNUSED pages (cmma:batch=4096)
  reporting      the guest's reporting passes (delay 0) until it reports nothing more
  balloon        one inflate of the free memory; the host discards what the driver hands over
                 (host_batch 256: virtio-balloon's PFN array, VIRTIO_BALLOON_ARRAY_PFNS_MAX)
  none           the host swaps the free memory out (it cannot tell it is free)
The floor, measured on a fresh copy in the same test: one `madvise(MADV_DONTNEED)` per free run
(`mem.discard_raw(runs, submit="coalesce")`); the floor and cmma are measured GPHINT_SHRINK_ROUNDS
(3) times each, interleaved, and the fastest of each is compared.  Targets: cmma with 4 KiB pages within 1.3x of
that floor's wall time; cmma with THP-backed memory under 10 us per 2 MiB taken back.
Published anchors printed beside (HyperAlloc, EuroSys 2025, raw data of its artifact):
virtio-balloon 4.45 us per 4 KiB page, virtio-mem 63 us per 2 MiB, HyperAlloc 6.2 us per 2 MiB.
"""
import os
import time
import types

import numpy as np
import pytest

import gphint
from gphint.guest.allocator import BuddyAllocator
from gphint.guest.balloon import BalloonDriver
from gphint.guest.reporting import PageReporting
from gphint.host import Host
from gphint.host.hostswap import fault_service_available
from gphint.host.spec import BALLOON_ARRAY_PFNS
from gphint.memory import expand_runs

PAGE = gphint.PAGE_SIZE
SHRINK_MB = int(os.environ.get("GPHINT_SHRINK_MB", "1024"))
KEEP = 0.10
HEADROOM = 0.02   # the Host's default: it reclaims to (1 - headroom) of the budget
ROUNDS = int(os.environ.get("GPHINT_SHRINK_ROUNDS", "3"))   # floor and cmma shrinks, interleaved
PIECE = 64
THP_PIECE = 512
HAS_SERVICE, WHY_NOT = fault_service_available()
ANCHORS_US = {"virtio-balloon per 4 KiB": 4.45, "virtio-mem per 2 MiB": 63.0, "HyperAlloc per 2 MiB": 6.2}
STRATEGIES = ("cmma", "unused", "reporting", "balloon", "none")
SPECS = {"cmma": "cmma:batch=4096", "unused": "unused:batch=4096", "none": "none:batch=4096",
         "balloon": "none:host_batch=%d" % BALLOON_ARRAY_PFNS, "reporting": "reporting:delay=0"}
pytestmark = pytest.mark.skipif(not HAS_SERVICE, reason="needs the discard-fault service "
                                "(host swap, served struct pages): %s" % WHY_NOT)


def shrunk_guest(svc, thp, hinting):
    """A touched guest, ~90% of it freed in pieces; returns a guest-like namespace."""
    mem = gphint.GuestMemory("%dM" % SHRINK_MB, thp=thp, name="shrink")
    # touched before the fault service watches it: the kernel's own faults, huge pages with THP
    # (userfaultfd would serve every first touch as a 4 KiB copy)
    mem.frames[:] = 0x5A
    huge = _anon_huge_bytes()
    svc.register(mem)
    a = BuddyAllocator(mem, batch=4096, hinting=hinting, mem_map=True)
    # THP-backed: a THP-aware guest hands out its anonymous memory in 2 MiB pieces
    piece = THP_PIECE if thp else PIECE
    pieces = [a.alloc(piece) for _ in range(a.free_pages // piece)]
    # what the guest still uses -- its struct pages (mem_map) included -- fits the host's target
    # (KEEP less the headroom): the shrink is then the free memory, the very pages the floor
    # advises, and no strategy that sees free pages has to swap the guest's own (keeping 10% of
    # the pieces on top of 1.6% of struct pages made cmma swap ~17 MiB: 4x the THP floor's time)
    target = int(int(mem.npages * KEEP) * (1.0 - HEADROOM))
    keep = max(0, (target - a.reserved_pages) // piece)
    rng = np.random.default_rng(11)
    for i in rng.permutation(len(pieces))[:len(pieces) - keep]:
        a.free(pieces[i])
    a.flush_hints()
    return types.SimpleNamespace(mem=mem, allocator=a, name="shrink", reclaim=None, huge_bytes=huge)


def _shrink(name, g):
    """Take the guest down to KEEP of its memory by strategy `name`, timing only the shrink
    (not building the host): (wall s, host CPU s, guest CPU s)."""
    budget = int(g.mem.size_bytes * KEEP)
    host = Host([g], budget=budget, strategy=SPECS[name], fault_service=g.mem.fault_service,
                headroom=HEADROOM)
    slot = host.slots[0]
    try:
        if name == "balloon":
            drv = BalloonDriver(g.allocator)
            t0, c0 = time.perf_counter(), time.thread_time()
            pages = np.sort(drv.inflate(g.allocator.free_pages))
            g.allocator.flush_hints()
            c1 = time.thread_time()
            host.strategy.discard(slot, pages, "ballooned", raw=True)
            return time.perf_counter() - t0, time.thread_time() - c1, c1 - c0
        if name == "reporting":
            host_s = [0.0]

            def report(runs):
                c = time.thread_time()
                host.strategy.discard(slot, expand_runs(runs), "reported", raw=True)
                host_s[0] += time.thread_time() - c
                return True
            rep = PageReporting(g.allocator, report, delay_s=0.0, low_watermark_pages=0)
            t0, c0 = time.perf_counter(), time.thread_time()
            while rep.poll(time.monotonic() + 1e6):
                pass
            return time.perf_counter() - t0, host_s[0], time.thread_time() - c0 - host_s[0]
        t0, c0 = time.perf_counter(), time.thread_time()
        host.step()
        return time.perf_counter() - t0, time.thread_time() - c0, 0.0
    finally:
        host.close()


def _anon_huge_bytes():
    """AnonHugePages of this process now (smaps_rollup): did THP back the guest?"""
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="module")
def svc():
    s = gphint.FaultService()
    yield s
    s.stop()


def _measure(svc, name, thp):
    g = shrunk_guest(svc, thp, hinting=name in ("cmma", "unused"))
    try:
        before = g.mem.resident_pages()
        wall, host_s, guest_s = _shrink(name, g)
        taken = before - g.mem.resident_pages()
        return wall, host_s, guest_s, taken
    finally:
        svc.unregister(g.mem, materialize=False)
        g.mem.close()


def _floor(svc, thp):
    g = shrunk_guest(svc, thp, hinting=False)
    try:
        free = ~g.allocator.allocated_mask()
        edges = np.flatnonzero(np.diff(np.concatenate(([0], free.view(np.int8), [0]))))
        runs = np.column_stack([edges[0::2], edges[1::2] - edges[0::2]])
        before = g.mem.resident_pages()
        t0, c0 = time.perf_counter(), time.thread_time()
        g.mem.discard_raw(runs, "dontneed", "coalesce")
        return (time.perf_counter() - t0, time.thread_time() - c0, before - g.mem.resident_pages(),
                len(runs), g.huge_bytes)
    finally:
        svc.unregister(g.mem, materialize=False)
        g.mem.close()


@pytest.mark.target
@pytest.mark.parametrize("backing", ["4K", "THP"])
def test_shrink_one_guest(benchmark, svc, backing):
    thp = backing == "THP"
    benchmark.group = "shrink %d MiB guest to 10%%, %s-backed" % (SHRINK_MB, backing)
    # the floor and cmma interleaved, ROUNDS times each on fresh copies, the fastest of each
    # compared: the machine's noise hits both alike (single shots moved the ratio 0.76-1.84x)
    floors, cmmas = [], []
    for _ in range(ROUNDS):
        floors.append(_floor(svc, thp))
        cmmas.append(_measure(svc, "cmma", thp))
    floor_wall, floor_cpu, floor_taken, nruns, huge = min(floors, key=lambda f: f[0])
    rows = {name: _measure(svc, name, thp) for name in STRATEGIES if name != "cmma"}
    # the timed round pytest-benchmark records: cmma's shrink of one more fresh copy
    benchmark.pedantic(lambda: cmmas.append(_measure(svc, "cmma", thp)), rounds=1)
    rows["cmma"] = min(cmmas, key=lambda r: r[0])
    info = {"floor_madvise_per_run_s": floor_wall, "free_runs": nruns, "anon_huge_MiB_seen": huge >> 20,
            "floor_us_per_2MiB": floor_wall / (floor_taken * PAGE / (2 << 20)) * 1e6}
    for name, (wall, host_s, guest_s, taken) in rows.items():
        gib = taken * PAGE / (1 << 30)
        info.update({"%s_wall_s" % name: wall, "%s_host_cpu_s_per_GiB" % name: host_s / gib if gib else None,
                     "%s_guest_cpu_s" % name: guest_s, "%s_taken_MiB" % name: taken * PAGE / (1 << 20),
                     "%s_us_per_2MiB" % name: wall / (gib * 512) * 1e6 if gib else None,
                     "%s_us_per_4KiB" % name: wall / taken * 1e6 if taken else None})
    for k, v in ANCHORS_US.items():
        info["anchor_us " + k] = v
    benchmark.extra_info.update(info)
    for name in STRATEGIES:
        print("%s %-9s wall %.4f s, %.2f us per 2 MiB, %.3f us per 4 KiB, host CPU %s s/GiB" % (
            backing, name, info["%s_wall_s" % name], info["%s_us_per_2MiB" % name] or 0,
            info["%s_us_per_4KiB" % name] or 0, info["%s_host_cpu_s_per_GiB" % name]))
    print("%s floor (one madvise per free run) %.4f s, %.2f us per 2 MiB; cmma %.2fx the floor" % (
        backing, floor_wall, info["floor_us_per_2MiB"], info["cmma_wall_s"] / floor_wall))
    print("anchors (HyperAlloc, EuroSys 2025): %s" % ", ".join("%s %.2f us" % kv for kv in ANCHORS_US.items()))
    cmma_wall, _, _, cmma_taken = rows["cmma"]
    assert cmma_taken >= 0.95 * floor_taken      # it really took the free memory back
    if thp:
        assert info["cmma_us_per_2MiB"] < 10.0, info
    else:
        ratio = cmma_wall / floor_wall
        benchmark.extra_info["cmma_over_floor"] = ratio
        assert ratio <= 1.3, "cmma %.4f s vs one madvise per run %.4f s: %.2fx > 1.3x" % (
            cmma_wall, floor_wall, ratio)
