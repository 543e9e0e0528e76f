"""scripts/scale_tables.py's fleet block (bench/README.md, from bench/bench_fleet.py's cases in
bench.json): every number is the JSON's, the ratio is computed, and a bench.json without the
fleet cases renders a line that says how to measure them (so `bench_all --check` holds)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import scale_tables  # noqa: E402

LAT_GROUP = "fleet: 2048 discard faults spread over the guests, 16 MiB guests"


def _lat(n, p50, p99, svc):
    return {"group": LAT_GROUP, "name": "test_discard_fault_latency[%d]" % n,
            "stats": {"rounds": 5},
            "extra_info": {"guests": n, "faults": 2048, "p50_ns": p50, "p99_ns": p99, "service_p99_ns": svc}}


def _doc():
    create = {"group": "fleet: create, register and close 512 guests of 16 MiB", "name": "test_create_close",
              "stats": {"rounds": 3},
              "extra_info": {"guests": 512, "create_register_s": 0.123, "close_s": 0.0561,
                             "host_bytes_per_idle_guest": 4198, "guest_bytes": 16 << 20}}
    other = {"group": "discard 256 MiB, threads=1", "name": "x", "stats": {}, "extra_info": {}}
    return {"measured": {"commit": "abc", "date": "d"},
            "benchmarks": [other, _lat(512, 21000, 32500, 9000), _lat(4, 20000, 30000, 8000), create]}


def test_fleet_block_renders_the_json():
    text = scale_tables.fleet_block(_doc(), lambda m: "measured at commit %s" % m["commit"])
    lines = text.splitlines()
    assert lines[0] == "_measured at commit abc; %s_" % LAT_GROUP
    rows = [line for line in lines if line.startswith("| 4 ") or line.startswith("| 512 ")]
    assert rows == ["| 4 | 20.0 | 30.0 | 8.0 |", "| 512 | 21.0 | 32.5 | 9.0 |"]     # by N
    prose = " ".join(lines)
    assert "1.08× the 4-guest figure" in prose             # 32.5 / 30.0
    assert "0.123 s" in prose and "0.056 s" in prose and "4.1 KiB" in prose
    assert "1024 KiB" in prose                               # 1/16 of 16 MiB


def test_fleet_block_without_the_cases_says_how_to_measure():
    doc = _doc()
    doc["benchmarks"] = doc["benchmarks"][:1]
    text = scale_tables.fleet_block(doc, lambda m: "")
    assert "not measured yet" in text and "bench_all --only fleet" in text
