"""Workloads: deterministic given a seed, scaled by memory, verified byte for byte."""
import pytest

from gphint import ConfigError
from gphint.guest.guest import Guest
from gphint.guest.workloads import WORKLOADS, describe, make_workload

NAMES = ["idle", "fileserver", "build", "database", "churn", "mixed"]


def test_every_issue_workload_exists_with_a_one_line_description():
    assert set(NAMES) <= set(WORKLOADS)
    for name, text in describe().items():
        assert text and "\n" not in text and len(text) < 120, name


def test_unknown_workload_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        Guest("4M", workload="bogus", file_bytes="2M")
    assert "bogus" in str(e.value) and all(n in str(e.value) for n in NAMES)
    with Guest("4M", workload=None, file_bytes="2M") as g:
        with pytest.raises(ConfigError, match="no workload"):
            g.step(1)
        g.workload = make_workload("idle", g)
        with pytest.raises(ConfigError, match="nops"):
            g.step(-1)
        with pytest.raises(ConfigError, match="bogus"):
            make_workload("bogus", g)


def run(name, seed, nops=1500, size="8M"):
    with Guest(size, seed=seed, workload=name, file_bytes="16M") as g:
        assert g.step(nops) == nops
        return g.census(), g.cache_census(), g.verify(), g.all_stats()


@pytest.mark.parametrize("name", NAMES)
def test_workload_is_deterministic_and_loses_nothing(name):
    c1, k1, bad1, s1 = run(name, seed=11)
    c2, k2, bad2, s2 = run(name, seed=11)
    assert bad1 == 0 and bad2 == 0
    assert c1 == c2 and k1 == k2
    assert s1["cache_reads"] == s2["cache_reads"] and s1["anon_allocated"] == s2["anon_allocated"]
    assert s1["ops"] == 1500


def test_seed_changes_the_run():
    a = run("fileserver", seed=1, nops=300)
    b = run("fileserver", seed=2, nops=300)
    assert (a[0], a[3]["cache_fills"]) != (b[0], b[3]["cache_fills"])


def test_workloads_scale_with_memory():
    small = run("database", seed=3, nops=50, size="8M")
    big = run("database", seed=3, nops=50, size="16M")
    assert big[1]["anon"] > 1.8 * small[1]["anon"]


def test_fileserver_on_a_cache_dominated_guest_is_mostly_volatile():
    """The seed's v7 posting saw ~75% volatile after a source-tree grep: assert the mix --
    volatile pages are the majority of in-use pages, stable ones the minority."""
    with Guest("16M", seed=4, workload="fileserver", file_bytes="48M") as g:
        g.step(3000)
        census = g.census()
        kinds = g.cache_census()
        assert kinds["file"] > kinds["anon"]                     # cache-dominated
        in_use = sum(n for k, n in census.items() if k[0] != "U")
        volatile = sum(n for k, n in census.items() if k[0] == "V")
        stable = sum(n for k, n in census.items() if k[0] == "S")
        assert volatile > in_use / 2 > stable
        assert g.verify() == 0


def test_churn_fragments_free_memory():
    with Guest("8M", seed=6, workload="churn", file_bytes="2M") as g:
        g.step(400)
        blocks = g.allocator.free_blocks(0)
        small = blocks[:, 1] < 9          # fragments free page reporting never sees
        fragment_pages = int((1 << blocks[small, 1]).sum())
        assert small.sum() >= 5 and fragment_pages > 0.1 * g.allocator.free_pages
        assert g.verify() == 0


def test_hinting_off_changes_no_page_state():
    with Guest("8M", seed=7, workload="mixed", hinting=False, file_bytes="16M") as g:
        g.step(800)
        assert set(g.census()) == {"Sr"}
        assert g.mem.stats["hint_ops"] == 0
        assert g.verify() == 0


def test_fileserver_over_a_real_tree():
    """files=DIR: a real directory (the stdlib's email package) is read through the cache."""
    import email
    import os
    root = os.path.dirname(email.__file__)
    with Guest("8M", files=root, seed=9, workload="fileserver") as g:
        assert g.step(400) == 400
        assert g.cache.stats["fills"] > 0
        assert g.verify() == 0
