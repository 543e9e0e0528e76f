"""The discarded page list (patch 8 of the series) in both discard modes: a frame the fault
service listed as a served discard fault, then freed by the guest and reused for another page
before the drain, must not be acted on by the drain -- guest mode would drop (and re-read) a page
the host never discarded, transparent mode would count it.  Contents are checked byte for byte
against the real files."""
import os
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gphint.errors import ConfigError
from gphint.faults import FaultService
from gphint.guest.frames import FILE
from gphint.guest.guest import Guest
from gphint.memory import PAGE_SIZE

pytestmark = pytest.mark.usefixtures("compiled_only")     # the list is filled by the fault thread
MODES = ["guest", "transparent"]


def file_bytes(g, path, npages):
    with open(os.path.join(g.files.root, path), "rb") as f:
        return f.read(npages * PAGE_SIZE)


def frames_of(g, path, npages):
    return g.cache.page_frame[g.files.lookup(path)][:npages].copy()


def two_files(g, npages):
    return [g.files.paths[i] for i in np.flatnonzero(g.files.size_bytes >= npages * PAGE_SIZE)[:2]]


def served_discard_faults(g, frames):
    """The host discards the frames, and an access takes their discard faults: now listed."""
    g.allocator.flush_hints()
    assert g.mem.discard(frames) == frames.size
    bytes(g.mem.frames[frames])


@pytest.mark.parametrize("mode", MODES)
def test_a_freed_and_reused_frame_leaves_the_list(mode):
    """The race window held open: discard faults served on file A's frames, A truncated (its
    frames freed) and the frames reused by file B before the drain.  The drain must leave B
    alone -- before the list retired frames at free, guest mode dropped all of B's pages."""
    svc = FaultService()
    with Guest("16M", seed=3, workload=None, file_bytes="8M", discard_mode=mode, fault_service=svc) as g:
        a, b = two_files(g, 8)
        g.read(a, 0, 8 * PAGE_SIZE)
        fa = frames_of(g, a, 8)
        served_discard_faults(g, fa)
        g.cache.drop(fa)                                  # the guest frees A's pages
        assert g.read(b, 0, 8 * PAGE_SIZE) == file_bytes(g, b, 8)
        assert np.intersect1d(fa, frames_of(g, b, 8)).size > 0    # the window really was hit
        g.drain_discarded()
        misses = g.cache.stats["misses"]
        assert g.read(b, 0, 8 * PAGE_SIZE) == file_bytes(g, b, 8)
        assert g.cache.stats["misses"] == misses          # B stayed cached: nothing dropped
        assert g.stats["dropped_drained"] == 0
        assert g.stats["dlist_retired_by_free"] == 8 and g.stats["drained_discarded"] == 8
        assert g.verify() == 0
    svc.stop()


@pytest.mark.parametrize("mode", MODES)
def test_listed_pages_are_dropped_in_a_batch_at_step(mode):
    """step() drops the list once it holds discard_list_batch pages (guest mode), not before."""
    svc = FaultService()
    with Guest("16M", seed=3, workload="mixed", file_bytes="8M", discard_mode=mode, fault_service=svc,
               discard_list_batch=8) as g:
        a, _ = two_files(g, 8)
        g.read(a, 0, 4 * PAGE_SIZE)
        served_discard_faults(g, frames_of(g, a, 4))
        g.drain_discarded(min_batch=g.discard_list_batch)
        assert g.stats["dlist_drains"] == 0 and g.listed_frames().size == 4     # below the batch: kept
        g.read(a, 0, 8 * PAGE_SIZE)
        served_discard_faults(g, frames_of(g, a, 8)[4:])
        g.step(1)
        assert g.stats["dlist_drains"] >= 1 and g.stats["dlist_high_water"] >= 8
        if mode == "guest":
            assert g.stats["dropped_drained"] >= 8                   # the listed pages went
        else:
            assert g.stats["dropped_drained"] == 0                   # reloaded already: kept
        assert g.read(a, 0, 8 * PAGE_SIZE) == file_bytes(g, a, 8)
        assert g.verify() == 0
    svc.stop()


def test_discard_list_batch_is_checked():
    with pytest.raises(ConfigError, match="discard_list_batch must be an integer >= 1, got 0"):
        Guest("16M", workload=None, discard_list_batch=0)


OPS = st.lists(st.tuples(st.sampled_from(["read", "discard_fault", "free", "drain", "step"]),
                         st.integers(0, 3), st.integers(0, 7)), min_size=1, max_size=25)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_random_free_discard_fault_interleavings_keep_every_byte(mode, ops):
    """Randomised reads, host discards with their faults, frees (truncate) and drains: every read
    returns the file's bytes, no listed frame is ever free, and a drain drops only pages that were
    still cached when their fault was listed."""
    svc = FaultService()
    with Guest("16M", seed=5, workload="mixed", file_bytes="8M", discard_mode=mode, fault_service=svc,
               discard_list_batch=4) as g:
        paths = [g.files.paths[i] for i in np.flatnonzero(g.files.size_bytes >= 8 * PAGE_SIZE)[:4]]
        for op, f, n in ops:
            path = paths[f % len(paths)]
            fid = g.files.lookup(path)
            cached = g.cache.page_frame[fid]
            cached = cached[cached >= 0] if cached is not None else np.empty(0, dtype=np.int64)
            if op == "read":
                assert g.read(path, 0, (n + 1) * PAGE_SIZE) == file_bytes(g, path, n + 1)
            elif op == "discard_fault" and cached.size:
                g.allocator.flush_hints()
                pick = cached[: n + 1]
                pick = pick[g.mem.usage(pick) == 0x0c]           # VOLATILE and resident only
                pick = pick[g.mem.content(pick) == 0]
                if pick.size:
                    g.mem.discard(pick)
                    bytes(g.mem.frames[pick])
            elif op == "free" and cached.size:
                g.cache.drop(cached[g.table.reclaimable()[cached]][: n + 1])
            elif op == "drain":
                g.drain_discarded()
            elif op == "step":
                g.step(n + 1)
            # the invariant the list keeps: a listed frame was never freed since its fault
            assert (g.table.kind[g.listed_frames()] == FILE).all()
        for path in paths:
            assert g.read(path, 0, 8 * PAGE_SIZE) == file_bytes(g, path, 8)
        assert g.verify() == 0
    svc.stop()


@pytest.mark.parametrize("mode", MODES)
def test_discard_faults_racing_the_free_leave_the_new_page_alone(mode):
    """The race widened with a second thread: the host discards file A's frames, then a host
    thread takes their discard faults exactly while the guest frees them and reads file B into
    the freed frames (a barrier starts both).  B was never discarded, so no drain may drop it
    -- whichever way each fault fell: before the free (listed, then retired by the free), across
    it (not listed: the backing record changed, ring_stale) or after it (nothing to list)."""
    svc = FaultService()
    with Guest("16M", seed=7, workload=None, file_bytes="8M", discard_mode=mode, fault_service=svc) as g:
        paths = [g.files.paths[i] for i in np.flatnonzero(g.files.size_bytes >= 8 * PAGE_SIZE)]
        reused = 0
        for k in range(40):
            a, b = paths[(2 * k) % len(paths)], paths[(2 * k + 1) % len(paths)]
            g.read(a, 0, 8 * PAGE_SIZE)
            fa = frames_of(g, a, 8)
            g.allocator.flush_hints()
            assert g.mem.discard(fa) == fa.size
            start = threading.Barrier(2)

            def host():
                start.wait()
                for f in fa[::-1]:                        # against the guest's order: they meet
                    bytes(g.mem.frames[f])
            t = threading.Thread(target=host)
            t.start()
            start.wait()
            g.cache.drop(fa)
            assert g.read(b, 0, 8 * PAGE_SIZE) == file_bytes(g, b, 8)
            t.join()
            reused += np.intersect1d(fa, frames_of(g, b, 8)).size
            g.drain_discarded()
            misses = g.cache.stats["misses"]
            assert g.read(b, 0, 8 * PAGE_SIZE) == file_bytes(g, b, 8)
            assert g.cache.stats["misses"] == misses, "round %d: the drain dropped B's pages" % k
            g.cache.drop(frames_of(g, b, 8))
        assert reused > 0 and g.stats["dropped_drained"] == 0
        assert g.verify() == 0
    svc.stop()


def test_the_batch_is_a_run_option_recorded_with_the_run(compiled_only):
    """`--discard-list-batch N` reaches every guest of a run and its results (config and the
    discard_list field); a bad N is one line naming it, exit 2."""
    from gphint.cli import build_parser, config_from
    from gphint.experiment import RunConfig, results_document, run_one
    from test_cli import gphint as gphint_cli
    cfg = RunConfig(workload="fileserver,mixed", guests=2, guest_mem_bytes=16 << 20, duration_s=30.0,
                    ops_per_guest=200, seed=4, probe=False, cgroup=False, discard_mode="guest",
                    discard_list_batch=4)
    args = build_parser().parse_args(["run", "--strategy", "cmma"] + cfg.cli_args())
    assert config_from(args).discard_list_batch == 4
    doc = results_document(cfg, [run_one(cfg, "cmma")])
    rec = doc["results"][0]
    assert doc["config"]["discard_list_batch"] == 4 == rec["discard_list"]["dlist_batch"]
    assert rec["integrity_errors"] == 0
    for bad in ("0", "-3"):
        r = gphint_cli("run", "--strategy", "cmma", "--discard-list-batch", bad)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and bad in lines[0], r.stderr
