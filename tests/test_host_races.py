"""The Host's own thread against guest threads that do not take host.lock: the state protocol
must make every lost race a skipped page -- never a dead host thread, never a lost byte -- and
a host thread that dies all the same must be reported, not leave the budget silently unenforced."""
import threading
import time

import pytest

import gphint
from gphint.faults import FaultService, HostSwap
from gphint.host import Host, HostThreadDied

from helpers import PAGE, needs_service
from test_stress import GuestModel, served_memory, verify_nothing_lost



def run_unlocked(tmp_path, strategy, budget_pages, seconds, race_delay_ns, npages=2048):
    """Two guest threads (read misses, writes, frees, writable mappings) and a started Host,
    the guests never taking host.lock.  Returns (host stats, fault service stats)."""
    with served_memory(tmp_path, npages, 7, race_delay_ns, name="g0") as (data, mem, svc, fd, swap):
        budget = None if budget_pages is None else budget_pages * PAGE
        host = Host([mem], budget, strategy, fault_service=svc, swap=swap, interval_s=0.0005,
                    headroom=0.1)
        try:
            deadline = time.monotonic() + seconds
            half = npages // 2
            guests = [GuestModel(mem, svc, fd, data, 0, half, 11, deadline),
                      GuestModel(mem, svc, fd, data, half, npages, 12, deadline)]
            host.start()
            for g in guests:
                g.start()
            for g in guests:
                g.join(seconds + 60)
            assert not any(g.is_alive() for g in guests), "a guest thread hung"
            alive = host._thread is not None and host._thread.is_alive()
            error = host.error
            host.stop()                       # re-raises what the host thread died of
            assert alive and error is None
            assert [g.error for g in guests if g.error] == []
            st = verify_nothing_lost(guests, svc, mem)
            return host.stats(), st
        finally:
            host._stop.set()


@needs_service
@pytest.mark.parametrize("race_delay_ns", [0, 100_000], ids=["natural", "widened-windows"])
@pytest.mark.parametrize("strategy,budget_pages", [("cmma:batch=32", 1024), ("unused:scan=0.001", None),
                                                   ("cmma:scan=0.001", None)],
                         ids=["cmma-budget", "unused-proactive", "cmma-proactive"])
def test_guest_threads_without_the_host_lock_lose_races_not_the_host(tmp_path, strategy, budget_pages,
                                                                     race_delay_ns):
    hs, st = run_unlocked(tmp_path, strategy, budget_pages, 2.5, race_delay_ns)
    print("host: steps %d, discarded %s, swapped %s, skipped %s"
          % (hs["steps"], hs["discarded_pages"], hs["host_swap_out_pages"], hs["skipped_pages"]))
    assert hs["steps"] > 10
    assert sum(hs["discarded_pages"].values()) > 0
    if budget_pages is not None:
        assert sum(hs["host_swap_out_pages"].values()) > 0 or hs["discarded_pages"].get("VOLATILE", 0)


@needs_service
def test_a_host_thread_that_dies_is_reported_by_the_next_call_into_the_host(tmp_path):
    """The host swap file closed under a running host: its next swap-out fails and the host
    thread stops.  The runner's next call into the host says so, naming the cause."""
    svc = FaultService()
    swap = HostSwap("4M")
    mem = gphint.GuestMemory("4M", name="g0")
    try:
        svc.register(mem)
        host = Host([mem], "2M", "none", fault_service=svc, swap=swap, interval_s=0.005,
                    headroom=0.0)
        host.start()
        swap.close()
        mem.frames[:] = 5                             # over budget: the host must swap
        deadline = time.monotonic() + 10
        while host._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not host._thread.is_alive()
        with pytest.raises(HostThreadDied, match="budget is no longer enforced") as e:
            host.over_budget()
        assert e.value.__cause__ is not None
        host.over_budget()                            # reported once; stop() does not repeat it
        host.stop()
        assert host.reported_error is e.value.__cause__
    finally:
        svc.unregister(mem, materialize=False)
        svc.stop()
        mem.close()


@needs_service
def test_guests_stepping_their_workloads_in_threads_without_the_lock():
    """The report as a user meets it: two Guests run their workloads in their own threads, a
    started cmma host keeps them under a budget, nobody takes host.lock."""
    from gphint.guest.guest import Guest
    svc = FaultService()
    guests = [Guest("16M", seed=i + 1, workload=w, file_bytes="24M", fault_service=svc, name="g%d" % i)
              for i, w in enumerate(["fileserver", "build"])]
    host = Host(guests, "12M", "cmma", interval_s=0.002)
    errors = []

    def run(g, end):
        try:
            while time.monotonic() < end:
                g.step(32)
        except Exception as e:     # reported below, never swallowed
            errors.append(e)

    try:
        end = time.monotonic() + 3.0
        threads = [threading.Thread(target=run, args=(g, end), daemon=True) for g in guests]
        host.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert host._thread.is_alive() and host.error is None, host.error
        host.stop()
        assert errors == []
        assert [g.verify() for g in guests] == [0, 0]
        s = host.stats()
        assert sum(s["discarded_pages"].values()) > 0
    finally:
        for g in guests:
            g.close()
        host.close()
        svc.stop()
