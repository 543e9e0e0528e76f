"""The real host: memory cgroups, a real swap area, O_DIRECT host swap and guest disks, the
machine's witnesses -- all against the real kernel, each skipped only where caps says the
feature is missing.  Whatever a test sets up on the machine it checks is gone afterwards."""
import json
import mmap
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import gphint
from gphint import _mechanism, caps
from gphint.host import cachemode, cgroup, swaparea, witness
from gphint.host.hostswap import fault_service_available

PAGE = mmap.PAGESIZE
MiB = 1 << 20
DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "results.md")
# page cache a witnessed file may show without anything being cached through it: the swap
# area's header that mkswap wrote, a page-table-sized rounding -- 1 MiB is 256 pages
CACHE_TOLERANCE_BYTES = 1 * MiB


def need(name):
    if not caps.has(name):
        f = caps.probe().features[name]
        pytest.skip("%s is missing here: %s" % (name, f.reason))


def need_service():
    ok, why = fault_service_available()
    if not ok:
        pytest.skip("pressure mode needs the discard-fault service: %s" % why)


def documented_host_fields():
    lines = open(DOCS).read().splitlines()
    i = lines.index("<!-- fields: host -->")
    out = []
    for line in lines[i + 3:]:
        m = re.match(r"\| `(\w+)` \|", line)
        if not m:
            break
        out.append(m.group(1))
    return out


def leftovers(*pids):
    """What a run whose processes were `pids` (the outermost first) left on the machine: a
    memory cgroup anywhere in the hierarchy, an active swap area (`swapon --show`) or a swap
    file, a temporary file or directory, named after one of them.  (Other runs on the machine
    may hold their own at the same time: names carry their owner's pid and start time.)"""
    tags = ["gphint-%d-" % p for p in pids]
    out = []
    version, parent, _ = cgroup.detect()
    root = cgroup.V1_ROOT if version == "v1" else (parent if version else None)
    if root and os.path.isdir(root):
        for d, subdirs, _ in os.walk(root):
            out += [os.path.join(d, n) for n in subdirs if n.startswith(tuple(tags))]
    tmp = tempfile.gettempdir()
    owned = re.compile(r"^gphint-[a-z]+-(%s)-" % "|".join(str(p) for p in pids))
    out += [n for n in os.listdir(tmp) if owned.match(n)]
    shown = subprocess.run(["swapon", "--show=NAME", "--noheadings"], capture_output=True, text=True)
    out += [line for line in shown.stdout.split() if re.search(r"gphint-swaparea-(%s)-" %
                                                                 "|".join(str(p) for p in pids), line)]
    return out


def gphint_run(*args, timeout=300):
    """`gphint run ...` in a child; (process, record or None)."""
    with tempfile.TemporaryDirectory(prefix="realhost-test-") as d:
        out = os.path.join(d, "r.json")
        p = subprocess.Popen([sys.executable, "-m", "gphint", "run", "--quiet", "--json", out] + list(args),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, err = p.communicate(timeout=timeout)
        rec = json.load(open(out))["results"][0] if os.path.exists(out) else None
    return p, rec, err


def gphint_compare(strategies, *args):
    """`gphint compare` of strategies, each in its cgroup with a swap area: (process, records);
    skipped where caps says the machine cannot have them."""
    need("memory_cgroup")
    need("swap_area")
    need_service()
    with tempfile.TemporaryDirectory(prefix="realhost-test-") as d:
        out = os.path.join(d, "c.json")
        p = subprocess.run([sys.executable, "-m", "gphint", "compare", "--quiet", "--strategies",
                            strategies, "--json", out] + list(args),
                           capture_output=True, text=True, timeout=900)
        return p, json.load(open(out))["results"]


def _child(code, cg):
    return subprocess.Popen([sys.executable, "-c", code], preexec_fn=cg.preexec(),
                            stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)


HOG = ("import mmap,sys\nm=mmap.mmap(-1,%d,flags=mmap.MAP_PRIVATE|mmap.MAP_ANONYMOUS)\nfor i in range(0,len(m),4096): m[i]=1\n"
       "print('ready',flush=True)\nsys.stdin.readline()\n")


# --- cgroups -----------------------------------------------------------------------------------
def test_cgroup_charges_a_member_and_goes_away():
    need("memory_cgroup")
    cg = cgroup.MemoryCgroup.create("test")
    try:
        assert cg.version in ("v1", "v2") and os.path.isdir(cg.path)
        cg.set_limit(256 * MiB)
        assert cg.limit_bytes() == 256 * MiB
        p = _child(HOG % (32 * MiB), cg)
        assert p.stdout.readline().strip() == "ready"
        assert cg.pids() == [p.pid]
        s = cg.sample()
        assert s["anon_bytes"] >= 32 * MiB and s["usage_bytes"] >= s["anon_bytes"]
        p.communicate("\n")
    finally:
        cg.kill_all()
        assert cg.remove()
    assert not os.path.exists(cg.path)


def test_cgroup_limit_holds():
    need("memory_cgroup")
    cg = cgroup.MemoryCgroup.create("limit")
    try:
        cg.set_limit(48 * MiB)
        cg.reset_peak()
        p = _child(HOG % (96 * MiB), cg)
        p.stdout.readline()   # swapped (if the machine has swap) or OOM-killed: never above
        peak = cg.max_usage_bytes()
        kills = cg.sample()["oom_kills"]
        p.kill()
        p.communicate()
        assert peak is not None and peak <= 48 * MiB, peak
        assert kills >= 1 or cg.sample()["swap_bytes"] > 0 or swaparea.active_areas()
    finally:
        cg.kill_all()
        assert cg.remove()


def test_stale_cgroup_removed_only_when_its_owner_is_dead():
    need("memory_cgroup")
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = cgroup.MemoryCgroup.create("stale", owner_pid=owner.pid)
    live = cgroup.MemoryCgroup.create("live")
    try:
        assert dead.path not in [p for p, _ in cgroup.stale_cgroups()]   # owner alive: kept
        owner.kill()
        owner.wait()
        removed, _ = cgroup.clean_stale()
        assert dead.path in removed and not os.path.exists(dead.path)
        assert os.path.isdir(live.path)
    finally:
        dead.remove()
        live.remove()


# --- the swap area ---------------------------------------------------------------------------------
def test_swap_area_is_enabled_and_removed():
    need("swap_area")
    if not swaparea.can_enable()[0]:
        pytest.skip(swaparea.can_enable()[1])
    with swaparea.SwapArea(32 * MiB) as area:
        assert any(p == area.path for p, size, _ in swaparea.active_areas())
    assert not os.path.exists(area.path)
    assert all(p != area.path for p, _, _ in swaparea.active_areas())


def test_stale_swap_area_of_a_dead_owner_is_removed():
    need("swap_area")
    if not swaparea.can_enable()[0]:
        pytest.skip(swaparea.can_enable()[1])
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    area = swaparea.SwapArea(16 * MiB, owner_pid=owner.pid)
    try:
        assert area.path not in swaparea.clean_stale()      # owner alive: left alone
        assert os.path.exists(area.path)
        owner.kill()
        owner.wait()
        assert area.path in swaparea.clean_stale()
        assert not os.path.exists(area.path)
        assert all(p != area.path for p, _, _ in swaparea.active_areas())
    finally:
        area.close()


# --- O_DIRECT ------------------------------------------------------------------------------------
def _cached(fd):
    return witness.cached_bytes(fd, caps.has("cachestat"))


def test_o_direct_read_of_a_partial_last_block(tmp_path):
    """A file whose size is not block-aligned: O_DIRECT page reads give its bytes, then zeros,
    in the compiled fill and in the pure-Python twin alike."""
    need("o_direct")
    data = np.random.default_rng(3).integers(0, 256, 3 * PAGE - 1000, dtype=np.uint8)
    path = tmp_path / "f"
    path.write_bytes(data.tobytes())
    cachemode.drop_cached([str(path)])
    fd = os.open(path, os.O_RDONLY | cachemode.O_DIRECT)
    mem = gphint.GuestMemory("1M")
    try:
        mem.frames[:4] = 0xEE
        mem.fill_from_file(np.arange(4), fd, np.arange(4) * PAGE)
        want = np.zeros(4 * PAGE, dtype=np.uint8)
        want[:data.size] = data
        assert np.array_equal(mem.frames[:4].reshape(-1), want)
        assert _cached(fd) == 0
    finally:
        os.close(fd)
        mem.close()


def test_o_direct_read_through_the_bounce_buffer(tmp_path):
    """Under UFFD_USER_MODE_ONLY (an unprivileged user) a guest fill bounces through a user-space
    buffer: with an O_DIRECT backing file (--cache none) that buffer must be page-aligned, or
    the read fails with EINVAL."""
    need("o_direct")
    data = np.random.default_rng(4).integers(0, 256, 8 * PAGE, dtype=np.uint8)
    path = tmp_path / "b"
    path.write_bytes(data.tobytes())
    fd = os.open(path, os.O_RDONLY | cachemode.O_DIRECT)
    mem = gphint.GuestMemory("1M")
    try:
        pages = np.arange(8, dtype=np.int64)
        _mechanism.mech.fill_from_file(mem.region, PAGE, pages, fd, pages * PAGE, True)
        assert np.array_equal(mem.frames[:8].reshape(-1), data)
    finally:
        os.close(fd)
        mem.close()


def test_file_store_reads_direct_under_cache_none(tmp_path):
    need("o_direct")
    path = tmp_path / "g"
    path.write_bytes(bytes(range(256)) * 40)
    cachemode.drop_cached([str(path)])
    cachemode.set_mode("none")
    try:
        st = gphint.FileStore(str(path))
        try:
            assert st.direct_io
            assert st.read(4096, 100) == (bytes(range(256)) * 40)[4096:4196]
            assert st.read(8192) == (bytes(range(256)) * 40)[8192:] + bytes(4096 - (10240 - 8192))
            assert _cached(st.fd) == 0
        finally:
            st.close()
    finally:
        cachemode.set_mode("host")


@pytest.mark.parametrize("direct", [True, False])
def test_host_swap_page_cache(compiled_only, direct):
    """O_DIRECT host swap leaves nothing in the host page cache; a buffered one keeps every
    swapped page there (which is what this test can tell apart)."""
    need_service()
    need("o_direct")
    from gphint.faults import FaultService
    from gphint.stores import HostSwap
    svc = FaultService()
    mem = gphint.GuestMemory("8M")
    swap = HostSwap("8M", direct=direct)
    try:
        want = np.random.default_rng(5).integers(0, 256, mem.frames.shape, dtype=np.uint8)
        mem.frames[:] = want
        svc.register(mem)
        pages = np.arange(mem.npages)
        assert svc.swap_out(mem, pages, swap) == mem.npages
        assert swap.direct_io == direct
        cached = _cached(swap.fd)
        if direct:
            assert cached <= CACHE_TOLERANCE_BYTES, cached
        else:
            assert cached >= 0.9 * mem.size_bytes, cached
        assert np.array_equal(mem.frames, want)           # swap-in by the fault thread
        if direct:
            assert _cached(swap.fd) <= CACHE_TOLERANCE_BYTES
    finally:
        svc.unregister(mem)
        svc.stop()
        mem.close()
        swap.close()


# --- whole runs -------------------------------------------------------------------------------------
RUN = ["--guests", "2", "--guest-mem", "32M", "--host-mem", "24M", "--ops", "600", "--seed", "4"]


def _check_host_fields(rec):
    h = rec["host"]
    missing = set(documented_host_fields()) - set(h)
    assert not missing, missing


@pytest.mark.parametrize("strategy", ["cmma", "none"])
def test_pressure_run_in_a_cgroup_keeps_the_host_cache_empty(strategy):
    need("memory_cgroup")
    need("o_direct")
    need_service()
    p, rec, err = gphint_run("--strategy", strategy, "--cache", "none", *RUN)
    assert p.returncode == 0, err
    assert leftovers(p.pid) == []
    _check_host_fields(rec)
    h = rec["host"]
    assert rec["integrity_errors"] == 0
    assert h["cgroup"] in ("v1", "v2")
    assert h["cgroup_slack_bytes"] == 0                  # a swap area: the kernel's last resort
    assert h["cgroup_limit_bytes"] == rec["budget_bytes"] + h["baseline_bytes"]
    assert h["baseline_bytes"] >= h["baseline_start_bytes"] > 0
    assert 0 < h["cgroup_peak_bytes"] <= h["cgroup_limit_bytes"]
    assert h["cgroup_kernel_max_usage_bytes"] <= h["cgroup_limit_bytes"]
    assert h["host_swap_direct_io"] is True
    assert rec["host_swap_out_bytes"] > 0 or strategy == "cmma"
    assert h["swap_file_cached_peak_bytes"] <= CACHE_TOLERANCE_BYTES, h
    assert h["backing_cached_peak_bytes"] <= CACHE_TOLERANCE_BYTES + 2 * 32 * MiB // 4, h
    assert h["footprint_mib_s"] > 0 and h["cgroup_avg_bytes"] <= h["cgroup_peak_bytes"]
    assert h["mem_available_min_bytes"] <= h["mem_available_start_bytes"]


# the demo's shape (4 guests, a budget of one guest's memory, the mixed workload), scaled down
DEMO_SHAPE = ["--guests", "4", "--guest-mem", "48M", "--host-mem", "48M", "--ops", "1500",
              "--duration", "120", "--seed", "1"]


def test_gphint_reclaims_before_the_kernel_does():
    """With the run's own memory in the baseline (at its steady state, followed up by the
    witness), the cgroup's limit squeezes only the guests: a gphint strategy's own loop does
    the reclaiming and the kernel, the last resort, swaps far less for it than for the kernel
    peer, which leaves everything to the kernel.  Nothing is lost either way."""
    p, results = gphint_compare("cmma,none,kernel", *DEMO_SHAPE)
    recs = {r["strategy_name"]: r for r in results}
    assert p.returncode == 0, p.stderr
    assert all(r["integrity_errors"] == 0 for r in recs.values())
    kswap = {n: r["host"]["kernel_swap_out_bytes"] for n, r in recs.items()}
    assert kswap["kernel"] >= 8 * MiB, kswap                 # the budget really binds
    assert kswap["cmma"] <= kswap["kernel"] / 3, kswap
    assert kswap["none"] <= kswap["kernel"] / 3, kswap       # gphint's FIFO swap acts first too
    for r in recs.values():
        h = r["host"]
        assert h["cgroup_limit_bytes"] == 48 * MiB + h["baseline_bytes"]
        assert h["cgroup_peak_bytes"] <= h["cgroup_limit_bytes"]


def test_cache_host_keeps_a_second_copy():
    """The witness can tell the modes apart: through the host page cache the backing files'
    pages the guests read are cached on the host as well."""
    need("memory_cgroup")
    need_service()
    p, rec, err = gphint_run("--strategy", "cmma", "--cache", "host", "--workload", "fileserver", *RUN)
    assert p.returncode == 0, err
    assert rec["integrity_errors"] == 0
    assert rec["host"]["backing_cached_peak_bytes"] > 4 * MiB, rec["host"]


def test_kernel_peer_really_swaps():
    need("memory_cgroup")
    need("swap_area")
    before = swaparea.lasting_areas()      # not other runs' areas: they come and go
    p, rec, err = gphint_run("--strategy", "kernel", *RUN)
    assert p.returncode == 0, err
    _check_host_fields(rec)
    h = rec["host"]
    assert rec["integrity_errors"] == 0
    assert rec["host_swap_out_bytes"] == 0 and rec["discarded_bytes"] == 0   # gphint took nothing
    assert h["cgroup_swap_peak_bytes"] > 0, h
    assert h["kernel_swap_out_bytes"] > 0, h
    assert h["cgroup_peak_bytes"] <= h["cgroup_limit_bytes"]
    assert leftovers(p.pid) == []
    assert swaparea.lasting_areas() == before


def test_lazily_freed_pages_are_what_the_kernel_takes_under_its_budget():
    """discard=free means something only under kernel pressure: in a cgroup at its limit the
    kernel's reclaim drops clean lazily freed pages without I/O (mm/vmscan.c), so some of the
    pages cmma advised with MADV_FREE are found reclaimed when the guest takes them back
    (lazy_reclaimed_pages), the kernel swaps far less than for the peer that frees nothing
    (`kernel`), and every byte still reads back right."""
    # fixed work, not a duration: under a loaded machine a short run may never meet the limit
    p, (free, kernel) = gphint_compare("cmma:discard=free,kernel", "--guests", "2", "--guest-mem", "64M",
                                       "--host-mem", "48M", "--ops", "2000", "--duration", "300",
                                       "--no-probe")
    assert p.returncode == 0, p.stderr
    assert free["integrity_errors"] == 0 and kernel["integrity_errors"] == 0
    h = free["host"]
    assert h["cgroup"] in ("v1", "v2") and h["cgroup_peak_bytes"] <= h["cgroup_limit_bytes"]
    assert free["lazy_freed_pages"] > 0 and free["lazy_reclaimed_pages"] > 0, free
    assert h["kernel_swap_out_bytes"] < kernel["host"]["kernel_swap_out_bytes"], (h, kernel["host"])


def test_kernel_peer_needs_a_budget():
    p = subprocess.run([sys.executable, "-m", "gphint", "run", "--strategy", "kernel", "--guests", "1",
                        "--guest-mem", "16M", "--duration", "1"], capture_output=True, text=True)
    assert p.returncode == 2 and "--host-mem" in p.stderr


def test_failed_run_leaves_nothing(tmp_path):
    need("memory_cgroup")
    empty = tmp_path / "empty"
    empty.mkdir()             # passes the up-front check, fails in the run: no files to read
    p, rec, err = gphint_run("--strategy", "kernel", "--files", str(empty), *RUN)
    assert p.returncode != 0 and rec is None
    assert "no readable regular files" in err
    assert leftovers(p.pid) == []


def _contained_cgroup(owner_pid, timeout_s=60):
    """The cgroup of owner_pid's contained run, once its member runs and its swap area is on."""
    end = time.monotonic() + timeout_s
    version, parent, _ = cgroup.detect()
    while time.monotonic() < end:
        names = [n for n in os.listdir(parent) if n.startswith("gphint-%d-" % owner_pid)]
        cg = cgroup.MemoryCgroup(version, os.path.join(parent, names[0])) if names else None
        if cg is not None and cg.pids() and \
                any("gphint-swaparea-%d-" % owner_pid in a for a, _, _ in swaparea.active_areas()):
            return cg
        time.sleep(0.1)
    pytest.fail("the run never got its cgroup and swap area")


@pytest.mark.parametrize("victim", ["parent", "child"])
def test_kill_9_leaves_nothing(victim):
    """kill -9 of the run the user started (its reaper undoes the rest) or of the child inside
    the cgroup (the parent sees it die, names the signal, and cleans up): no cgroup, no swap
    area, no temporary file is left, and no member of the cgroup survives."""
    need("memory_cgroup")
    need("swap_area")
    p = subprocess.Popen([sys.executable, "-m", "gphint", "run", "--quiet", "--strategy", "kernel",
                          "--guests", "2", "--guest-mem", "32M", "--host-mem", "24M", "--duration", "60"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        cg = _contained_cgroup(p.pid)
        members = cg.pids()
        time.sleep(1.0)
        os.kill(p.pid if victim == "parent" else members[0], signal.SIGKILL)
        _, err = p.communicate(timeout=120)
        if victim == "child":
            assert p.returncode == 1 and "killed by signal 9" in err, err
        end = time.monotonic() + 60
        while leftovers(p.pid, *members) and time.monotonic() < end:
            time.sleep(0.2)
        assert leftovers(p.pid, *members) == []
        for pid in members:
            assert not os.path.exists("/proc/%d" % pid) or \
                open("/proc/%d/stat" % pid).read().split()[2] == "Z"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


KERNEL_SWAPPED_CHILD = """
import sys, numpy as np, gphint
from gphint.faults import FaultService
from gphint.stores import HostSwap
svc = FaultService(); mem = gphint.GuestMemory("48M"); swap = HostSwap("48M")
svc.register(mem)
print("ready", flush=True); sys.stdin.readline()
chunk = 256                                  # regenerate the expected bytes: no second copy
for first in range(0, mem.npages, chunk):
    mem.frames[first:first + chunk] = np.random.default_rng(first).integers(0, 256, (chunk, 4096), dtype=np.uint8)
out = mem.npages - int(mem.residency().sum())
n = svc.swap_out(mem, np.arange(mem.npages), swap)
bad = 0
for first in range(0, mem.npages, chunk):
    want = np.random.default_rng(first).integers(0, 256, (chunk, 4096), dtype=np.uint8)
    bad += int((mem.frames[first:first + chunk] != want).any(axis=1).sum())
print(out, n, bad, flush=True)
svc.unregister(mem); svc.stop()
"""


def test_host_swap_out_of_pages_the_kernel_swapped(compiled_only):
    """Under a cgroup the kernel swaps guest pages too; one it swapped before gphint's own
    swap-out is not resident (mincore) but not a hole either: its bytes must reach gphint's
    host swap, not zeros (pagemap's swap bit tells them apart)."""
    need_service()
    need("memory_cgroup")
    need("swap_area")
    area = swaparea.SwapArea(128 * MiB) if not swaparea.active_areas() else None
    cg = cgroup.MemoryCgroup.create("kswap")
    try:
        p = _child(KERNEL_SWAPPED_CHILD, cg)
        assert p.stdout.readline().strip() == "ready"
        cg.set_limit(cg.usage_bytes() + 16 * MiB)    # 48 MiB of guest memory in 16 MiB
        out, err = p.communicate("\n", timeout=300)
        kernel_swapped, swapped, bad = map(int, out.split())
        assert kernel_swapped > 0 and swapped == 48 * MiB // PAGE
        assert bad == 0
    finally:
        cg.kill_all()
        cg.remove()
        if area is not None:
            area.close()


def test_committed_demo_has_the_machine_view_with_the_kernel_peer():
    """README's host table is rendered from bench/results/demo.json by scripts/bench_all (that
    every block equals its rendering is tests/test_scripts.py's check): the committed run must
    hold the kernel peer and the machine-level witnesses for every strategy, and lose nothing."""
    path = os.path.join(os.path.dirname(__file__), "..", "bench", "results", "demo.json")
    doc = json.load(open(path))
    assert {r["strategy_name"] for r in doc["results"]} >= {"none", "cmma", "kernel"}
    for r in doc["results"]:
        assert r["integrity_errors"] == 0 and "error" not in r, r.get("error")
        assert r["host"]["cgroup"] in ("v1", "v2") and r["host"]["cgroup_peak_bytes"] > 0


def test_a_run_gives_the_cache_mode_back(tmp_path):
    """--cache is process-wide while a run lasts; afterwards files open as before."""
    from gphint.experiment import RunConfig, run_one
    before = cachemode.mode()
    run_one(RunConfig(guests=1, guest_mem_bytes=16 * MiB, duration_s=0.5, probe=False, cache="none"), "none")
    assert cachemode.mode() == before
    d = tmp_path / "dir"
    d.mkdir()
    with pytest.raises(gphint.ConfigError, match="not a regular file"):
        cachemode.set_mode("none")
        try:
            gphint.FileStore(str(d))     # O_DIRECT refused (EINVAL): the usual check still speaks
        finally:
            cachemode.set_mode(before)


@pytest.mark.parametrize("direct", [True, False])
def test_host_swap_out_into_fragmented_slots(compiled_only, direct):
    """Swap-out writes each run of consecutive slots at once: with every other slot taken the
    runs are single pages, and the bytes still come back exact, from either kind of file."""
    need_service()
    from gphint.faults import FaultService
    from gphint.stores import HostSwap
    svc = FaultService()
    mem = gphint.GuestMemory("4M")
    swap = HostSwap("16M", direct=direct)
    try:
        taken = swap.alloc(swap.nslots)
        swap.free(taken[::2])                 # free slots: 0, 2, 4, ... -- no two adjacent
        want = np.random.default_rng(11).integers(0, 256, mem.frames.shape, dtype=np.uint8)
        mem.frames[:] = want
        svc.register(mem)
        pages = np.arange(0, mem.npages, 3)   # and the pages themselves not contiguous either
        assert svc.swap_out(mem, pages, swap) == pages.size
        assert not mem.residency()[pages].any()
        assert np.array_equal(mem.frames, want)
    finally:
        svc.unregister(mem)
        svc.stop()
        mem.close()
        swap.close()


REAL_HOST_FEATURES = ("memory_cgroup", "swap_area", "o_direct", "cachestat", "psi")


def _features_as(uid):
    """realcaps' features probed by a forked child that became `uid` (it keeps this process's
    imports, so no installed files need to be readable to that user)."""
    from gphint.caps import Feature
    from gphint.host import realcaps
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            tempfile.tempdir = None
            os.environ["TMPDIR"] = "/tmp"
            out = {n: [f.available, f.detail, f.reason, f.remedy] for n, f in realcaps.features(Feature).items()}
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return json.loads(text)


def test_caps_reports_the_real_host_to_root_and_to_nobody():
    """Every feature the real host needs is reported, to root and to an unprivileged user:
    what is there with its detail, what is missing with its reason and remedy; what does not
    depend on the user (cachestat, PSI) is reported the same to both."""
    if os.geteuid() != 0:
        pytest.skip("switching to an unprivileged user needs root")
    root = {n: [f.available, f.detail, f.reason, f.remedy] for n, f in caps.probe().features.items()}
    nobody = _features_as(65534)
    for who in (root, nobody):
        for name in REAL_HOST_FEATURES:
            available, detail, reason, remedy = who[name]
            assert (available and detail) or (not available and reason and remedy), (name, who[name])
    assert not nobody["memory_cgroup"][0] and "root" in nobody["memory_cgroup"][2]
    assert nobody["swap_area"][0] == bool(swaparea.lasting_areas())
    for name in ("cachestat", "psi"):
        assert nobody[name][0] == root[name][0], (name, nobody[name], root[name])
