"""Without the compiled mechanism or without userfaultfd: clear refusals, never silent zeros."""
import numpy as np
import pytest

import gphint
from gphint import PageState, caps
from gphint._mechanism import COMPILED


@pytest.mark.skipif(COMPILED, reason="checks the pure-Python run's refusal")
def test_pure_python_refuses_the_service_naming_feature_and_remedy():
    with pytest.raises(gphint.Unsupported) as e:
        gphint.FaultService()
    msg = str(e.value)
    assert "discard-fault service" in msg and "GPHINT_PUREPYTHON" in msg and "compiled" in msg


def test_volatile_discard_without_a_service_is_refused_and_keeps_data(mem):
    mem.frames[:4] = 0x42
    mem.set_state(np.arange(4), PageState.VOLATILE)
    with pytest.raises(gphint.Unsupported, match="FaultService"):
        mem.discard(np.arange(4))
    assert (mem.frames[:4] == 0x42).all() and mem.census()["Vr"] == 4


def test_unused_discard_without_a_service_still_works(mem):
    mem.frames[:4] = 1
    mem.set_state(np.arange(4), "unused")
    assert mem.discard(np.arange(4)) == 4
    assert (mem.frames[:4] == 0).all()


def test_make_stable_reports_discarded_pages_in_both_mechanisms(mem):
    mem.frames[:3] = 1
    mem.set_state(np.arange(3), "volatile")
    mem.set_state([2], "unused")
    got = mem.make_stable(np.arange(3))
    assert got.size == 0 and mem.census()["Sr"] == mem.npages


def test_fill_from_file_works_without_a_service(mem, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"\x09" * 8192)
    import os
    fd = os.open(path, os.O_RDONLY)
    try:
        assert mem.fill_from_file([3, 4], fd, [0, 4096]) == 2
    finally:
        os.close(fd)
    assert (mem.frames[3:5] == 9).all()


@pytest.mark.skipif(not COMPILED or not caps.has("userfaultfd_user_mode_only"),
                    reason="needs the compiled mechanism and user-mode-only userfaultfd")
def test_forcing_a_missing_mode_names_the_remedy(monkeypatch):
    f = caps.probe().features["userfaultfd"]
    monkeypatch.setattr(f, "available", False)
    monkeypatch.setattr(f, "reason", "userfaultfd(2) failed: EPERM")
    monkeypatch.setattr(f, "remedy", caps.ROOT_REMEDY)
    with pytest.raises(gphint.Unsupported, match="unprivileged_userfaultfd"):
        gphint.FaultService(mode="full")
    svc = gphint.FaultService(mode="auto")     # falls back to the mode that works
    assert svc.mode == "user_mode_only"
    svc.stop()


@pytest.mark.skipif(not COMPILED, reason="needs the compiled mechanism (this run is pure Python)")
def test_no_userfaultfd_at_all_refuses_the_service_and_volatile_discards(monkeypatch, mem):
    for name in ("userfaultfd", "userfaultfd_user_mode_only"):
        f = caps.probe().features[name]
        monkeypatch.setattr(f, "available", False)
        monkeypatch.setattr(f, "reason", "userfaultfd(2) failed: ENOSYS")
        monkeypatch.setattr(f, "remedy", "a kernel built with CONFIG_USERFAULTFD")
    with pytest.raises(gphint.Unsupported, match="userfaultfd.*CONFIG_USERFAULTFD"):
        gphint.FaultService()
    mem.frames[:2] = 3
    mem.set_state([0], "volatile")
    mem.set_state([1], "unused")
    with pytest.raises(gphint.Unsupported):
        mem.discard([0])                        # data would come back as zeros: refused
    assert mem.discard([1]) == 1                # UNUSED content is don't-care: allowed
    assert (mem.frames[0] == 3).all()
