"""Guest processes mapping page-cache pages: minor and major faults, munmap, and patch 7 (no
state change on minor faults and munmap, the state corrected lazily at writeback) against the
eager variant.  Contents are checked byte for byte against the real files."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gphint
from gphint import ConfigError, PageState
from gphint.guest.content import PAGE_SIZE
from gphint.guest.guest import Guest
from gphint.guest.mapped_workloads import BuildMapped, FileserverMapped
from gphint.host.hostswap import fault_service_available

S, V, P = int(PageState.STABLE), int(PageState.VOLATILE), int(PageState.POT_VOLATILE)
MODES = ["lazy", "eager"]


def _service():
    ok, why = fault_service_available()
    if not ok:
        pytest.skip("needs the discard-fault service: %s" % why)
    from gphint.faults import FaultService
    return FaultService()


@pytest.fixture(params=MODES)
def served(request):
    """(guest with a fault service, its mode): discards really happen and come back."""
    svc = _service()
    g = Guest("16M", seed=2, workload=None, file_bytes="8M", fault_service=svc,
              minor_fault=request.param)
    yield g, request.param
    g.close()
    svc.stop()


def big_file(g, npages=8):
    return g.files.paths[int(np.flatnonzero(g.files.size_bytes >= npages * PAGE_SIZE)[0])]


def file_bytes(g, path, offset, length, disk=False):
    name = g.files.path(g.files.lookup(path)) if disk else os.path.join(g.files.root, path)
    with open(name, "rb") as f:
        f.seek(offset)
        return f.read(length)


def usage(g, frames):
    g.allocator.flush_hints()
    return g.mem.usage(frames).tolist()


@pytest.mark.parametrize("mode", MODES)
def test_minor_fault_changes_no_state_only_in_lazy_mode(mode):
    with Guest("16M", seed=1, workload=None, file_bytes="8M", minor_fault=mode) as g:
        path = big_file(g)
        assert g.read(path, 0, 8 * PAGE_SIZE)            # cached, VOLATILE
        before = g.mappings.state_changes()
        m = g.mmap(path, 0, 8 * PAGE_SIZE)
        assert g.mapped_read(m, 0, 8 * PAGE_SIZE) == file_bytes(g, path, 0, 8 * PAGE_SIZE)
        assert g.mappings.stats["minor_faults"] == 8 and g.mappings.stats["major_faults"] == 0
        assert g.mappings.state_changes() - before == (0 if mode == "lazy" else 16)
        assert g.mappings.stats["changes_saved"] == (16 if mode == "lazy" else 0)
        assert usage(g, m.pte) == [V] * 8
        g.mapped_read(m, 0, 8 * PAGE_SIZE)                # entries present: no fault at all
        assert g.mappings.stats["minor_faults"] == 8
        g.munmap(m)
        assert g.mappings.state_changes() - before == (0 if mode == "lazy" else 16)
        assert g.verify() == 0


@pytest.mark.parametrize("mode", MODES)
def test_writable_munmap_is_corrected_lazily_at_writeback(mode):
    with Guest("16M", seed=1, workload=None, file_bytes="8M", minor_fault=mode) as g:
        path = big_file(g)
        want = P if g.hinter.pot_volatile_ok else S
        m = g.mmap(path, 0, 4 * PAGE_SIZE, writable=True)
        g.mapped_read(m, 0, 4 * PAGE_SIZE)               # write faults on all four pages
        g.mapped_write(m, PAGE_SIZE, PAGE_SIZE)
        frames = m.pte.copy()
        assert usage(g, frames) == [want] * 4
        g.munmap(m)
        assert usage(g, frames) == ([want] * 4 if mode == "lazy" else [V] * 4)
        assert g.mappings.lingering[frames].all() == (mode == "lazy")
        g.writeback()
        assert usage(g, frames) == [V] * 4 and not g.mappings.lingering.any()
        assert file_bytes(g, path, PAGE_SIZE, PAGE_SIZE, disk=True) == g.read(path, PAGE_SIZE, PAGE_SIZE)
        assert g.verify() == 0


def test_remapped_before_correction_saves_both_changes():
    with Guest("16M", seed=1, workload=None, file_bytes="8M", minor_fault="lazy") as g:
        path = big_file(g)
        m = g.mmap(path, 0, 4 * PAGE_SIZE, writable=True)
        g.mapped_write(m, 0, 4 * PAGE_SIZE)
        g.munmap(m)
        before = g.mappings.state_changes()
        m = g.mmap(path, 0, 4 * PAGE_SIZE, writable=True)
        g.mapped_write(m, 0, 4 * PAGE_SIZE)
        assert g.mappings.state_changes() == before        # minor write faults on P pages
        assert not g.mappings.lingering.any()
        g.munmap(m)
        assert g.verify() == 0


def test_bad_mapping_use_names_the_value():
    with Guest("16M", seed=1, workload=None, file_bytes="8M") as g:
        with pytest.raises(ConfigError, match="minor_fault"):
            Guest("16M", workload=None, file_bytes="1M", minor_fault="sometimes")
        path = big_file(g)
        m = g.mmap(path, 0, 2 * PAGE_SIZE)
        with pytest.raises(ConfigError, match="outside"):
            g.mapped_read(m, PAGE_SIZE, 2 * PAGE_SIZE)
        with pytest.raises(ConfigError, match="read-only"):
            g.mapped_write(m, 0, PAGE_SIZE)
        g.munmap(m)
        with pytest.raises(ConfigError, match="not a live mapping"):
            g.munmap(m)


def test_discarded_page_that_was_mapped_and_unmapped_comes_back_exact(served):
    g, mode = served
    path = big_file(g)
    n = 8
    m = g.mmap(path, 0, n * PAGE_SIZE)
    assert g.mapped_read(m, 0, n * PAGE_SIZE) == file_bytes(g, path, 0, n * PAGE_SIZE)
    frames = m.pte.copy()
    g.munmap(m)
    g.allocator.flush_hints()
    assert g.mem.discard(frames) == n
    assert (g.mem.content(frames) == 3).all()
    m = g.mmap(path, 0, n * PAGE_SIZE)
    assert g.mapped_read(m, 0, n * PAGE_SIZE) == file_bytes(g, path, 0, n * PAGE_SIZE)
    g.munmap(m)
    assert g.read(path, 0, n * PAGE_SIZE) == file_bytes(g, path, 0, n * PAGE_SIZE)
    assert g.verify() == 0


def test_page_dirtied_through_a_writable_mapping_is_never_discarded(served):
    g, mode = served
    if not g.hinter.pot_volatile_ok:
        pytest.skip("no host dirty tracking: mapped pages stay STABLE, the host refuses them")
    path = big_file(g)
    m = g.mmap(path, 0, 4 * PAGE_SIZE, writable=True)
    g.mapped_write(m, 0, 4 * PAGE_SIZE)
    frames = m.pte.copy()
    stored = g.mem.frames[frames].copy()
    if mode == "lazy":
        g.munmap(m)                      # stays POT_VOLATILE, the host's dirty bit set
        m = None
    g.allocator.flush_hints()
    assert usage(g, frames) == [P] * 4
    g.mem.discard(frames)                # the host finds them written: preserved, not discarded
    assert (g.mem.content(frames) != 3).all()
    assert np.array_equal(g.mem.frames[frames], stored)
    if m is not None:
        g.munmap(m)
    g.writeback()
    assert file_bytes(g, path, 0, 4 * PAGE_SIZE, disk=True) == stored.tobytes()
    assert g.verify() == 0


OPS = st.lists(st.tuples(st.sampled_from(["map", "map_rw", "unmap", "fault", "write", "discard",
                                          "read", "writeback"]),
                         st.integers(0, 15), st.integers(1, 4)), min_size=1, max_size=25)


@pytest.fixture(params=MODES)
def maybe_served(request):
    """A guest with the fault service where there is one (the pure-Python mechanism has none:
    the host then cannot discard VOLATILE pages, and the sequences run without discards)."""
    svc = _service() if fault_service_available()[0] else None
    g = Guest("16M", seed=4, workload=None, file_bytes="8M", fault_service=svc,
              minor_fault=request.param)
    yield g
    g.close()
    if svc is not None:
        svc.stop()


def test_random_map_unmap_fault_write_discard_sequences_lose_nothing(maybe_served):
    g = maybe_served
    path = big_file(g, 16)
    fid = g.files.lookup(path)

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ops=OPS)
    def check(ops):
        live = []
        for op, first, n in ops:
            n = min(n, 16 - first)
            if op in ("map", "map_rw"):
                live.append(g.mmap(path, first * PAGE_SIZE, n * PAGE_SIZE, writable=op == "map_rw"))
            elif op == "unmap" and live:
                g.munmap(live.pop(first % len(live)))
            elif op == "fault" and live:
                m = live[first % len(live)]
                got = g.mapped_read(m, 0, m.npages * PAGE_SIZE)
                assert got == g.read(path, m.first_page * PAGE_SIZE, m.npages * PAGE_SIZE)
            elif op == "write" and any(m.writable for m in live):
                m = [m for m in live if m.writable][first % sum(m.writable for m in live)]
                g.mapped_write(m, 0, m.npages * PAGE_SIZE)
            elif op == "discard" and g.fault_service is not None:
                g.allocator.flush_hints()
                frames = g.cache.page_frame[fid][first:first + n]
                frames = frames[frames >= 0]
                g.mem.discard(frames[g.mem.usage(frames) != S])
            elif op == "read":
                g.read(path, first * PAGE_SIZE, n * PAGE_SIZE)
            elif op == "writeback":
                g.writeback()
        for m in live:
            g.munmap(m)
        assert g.verify() == 0
        g.writeback()
        assert not g.mappings.lingering.any()
        assert g.verify() == 0

    check()


@pytest.mark.parametrize("workload", [FileserverMapped, BuildMapped])
def test_mapped_workloads_save_state_changes_and_stay_exact(workload):
    changes = {}
    for mode in MODES:
        with Guest("16M", seed=5, workload=None, file_bytes="24M", minor_fault=mode) as g:
            w = workload(g, seed=5)
            w.step(300)
            g.sync()
            changes[mode] = g.mappings.state_changes()
            assert g.mappings.stats["minor_faults"] > 0
            assert g.verify() == 0
            if mode == "lazy":
                saved = g.mappings.stats["changes_saved"] - g.mappings.stats["correction_changes"]
                assert saved > 0
    assert changes["lazy"] < changes["eager"]


def test_minor_faults_script_counts_both_modes(tmp_path):
    import json
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "minor_faults.py")
    out = tmp_path / "mf.json"
    r = subprocess.run([sys.executable, script, "--ops", "60", "--guest-mem", "16M", "--file-bytes",
                        "24M", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {(x["workload"], x["minor_fault"]): x for x in json.loads(out.read_text())["rows"]}
    for w in ("fileserver-mmap", "build-mmap"):
        assert rows[(w, "lazy")]["state_changes"] < rows[(w, "eager")]["state_changes"]
        assert "| %s |" % w in r.stdout
    bad = subprocess.run([sys.executable, script, "--workloads", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "nope" in bad.stderr


def test_runs_reach_the_mmap_workloads_and_record_the_minor_fault_mode():
    """`gphint run --workload fileserver-mmap,build-mmap`, lazy and eager on one seed: the same
    minor faults, the results' mappings field shows patch 7's saving, nothing lost."""
    from gphint.experiment import RunConfig, results_document, run_one
    recs = {}
    for mode in MODES:
        cfg = RunConfig(workload="fileserver-mmap,build-mmap", guests=2, guest_mem_bytes=16 << 20,
                        duration_s=60.0, ops_per_guest=150, seed=3, probe=False, cgroup=False,
                        minor_fault=mode)
        doc = results_document(cfg, [run_one(cfg, "cmma")])
        assert doc["config"]["minor_fault"] == mode
        recs[mode] = doc["results"][0]
        assert recs[mode]["integrity_errors"] == 0
        if mode == "eager":
            from gphint.report import summary
            assert "eager minor faults" in summary(doc)
    lazy, eager = recs["lazy"]["mappings"], recs["eager"]["mappings"]
    assert lazy["minor_faults"] == eager["minor_faults"] > 0
    assert lazy["changes_saved"] > 0 == eager["changes_saved"]
    assert lazy["state_changes"] < eager["state_changes"]


def test_cli_minor_fault_is_checked_and_carried():
    from gphint.cli import build_parser, config_from
    from gphint.experiment import RunConfig
    from test_cli import gphint as gphint_cli
    with pytest.raises(ConfigError, match="--minor-fault 'never'"):
        RunConfig(guest_mem_bytes=16 << 20, minor_fault="never").validate()
    cfg = RunConfig(guest_mem_bytes=16 << 20, workload="build-mmap", minor_fault="eager")
    args = build_parser().parse_args(["compare", "--strategies", "none"] + cfg.cli_args())
    back = config_from(args)
    assert (back.minor_fault, back.workload) == ("eager", "build-mmap")
    r = gphint_cli("run", "--strategy", "cmma", "--minor-fault", "never")
    assert r.returncode == 2 and "'never'" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = gphint_cli("run", "--strategy", "cmma", "--workload", "mmap")
    assert r.returncode == 2 and "'mmap'" in r.stderr and "fileserver-mmap" in r.stderr, r.stderr
