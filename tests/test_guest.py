"""The Guest API, its errors, reclaim, and verify() == 0 after randomised operation sequences
interleaved with host discards of every discardable state (hypothesis)."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gphint
from gphint import ClosedError, ConfigError, PageState, caps
from gphint.guest.content import PAGE_SIZE
from gphint.guest.guest import Guest

U, V, P = int(PageState.UNUSED), int(PageState.VOLATILE), int(PageState.POT_VOLATILE)


def fault_service_or_skip():
    """A discard-fault service, or a skip saying why there is none here."""
    if not caps.has("compiled"):
        pytest.skip("no C fault service in the pure-Python mechanism: VOLATILE discards need it")
    if not caps.has("userfaultfd"):
        pytest.skip("userfaultfd unavailable: %s" % caps.probe().features["userfaultfd"].reason)
    try:
        from gphint.faults import FaultService
    except ImportError as e:
        pytest.skip("gphint.faults not importable yet: %s" % e)
    return FaultService()


def host_discard(g, rng, states=(U,), fraction=0.5):
    """The host discards a random part of the guest's pages in the given usage states."""
    g.allocator.flush_hints()
    usage = g.mem.usage()
    content = g.mem.content()
    cand = np.flatnonzero(np.isin(usage, states) & (content == 0))
    if cand.size == 0:
        return 0
    pick = cand[rng.random(cand.size) < fraction]
    return g.mem.discard(pick) if pick.size else 0


def test_api_basics_and_errors():
    with pytest.raises(ConfigError, match="discard_mode"):
        Guest("4M", discard_mode="sometimes", workload=None)
    with pytest.raises(ConfigError, match="seed"):
        Guest("4M", seed=-1, workload=None)
    with pytest.raises(ConfigError, match="guest memory size"):
        Guest("lots", workload=None)
    g = Guest("8M", seed=1, workload=None, file_bytes="4M")
    assert g.mem.npages == 2048 and g.allocator.free_pages == 2048
    assert set(g.census()) == {"Ur"}
    with pytest.raises(ConfigError, match="npages"):
        g.alloc(-3)
    with pytest.raises(ConfigError, match="reclaim"):
        g.reclaim("x")
    with pytest.raises(ConfigError, match="hint level"):
        g.set_hint_level("some")
    g.close()
    g.close()
    with pytest.raises(ClosedError):
        g.read(g.files.paths[0] if False else "x", 0, 1)


def test_reclaim_for_the_balloon_frees_frames():
    with Guest("8M", seed=2, workload="fileserver", file_bytes="16M") as g:
        g.step(600)
        free_before = g.allocator.free_pages
        freed = g.reclaim(500)
        assert freed >= 500
        assert g.allocator.free_pages >= free_before + 500
        assert g.verify() == 0


def test_hint_level_unused_keeps_the_cache_stable():
    with Guest("8M", seed=2, workload="fileserver", file_bytes="16M") as g:
        g.step(200)
        assert g.census().get("Vr", 0) > 0
        g.set_hint_level("unused")
        assert "Vr" not in g.census()
        g.step(200)
        assert "Vr" not in g.census() and g.census().get("Ur", 0) > 0
        g.set_hint_level("all")
        assert g.census().get("Vr", 0) > 0
        assert g.verify() == 0


def test_gphint_exports_guest():
    assert gphint.Guest is Guest


OPS = st.lists(st.tuples(st.sampled_from(["read", "write", "wgen", "writeback", "alloc", "free",
                                          "touch", "swap", "reclaim", "pin", "discard_u",
                                          "discard_v", "map", "store", "msync"]),
                         st.integers(0, 10 ** 6), st.integers(1, 40)),
               min_size=5, max_size=40)


def run_sequence(g, ops, rng, volatile_discards):
    anon = []
    pinned = []
    mapped = []
    paths = g.files.paths
    for op, a, b in ops:
        path = paths[a % len(paths)]
        size = int(g.files.size_bytes[g.files.lookup(path)])
        off = (a * 7919) % max(1, size)
        if op == "read":
            g.read(path, off, b * 1000)
        elif op == "write":
            g.write(path, off, bytes([a % 251]) * (b * 100))
        elif op == "wgen":
            g.write(path, off, None, b * 500)
        elif op == "writeback":
            g.writeback()
        elif op == "alloc":
            anon.append((a % 3, g.alloc(b * 8, pid=a % 3)))
        elif op == "free" and anon:
            pid, pages = anon.pop(a % len(anon))
            g.free(pages, pid=pid)
        elif op == "touch" and anon:
            pid, pages = anon[a % len(anon)]
            g.touch(pages[::2], pid=pid)
        elif op == "swap":
            g.anon.swap_out(g.anon.swap_out_candidates()[:b * 4])
        elif op == "reclaim":
            g.reclaim(b * 10)
        elif op == "pin":
            if pinned and a % 2:
                g.unpin(*pinned.pop())
            else:
                g.pin(path, off, b * 10)
                pinned.append((path, off, b * 10))
        elif op == "discard_u":
            host_discard(g, rng, (U,))
        elif op == "discard_v" and volatile_discards:
            host_discard(g, rng, (U, V))
        elif op == "map":
            g.map_writable(path, off, b * 100)
            mapped.append((path, off, b * 100))
        elif op == "store" and mapped:
            g.store_mapped(*mapped[a % len(mapped)])
        elif op == "msync":
            g.msync()
        assert g.verify() == 0, "after %s" % op
    for p in pinned:
        g.unpin(*p)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, seed=st.integers(0, 1000))
def test_random_sequences_with_unused_discards_lose_nothing(ops, seed):
    with Guest("4M", seed=seed, workload=None, file_bytes="6M") as g:
        run_sequence(g, ops, np.random.default_rng(seed), volatile_discards=False)
        g.sync()
        assert g.verify() == 0


@pytest.mark.parametrize("mode", ["transparent", "guest"])
def test_random_sequences_with_volatile_discards_lose_nothing(mode):
    svc = fault_service_or_skip()
    try:
        @settings(max_examples=int(os.environ.get("GPHINT_EXAMPLES", 10)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(ops=OPS, seed=st.integers(0, 1000))
        def check(ops, seed):
            with Guest("4M", seed=seed, workload=None, file_bytes="6M", discard_mode=mode,
                       fault_service=svc) as g:
                run_sequence(g, ops, np.random.default_rng(seed), volatile_discards=True)
                g.sync()
                assert g.verify() == 0
        check()
    finally:
        svc.stop()
