"""The batching cycle (gphint.batching): fill -> submit -> drain, a capacity, a final flush -- and
the host's side of it, whose capacity is the spec key host_batch."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gphint import ConfigError, GuestMemory, PageState
from gphint.batching import BATCH, Cycle, run
from gphint.host import Host, parse_strategy
from gphint.host.hostswap import fault_service_available
from gphint.host.spec import BALLOON_ARRAY_PFNS, HOST_BATCH, STRATEGY_KEYS


@settings(max_examples=60, deadline=None)
@given(fills=st.lists(st.integers(0, 70), max_size=8), capacity=st.integers(1, 40))
def test_a_cycle_submits_whole_batches_while_filling_and_the_rest_at_the_flush(fills, capacity):
    seen = []
    cycle = Cycle(capacity, lambda batch: seen.append(batch.copy()) or batch.size)
    items = np.arange(sum(fills))
    lo = 0
    for n in fills:
        cycle.fill(items[lo:lo + n])
        lo += n
        # while filling: only full batches, and fewer than `capacity` items left waiting
        assert all(b.size == capacity for b in seen)
        assert lo - sum(b.size for b in seen) < capacity
    assert cycle.flush() == items.size
    total = items.size
    assert [b.size for b in seen] == [capacity] * (total // capacity) + ([total % capacity] if total % capacity else [])
    assert np.array_equal(np.concatenate(seen) if seen else items, items)     # in order, each once
    assert cycle.submissions == len(seen)


def test_the_drain_is_what_the_submissions_return():
    assert run(np.arange(10), 4, lambda b: b.size - 1) == 3 + 3 + 1
    assert run(np.arange(0), 4, lambda b: 1 / 0) == 0          # nothing filled: nothing submitted


@pytest.mark.parametrize("bad", [0, -1, 2.5, "4", True])
def test_a_capacity_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError, match="capacity"):
        Cycle(bad, len)


# --- host_batch: the host cycle's capacity, apart from the guest's batch -----------------------------
@pytest.mark.parametrize("name", ["cmma", "unused", "reporting", "balloon", "none"])
def test_every_discarding_strategy_takes_host_batch(name):
    spec = parse_strategy("%s:host_batch=4096" % name)
    assert spec.host_batch == 4096 and spec.batch == STRATEGY_KEYS[name]["batch"]
    assert str(spec) == "%s:host_batch=4096" % name
    assert spec.to_dict()["params"]["host_batch"] == 4096          # recorded in the results
    assert parse_strategy(str(spec)).params == spec.params


@pytest.mark.parametrize("name", ["cmma", "unused"])
def test_state_reading_strategies_submit_host_batch_pages_apart_from_batch(name):
    assert parse_strategy(name).host_batch == HOST_BATCH and parse_strategy(name).batch == BATCH
    spec = parse_strategy("%s:batch=4096" % name)
    assert spec.host_batch == HOST_BATCH and str(spec) == "%s:batch=4096" % name
    spec = parse_strategy("%s:batch=4096,host_batch=32" % name)
    assert (spec.batch, spec.host_batch) == (4096, 32) and str(spec) == "%s:batch=4096,host_batch=32" % name
    assert parse_strategy(str(spec)).params == spec.params
    assert parse_strategy("%s:host_batch=%d" % (name, HOST_BATCH)).params == parse_strategy(name).params


def test_none_swaps_out_batch_pages_per_submission_unless_given():
    assert parse_strategy("none").host_batch == STRATEGY_KEYS["none"]["batch"]
    spec = parse_strategy("none:batch=4096")
    assert spec.host_batch == 4096 and str(spec) == "none:batch=4096"
    spec = parse_strategy("none:batch=4096,host_batch=32")
    assert (spec.batch, spec.host_batch) == (4096, 32) and str(spec) == "none:batch=4096,host_batch=32"
    assert parse_strategy(str(spec)).params == spec.params


@pytest.mark.parametrize("text, host_batch", [
    ("balloon", BALLOON_ARRAY_PFNS), ("balloon:batch=4096", BALLOON_ARRAY_PFNS),
    ("reporting", 32 << 10), ("reporting:batch=4096", 32 << 10),
    ("reporting:order=5,capacity=8", 8 << 10), ("reporting:capacity=1024", 1 << 20)])
def test_a_peer_submits_one_request_of_its_device(text, host_batch):
    """The balloon's inflate request (256 page numbers) and the largest free page report
    (capacity blocks of 4 MiB), whatever the guest's batch: the peers' guests keep no hint buffer."""
    spec = parse_strategy(text)
    assert spec.host_batch == host_batch
    assert "host_batch" not in str(spec) and parse_strategy(str(spec)).params == spec.params
    given = parse_strategy("%s%shost_batch=32" % (text, "," if ":" in text else ":"))
    assert given.host_batch == 32 and "host_batch=32" in str(given)
    assert parse_strategy(str(given)).params == given.params


def test_a_report_is_one_discard_submission():
    """A reporting pass over a guest whose memory is all free: each report of `capacity` blocks
    reaches the kernel as one discard call, and every reported page is gone from the host."""
    import types
    from gphint.guest.allocator import BuddyAllocator
    with GuestMemory("32M") as mem:
        mem.set_state(slice(None), PageState.STABLE)
        mem.frames[:] = 1
        guest = types.SimpleNamespace(mem=mem, allocator=BuddyAllocator(mem, hinting=False),
                                      reclaim=None, name="reporting")
        host = Host([guest], None, "reporting:delay=0,capacity=2")
        calls0 = mem.stats["discard_calls"]
        assert host.slots[0].reporter.poll(1e12) > 0
        assert host.strategy.reports > 0
        assert mem.stats["discard_calls"] - calls0 == host.strategy.reports
        assert not mem.residency()[np.flatnonzero(guest.allocator.reported_mask())].any()


@pytest.mark.parametrize("text, words", [("cmma:host_batch=0", ["cmma:host_batch", "'0'", "range"]),
                                         ("unused:host_batch=x", ["unused:host_batch", "'x'", "integer"]),
                                         ("reporting:host_batch=2.5", ["host_batch", "'2.5'", "integer"]),
                                         ("kernel:host_batch=8", ["'host_batch'", "kernel"])])
def test_bad_host_batch_is_one_line_naming_the_value(text, words):
    with pytest.raises(ConfigError) as e:
        parse_strategy(text)
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("host_batch", [1, 7, 64, 4096])
def test_the_host_submits_host_batch_pages_per_call(host_batch):
    """Proactive unused on bare memory: contiguous UNUSED pages, one madvise per submission."""
    mem = GuestMemory("1M")
    try:
        mem.frames[:] = 1                                   # resident, so the scan sees them
        pages = np.arange(200, dtype=np.int64)
        mem.set_state(pages, PageState.UNUSED)
        host = Host([mem], None, "unused:host_batch=%d,submit=coalesce" % host_batch)
        assert host.step() == pages.size
        assert mem.stats["discard_calls"] == -(-pages.size // host_batch)
        assert (mem.content(pages) == 3).all() and not mem.residency()[pages].any()
        host.stop()
    finally:
        mem.close()


@pytest.mark.skipif(not fault_service_available()[0], reason="needs the discard-fault service: %s"
                    % fault_service_available()[1])
def test_the_shrink_script_measures_fewer_calls_with_a_larger_host_batch():
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "shrink_host_batch.py")
    r = subprocess.run([sys.executable, script, "--guest-mem", "16M", "--budget", "4M", "--repeat", "1",
                        "cmma:host_batch=32", "cmma:host_batch=1024"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    rows = {line[:32].strip(): line.split()[-4:] for line in r.stdout.splitlines()[1:]}
    calls = {k: int(v[2]) for k, v in rows.items()}
    assert calls["cmma:host_batch=1024"] < calls["cmma:host_batch=32"]
    assert float(rows["cmma:host_batch=32"][3]) == float(rows["cmma:host_batch=1024"][3]) > 0   # same MiB
    assert any(k.startswith("one madvise") for k in rows)
