"""The two ways of holding a page (docs/state-protocol.md): hold bits and the hashed lock.

The interleavings themselves run on both in test_state_protocol.py and test_stress.py; here:
choosing the locking (API, CLI, recorded config), and that a page whose hashed lock is held is
never discarded while a host and the fault thread work around it -- checked byte for byte."""
import threading
import time

import numpy as np
import pytest

import gphint
from gphint import PageState
from gphint.errors import ConfigError, Unsupported
from helpers import PAGE, pattern
from test_cli import gphint as gphint_cli

NPAGES = 64


def test_an_unknown_locking_is_refused_naming_it():
    from gphint.faults import FaultService
    with pytest.raises(ConfigError, match="'spin'"):
        FaultService(locking="spin")


def test_the_pure_python_twin_refuses_the_service_whatever_the_locking(monkeypatch):
    """No fault thread there, so nothing to lock: the value is still checked, then the service
    as a whole is refused (it needs the C thread)."""
    from gphint import faults
    monkeypatch.setattr(faults, "COMPILED", False)
    with pytest.raises(ConfigError, match="'spin'"):
        faults.FaultService(locking="spin")
    with pytest.raises(Unsupported):
        faults.FaultService(locking="hashed")


def test_cli_bad_locking_is_one_line_and_exit_2():
    r = gphint_cli("run", "--strategy", "cmma", "--locking", "spin")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "'spin'" in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_runconfig_refuses_and_carries_the_locking():
    from gphint.cli import build_parser, config_from
    from gphint.experiment import RunConfig
    with pytest.raises(ConfigError, match="--locking 'spin'"):
        RunConfig(guest_mem_bytes=16 << 20, locking="spin").validate()
    cfg = RunConfig(guest_mem_bytes=16 << 20, locking="hashed")
    args = build_parser().parse_args(["compare", "--strategies", "none"] + cfg.cli_args())
    assert config_from(args).locking == "hashed"
    assert RunConfig.from_dict(cfg.to_dict()).locking == "hashed"


@pytest.mark.parametrize("locking", ["holdbits", "hashed"])
def test_a_run_records_its_locking_and_loses_nothing(compiled_only, locking):
    from gphint.experiment import RunConfig, results_document, run_one
    cfg = RunConfig(workload="fileserver,database", guests=2, guest_mem_bytes=16 << 20,
                    host_mem_bytes=20 << 20, duration_s=30.0, ops_per_guest=120, seed=5,
                    probe=False, cgroup=False, locking=locking)
    rec = run_one(cfg, "cmma")
    doc = results_document(cfg, [rec])
    assert doc["config"]["locking"] == locking
    assert rec["integrity_errors"] == 0 and rec["ops"] > 0


@pytest.fixture
def hashed(compiled_only, tmp_path):
    from gphint.faults import FaultService, FileStore
    data = pattern(NPAGES, seed=41)
    path = tmp_path / "f"
    data.tofile(path)
    store = FileStore(path)
    svc = FaultService(window="16K", locking="hashed")
    mem = gphint.GuestMemory(NPAGES * PAGE)
    svc.register(mem)
    mem.frames[:NPAGES] = data
    mem.set_backing(np.arange(NPAGES), store, np.arange(NPAGES) * PAGE)
    mem.set_state(np.arange(NPAGES), PageState.VOLATILE)
    yield svc, mem, data
    svc.stop()
    mem.close()
    store.close()


def test_a_page_whose_lock_is_held_is_skipped_by_the_host(hashed):
    """The host only tries a page's lock: held -> skipped (it never waits for the holder), and
    the page stays Vr with its bytes; the page beside it is discarded and reloaded."""
    from gphint import _mechanism
    svc, mem, data = hashed
    holder = threading.Thread(target=_mechanism.mech.page_lock_hold, args=(mem.states, 5, 0.3))
    holder.start()
    time.sleep(0.05)
    assert svc.is_held(mem, 5) and mem.states[5] == int(PageState.VOLATILE)   # no bit: the lock
    t0 = time.monotonic()
    assert svc.discard(mem, [5, 9]) == 1
    assert time.monotonic() - t0 < 0.2                      # did not wait out the holder
    assert mem.states[5] == int(PageState.VOLATILE) and mem.residency()[5]
    holder.join()
    assert np.array_equal(mem.frames[5], data[5]) and np.array_equal(mem.frames[9], data[9])
    assert svc.discard(mem, [5]) == 1                       # released: now it may go


def test_held_pages_are_never_discarded_under_a_concurrent_host_and_fault_thread(hashed):
    """A holder takes random pages' locks (a C sleep, GIL released) while a host thread discards
    every page it can and two readers fault pages back (fault-around included).  While the lock
    is held the page is never discarded (the byte never turns z), and nobody changes the byte of
    a page no bit holds (a fault-around neighbour's SERVING, taken under the lock, is released
    without it).  Then every page byte for byte."""
    from gphint import _mechanism
    svc, mem, data = hashed
    svc.set_race_delay(200_000)   # every host / fault-thread hold lasts 0.2 ms longer
    deadline = time.monotonic() + 2.0
    errors, seen = [], {"holds": 0, "resident_holds": 0, "discarded": 0, "reads": 0}

    def host():
        while time.monotonic() < deadline:
            seen["discarded"] += svc.discard(mem, np.arange(NPAGES))

    def reader(seed):
        rng = np.random.default_rng(seed)
        while time.monotonic() < deadline:
            p = int(rng.integers(NPAGES))
            if not np.array_equal(mem.frames[p], data[p]):
                errors.append("page %d read wrong bytes" % p)
            seen["reads"] += 1

    threads = [threading.Thread(target=host)] + [threading.Thread(target=reader, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    rng = np.random.default_rng(3)
    while time.monotonic() < deadline:
        p = int(rng.integers(NPAGES))
        first, last = _mechanism.mech.page_lock_hold(mem.states, p, 0.005)
        seen["holds"] += 1
        seen["resident_holds"] += (first & 0x03) == 0
        if (last & 0x03) == 0x03 and (first & 0x03) != 0x03:
            errors.append("page %d discarded under its lock (%#x -> %#x)" % (p, first, last))
        if not first & 0xf0 and first != last:   # a bit holder (fault-around) ends without it
            errors.append("page %d changed from %#x to %#x under its lock" % (p, first, last))
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert errors == [], errors[:5]
    assert seen["resident_holds"] > 0 and seen["discarded"] > 0 and seen["reads"] > 0, seen
    assert all(np.array_equal(mem.frames[p], data[p]) for p in range(NPAGES))
    st = svc.stats(mem)
    assert st["lost_pages"] == 0 and st["file_reloads"] > 0, st
    svc.check()
