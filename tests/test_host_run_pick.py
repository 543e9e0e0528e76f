"""The host's whole-run pick and finish (ext/hostops.c pick_run / finish_run: the state bytes of a
run claimed and released 8 per 64-bit CAS where they are one pickable value, page by page
elsewhere) keep every guarantee of the per-page protocol (docs/state-protocol.md):

- a page held, or changed since the caller chose it, is skipped -- whatever its 7 neighbours
  in the same word are;
- a page the fault thread served while the host held it (FILLED) stays resident;
- a concurrent guest write is never lost: guest threads flip states and write inside the runs
  the host is discarding whole, and every page written reads back byte for byte.

The pure-Python reading of the U/V discard (gphint._fallback.host_discard_uv) is what the C
must agree with when nobody races it."""
import threading
import time
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gphint
from gphint import PageState, _fallback
from gphint.faults import FaultService, FileStore
from gphint.states import pair_name
from helpers import EXAMPLES, PAGE, pattern

BUSY, FILLED, SERVING = 0x10, 0x20, 0x40
SR, SZ, UR, UF, UZ, VR, VF, VZ = 0x00, 0x03, 0x04, 0x05, 0x07, 0x0C, 0x0D, 0x0F


@pytest.fixture
def served(compiled_only, new_mem):
    svc = FaultService(window="4K")
    mems = []

    def make(npages):
        mem = new_mem(npages * PAGE)
        svc.register(mem)
        mems.append(mem)
        return mem
    yield types.SimpleNamespace(svc=svc, make=make, cache={})
    for m in mems:
        m._states[:] &= ~np.uint8(BUSY | FILLED | SERVING)   # holds a test made by hand
        svc.unregister(m, materialize=False)
    svc.stop()


def _word_start(mem):
    """First page whose state byte starts an aligned 64-bit word (the table is an allocation:
    aligned in practice, but the test must not assume it)."""
    return (-mem._states.ctypes.data) % 8


def test_a_held_or_changed_byte_is_skipped_and_its_word_neighbours_are_taken(served):
    svc, make = served.svc, served.make
    mem = make(64)
    data = pattern(64, seed=5)
    mem.frames[:] = data
    mem.set_state(np.arange(64), PageState.UNUSED)
    w = _word_start(mem)
    stable, held, serving = w + 3, w + 12, w + 21
    mem.set_state([stable], PageState.STABLE)             # changed since the host chose it
    mem._states[held] |= BUSY                             # another host operation holds it
    mem._states[serving] |= SERVING                       # the fault thread holds it
    whole = mem._states[w + 32:w + 40].copy()             # one untouched word: taken whole
    assert (whole == UR).all()
    assert svc.discard(mem, np.arange(64)) == 61
    assert pair_name(mem.states[stable]) == "Sr"
    assert mem.states[held] == UR | BUSY and mem.states[serving] == UR | SERVING
    others = np.setdiff1d(np.arange(64), [stable, held, serving])
    assert (mem.states[others] == UZ).all()
    assert np.array_equal(mem.frames[stable], data[stable])          # never discarded
    assert np.array_equal(mem.frames[[held, serving]], data[[held, serving]])
    assert mem.resident_pages() == 3


def test_pages_the_fault_thread_serves_during_the_hold_stay_resident(served, tmp_path):
    """Interleaving 6 over whole words: accesses land while the host holds a 64-page V run."""
    svc, make = served.svc, served.make
    mem = make(64)
    data = pattern(64, seed=6)
    data.tofile(tmp_path / "f")
    store = FileStore(tmp_path / "f")
    try:
        mem.frames[:] = data
        mem.set_backing(np.arange(64), store, np.arange(64) * PAGE)
        mem.set_state(np.arange(64), PageState.VOLATILE)
        mem.discard_raw(np.arange(64))     # gone already: an access during the hold faults at once
        svc.set_race_delay(200_000_000)
        out = {}
        host = threading.Thread(target=lambda: out.setdefault("n", svc.discard(mem, np.arange(64))))
        host.start()
        time.sleep(0.05)
        w = _word_start(mem)
        touched = [w + 9, w + 10, w + 40]
        for p in touched:
            assert np.array_equal(mem.frames[p], data[p])   # served while the host holds it
        host.join(5)
        svc.set_race_delay(0)
        assert out["n"] == 64
        assert [pair_name(s) for s in mem.states[touched]] == ["Vr"] * 3    # FILLED kept
        rest = np.setdiff1d(np.arange(64), touched)
        assert (mem.states[rest] == VZ).all()
        assert np.array_equal(mem.frames[:], data)          # and every page reloads right
    finally:
        store.close()


# A state byte as the host may find it: a valid pair (no POT_VOLATILE: its discard is the detach
# path, page by page) and maybe a hold of another party.
PAIRS = (SR, SZ, UR, UF, UZ, VR, VF, VZ)
state_bytes = st.tuples(st.sampled_from(PAIRS), st.sampled_from((0, 0, 0, BUSY, SERVING))).map(
    lambda t: t[0] | t[1])


@settings(max_examples=max(EXAMPLES, 25), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), runs=st.lists(st.tuples(st.integers(1, 24), st.integers(0, 3)), min_size=1, max_size=6),
       advice=st.sampled_from(("dontneed", "free")))
def test_compiled_and_pure_readings_agree(served, data, runs, advice):
    """Random states in long same-valued stretches (so whole words happen) and random asked
    runs at random offsets: the C and the pure reading take the same pages and leave the same
    states; what was not taken keeps its bytes."""
    if advice == "free" and not gphint.caps.has("madv_free"):
        pytest.skip(gphint.caps.probe().features["madv_free"].reason)
    svc, make = served.svc, served.make
    npages = 96
    if "mem" not in served.cache:    # one memory for every example (each would cost a register)
        served.cache["mem"] = make(npages)
    mem = served.cache["mem"]
    content = pattern(npages, seed=len(runs))
    mem._states[:] = UZ              # the last example's discards fault back in as zero pages
    mem.frames[:] = content
    stretches = data.draw(st.lists(st.tuples(state_bytes, st.integers(1, 20)), min_size=1, max_size=12))
    states = np.concatenate([np.full(n, b, dtype=np.uint8) for b, n in stretches])
    states = np.resize(states, npages)
    for i in data.draw(st.sets(st.integers(0, npages - 1), max_size=6)):   # stray changed bytes
        states[i] = data.draw(state_bytes)
    mem._states[:] = states
    asked, p = [], data.draw(st.integers(0, 7))
    for length, gap in runs:
        asked.extend(range(p, min(p + length, npages)))
        p += length + gap
    asked = np.array(sorted(set(asked)), dtype=np.int64)
    expect = states.copy()
    taken = _fallback.host_discard_uv(expect, asked, 1 if advice == "free" else 0)
    got = svc.discard(mem, asked, advice=advice)
    assert got == taken.size
    assert np.array_equal(mem.states, expect), (mem.states, expect)
    kept = np.setdiff1d(np.arange(npages), taken)
    unheld = kept[(mem.states[kept] & (BUSY | SERVING)) == 0]
    assert np.array_equal(mem.frames[unheld], content[unheld])
    mem._states[:] = UZ      # no hold outlives the example


# --- concurrent: guest threads flip states inside the runs the host discards whole ------------
class Flipper(threading.Thread):
    """A guest thread over the 64-page U blocks starting at `blocks`: allocate a few neighbours
    (-> STABLE), write a version, read it back, and free about half again (-> UNUSED), so the
    host's runs always hold words the guest is changing.  expected[p] is the last version
    written to a page it keeps."""

    def __init__(self, mem, blocks, seed, deadline):
        super().__init__(daemon=True)
        self.mem, self.blocks, self.deadline = mem, blocks, deadline
        self.rng = np.random.default_rng(seed)
        self.expected = {}
        self.mismatches, self.ops, self.error = [], 0, None

    def page(self, p, version):
        out = np.full(PAGE, (p * 31 + version) & 0xFF, dtype=np.uint8)
        out[:16] = np.frombuffer(np.array([p, version], dtype=np.int64).tobytes(), dtype=np.uint8)
        return out

    def run(self):
        try:
            while time.monotonic() < self.deadline:
                # a few neighbours at once: the same word, often
                p0 = int(self.rng.choice(self.blocks)) + int(self.rng.integers(0, 61))
                ps = [p0 + int(k) for k in np.unique(self.rng.integers(0, 4, size=3))]
                self.mem.set_state(ps, PageState.STABLE)          # waits out the host's hold
                for p in ps:
                    self.ops += 1
                    want = self.page(p, self.ops)
                    self.mem.frames[p] = want                     # faults if the host took it
                    if not np.array_equal(self.mem.frames[p], want):
                        self.mismatches.append((p, "read back"))
                    self.expected[p] = want
                free = [p for p in ps if self.rng.random() < 0.5]
                if free:
                    self.mem.set_state(free, PageState.UNUSED)
                    for p in free:
                        self.expected.pop(p, None)
        except Exception as e:   # noqa: BLE001 (reported by the test, not lost in the thread)
            self.error = repr(e)


class Reader(threading.Thread):
    """A guest thread over V runs: read pages (a discarded one reloads from its file), make some
    stable and volatile again (a discarded one is reported, reloaded, and then made stable)."""

    def __init__(self, mem, pages, data, seed, deadline):
        super().__init__(daemon=True)
        self.mem, self.pages, self.data, self.deadline = mem, pages, data, deadline
        self.rng = np.random.default_rng(seed)
        self.mismatches, self.ops, self.error = [], 0, None

    def run(self):
        try:
            while time.monotonic() < self.deadline:
                p = int(self.rng.choice(self.pages))
                self.ops += 1
                if not np.array_equal(self.mem.frames[p], self.data[p]):
                    self.mismatches.append((p, pair_name(self.mem.states[p])))
                if self.rng.random() < 0.3:
                    while self.mem.make_stable([p]).size:         # Vz: the read reloads it
                        _ = self.mem.frames[p].copy()
                    if not np.array_equal(self.mem.frames[p], self.data[p]):
                        self.mismatches.append((p, "stable"))
                    self.mem.set_state([p], PageState.VOLATILE)
        except Exception as e:   # noqa: BLE001
            self.error = repr(e)


def race_guests_against(host_pass, svc, mem, tmp_path, seconds, race_delay_ns, seed=7):
    """Two Flippers over mem's U blocks and a Reader over its V blocks (64-page blocks, U and V
    alternating: runs of whole words, and mixed words at the edges of every guest change) for
    `seconds`, while a host thread calls host_pass(npass) -> pages discarded in a loop; then
    every byte is checked.  Returns (passes, pages discarded, guest writes)."""
    npages = mem.npages
    data = pattern(npages, seed=seed)
    data.tofile(tmp_path / "f")
    store = FileStore(tmp_path / "f")
    try:
        mem.frames[:] = data
        block = (np.arange(npages) // 64) % 2
        upages, vpages = np.flatnonzero(block == 0), np.flatnonzero(block == 1)
        mem.set_backing(vpages, store, vpages * PAGE)
        mem.set_state(upages, PageState.UNUSED)
        mem.set_state(vpages, PageState.VOLATILE)
        svc.set_race_delay(race_delay_ns)
        deadline = time.monotonic() + seconds
        ublocks = np.arange(0, npages, 128)
        guests = [Flipper(mem, ublocks[0::2], 1, deadline), Flipper(mem, ublocks[1::2], 2, deadline)]
        readers = [Reader(mem, vpages, data, 3, deadline)]
        counts = {"discarded": 0, "passes": 0}
        errors = []

        def host():
            try:
                while time.monotonic() < deadline:
                    counts["discarded"] += host_pass(counts["passes"])
                    counts["passes"] += 1
            except Exception as e:   # noqa: BLE001
                errors.append(repr(e))
        h = threading.Thread(target=host, daemon=True)
        threads = guests + readers + [h]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 60)
        svc.set_race_delay(0)
        assert not any(t.is_alive() for t in threads), "a thread hung"
        assert not errors and not [t.error for t in guests + readers if t.error], \
            (errors, [t.error for t in guests + readers])
        assert not [m for t in guests + readers for m in t.mismatches]
        for g in guests:                                  # every page a guest kept: byte-exact
            for p, want in g.expected.items():
                assert np.array_equal(mem.frames[p], want), (p, pair_name(mem.states[p]))
        assert np.array_equal(mem.frames[vpages], data[vpages])   # discarded ones reload the file's
        assert counts["discarded"] > 0 and counts["passes"] > 1, counts
        assert sum(g.ops for g in guests) > 100 and sum(r.ops for r in readers) > 100
        return counts["passes"], counts["discarded"], sum(g.ops for g in guests)
    finally:
        store.close()


@pytest.mark.parametrize("advice", ["dontneed", "free"])
@pytest.mark.parametrize("race_delay_ns", [0, 100_000], ids=["natural", "widened-holds"])
def test_guest_threads_flipping_states_inside_the_runs_lose_nothing(served, tmp_path, stress, advice,
                                                                    race_delay_ns):
    if advice == "free" and not gphint.caps.has("madv_free"):
        pytest.skip(gphint.caps.probe().features["madv_free"].reason)
    svc, make = served.svc, served.make
    mem = make(2048)
    everything = np.arange(mem.npages)
    got = race_guests_against(lambda _: svc.discard(mem, everything, advice=advice), svc, mem,
                              tmp_path, 30.0 if stress else 2.5, race_delay_ns)
    print("run pick race: %d host passes, %d pages discarded, %d guest writes" % got)
