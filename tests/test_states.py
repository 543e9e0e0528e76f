"""The hinting contract of Schwidefsky's guest page hinting (the s390 CMMA/ESSA states): valid
pairs, transitions, discardable(), StateError."""
import numpy as np
import pytest

import gphint
from gphint import states
from gphint.states import HostState, PageState, pair, pair_name


def test_essa_encodings():
    assert [int(s) for s in PageState] == [0x00, 0x04, 0x08, 0x0C]
    assert [int(s) for s in HostState] == [0x00, 0x01, 0x02, 0x03]   # 0x01: gphint's lazily freed
    assert pair_name(pair(PageState.VOLATILE, HostState.ZERO)) == "Vz"


def test_valid_pairs_are_the_eight_and_the_lazily_freed_two():
    names = sorted(pair_name(p) for p in states.VALID_PAIRS)
    assert names == sorted(["Sr", "Sp", "Sz", "Ur", "Uz", "Vr", "Vz", "Pr", "Uf", "Vf"])


def test_every_transition_ends_in_a_valid_pair():
    for (old, usage), new in states.GUEST_TRANSITIONS.items():
        assert old in states.VALID_PAIRS and new in states.VALID_PAIRS, (pair_name(old), usage, pair_name(new))
    for old, new in states.HOST_TRANSITIONS:
        assert old in states.VALID_PAIRS and new in states.VALID_PAIRS


@pytest.mark.parametrize("old,new", [("Ur", "Up"), ("Vr", "Vp"), ("Pr", "Pz"), ("Sr", "Uz"), ("Sp", "Sz")])
def test_forbidden_transitions_raise_naming_page_and_states(old, new):
    code = {n: c for c, n in ((c, pair_name(c)) for c in range(16))}
    with pytest.raises(gphint.StateError) as e:
        states.check_transition(17, code[old] if old in code else 0, code.get(new, 0x09))
    assert "page 17" in str(e.value)
    assert e.value.page == 17


@pytest.mark.parametrize("old,new", sorted((pair_name(a), pair_name(b)) for a, b in states.HOST_TRANSITIONS))
def test_host_transitions_of_the_reference_are_allowed(old, new):
    code = {pair_name(c): c for c in states.VALID_PAIRS}
    states.check_transition(0, code[old], code[new])


def test_discardable():
    assert gphint.discardable("unused") and gphint.discardable(PageState.VOLATILE)
    assert gphint.discardable("P", dirty=False) and not gphint.discardable("P", dirty=True)
    assert not gphint.discardable(PageState.STABLE)


@pytest.mark.parametrize("bad", ["stabel", 3, None, 1.5, True])
def test_unknown_state_names_the_value(bad):
    with pytest.raises(gphint.ConfigError, match=repr(bad).replace(".", r"\.")):
        states.parse_state(bad)


def test_set_state_moves_usage_and_keeps_content(mem):
    pages = np.arange(0, mem.npages, 3)
    mem.set_state(pages, "unused")
    assert (mem.usage(pages) == PageState.UNUSED).all()
    assert (mem.content(pages) == HostState.RESIDENT).all()
    others = np.setdiff1d(np.arange(mem.npages), pages)
    assert (mem.usage(others) == PageState.STABLE).all()
    mem.set_state(pages, PageState.VOLATILE)
    mem.set_state(pages[:5], PageState.POT_VOLATILE)
    assert mem.census() == {"Sr": others.size, "Vr": pages.size - 5, "Pr": 5}


def test_refused_batch_changes_nothing(mem):
    mem.set_state(np.arange(10), "unused")
    mem.discard(np.arange(10))                      # Ur -> Uz
    before = mem.states.copy()
    with pytest.raises(gphint.StateError) as e:
        mem.set_state(np.arange(20), "volatile")    # Uz -> V is refused: no content to vouch for
    assert e.value.page == 0 and e.value.old == "Uz"
    assert (mem.states == before).all()


def test_allocating_a_discarded_free_page_gives_logically_zero_stable(mem):
    mem.set_state([4], "unused")
    mem.discard([4])
    mem.set_state([4], "stable")
    assert mem.census()["Sz"] == 1
