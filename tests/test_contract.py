"""ext/gphint.h is the C contract: its state-byte constants must say what gphint/states.py says
(the Python policy builds the transition tables the C applies), and it stays one screen."""
import os
import re

from gphint import states
from gphint.states import HostState, PageState

HEADER = os.path.join(os.path.dirname(__file__), "..", "ext", "gphint.h")


def header_constants():
    with open(HEADER) as f:
        text = f.read()
    return {m.group(1): int(m.group(2), 0)
            for m in re.finditer(r"^#define (GPH_\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", text, re.M)}


def test_state_constants_match_states_py():
    c = header_constants()
    assert c["GPH_USAGE_MASK"] == states.USAGE_MASK
    assert c["GPH_CONTENT_MASK"] == states.CONTENT_MASK
    assert c["GPH_PAIR_MASK"] == states.PAIR_MASK
    assert c["GPH_FLAG_MASK"] == states.FLAG_MASK
    usage = {"STABLE": "STABLE", "UNUSED": "UNUSED", "POTVOL": "POT_VOLATILE", "VOLATILE": "VOLATILE"}
    for c_name, py_name in usage.items():
        assert c["GPH_USAGE_" + c_name] == PageState[py_name], c_name
    for h in HostState:
        assert c["GPH_CONTENT_" + h.name] == h, h.name
    assert {k for k in c if k.startswith("GPH_USAGE_")} == {"GPH_USAGE_MASK"} | {"GPH_USAGE_" + n for n in usage}
    assert {k for k in c if k.startswith("GPH_CONTENT_")} == {"GPH_CONTENT_MASK"} | {"GPH_CONTENT_" + h.name
                                                                                    for h in HostState}


def test_protocol_flags_are_distinct_bits_inside_the_flag_mask():
    c = header_constants()
    flags = [v for k, v in c.items() if k.startswith("GPH_FLAG_") and k != "GPH_FLAG_MASK"]
    assert len(flags) == 3
    for f in flags:
        assert f & c["GPH_FLAG_MASK"] == f and bin(f).count("1") == 1
    assert len(set(flags)) == len(flags)
    for name in ("BUSY", "FILLED", "SERVING"):              # the Python side reads the same holds
        assert c["GPH_FLAG_" + name] == getattr(states, "FLAG_" + name), name


def test_the_public_header_is_one_screen():
    with open(HEADER) as f:
        lines = f.read().splitlines()
    assert len(lines) <= 70, "ext/gphint.h has %d lines: move what is not the contract to gphint_internal.h" % len(lines)
    assert not any(re.search(r"\bissue \d|REFERENCE", line) for line in lines)
