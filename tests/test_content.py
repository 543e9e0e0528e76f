"""Deterministic content: a pure function of (seed, key, page, version), distinct per page."""
import numpy as np

from gphint.guest import content
from gphint.guest.content import PAGE_SIZE


def test_same_arguments_same_bytes():
    a = content.generate(7, 3, np.arange(64), 2)
    b = content.generate(7, 3, np.arange(64), 2)
    assert a.shape == (64, PAGE_SIZE) and a.dtype == np.uint8
    assert np.array_equal(a, b)


def test_every_argument_changes_every_page():
    base = content.generate(7, 3, np.arange(32), 2)
    for other in (content.generate(8, 3, np.arange(32), 2),          # seed
                  content.generate(7, 4, np.arange(32), 2),          # key
                  content.generate(7, 3, np.arange(1, 33), 2),       # page
                  content.generate(7, 3, np.arange(32), 3)):         # version
        assert content.mismatching(base, other).all()
    # pages of one call differ from each other too (no repeated page pattern)
    assert np.unique(base.view(np.uint64)[:, 0]).size == 32


def test_bytes_look_random():
    data = content.generate(1, 0, np.arange(256), 0)
    counts = np.bincount(data.reshape(-1), minlength=256)
    expected = data.size / 256
    # chi-square with 255 degrees of freedom: mean 255, sd ~22.6; 400 is > 6 sd out
    assert ((counts - expected) ** 2 / expected).sum() < 400


def test_broadcast_keys_versions_and_out():
    pages = np.arange(10)
    keys = np.arange(10) % 3
    versions = np.arange(10)
    together = content.generate(5, keys, pages, versions)
    for i in range(10):
        assert np.array_equal(together[i], content.generate(5, int(keys[i]), [i], int(versions[i]))[0])
    out = np.zeros((10, PAGE_SIZE), dtype=np.uint8)
    assert content.generate(5, keys, pages, versions, out=out) is out
    assert np.array_equal(out, together)


def test_mismatching_finds_one_flipped_byte():
    a = content.generate(1, 1, np.arange(8), 1)
    b = a.copy()
    b[5, 4095] ^= 1
    assert content.mismatching(a, b).tolist() == [False] * 5 + [True] + [False] * 2


def test_page_digest_is_the_fault_threads_digest_and_sees_every_one_word_change():
    pages = content.generate(3, 1, np.arange(64), 0)
    pages[0] = 0
    pages[1, :8] = 255
    d = content.page_digest(pages)
    assert d.dtype == np.uint64 and (d & np.uint64(1)).all()        # never 0: 0 means "none"
    # the compiled digest (ext/stores.c, what reloads are checked with) and numpy agree
    assert np.array_equal(d, content.numpy_page_digest(pages))
    assert np.array_equal(content.page_digest(pages, [5, 2, 5]), d[[5, 2, 5]])
    assert np.unique(d).size == 64
    rng = np.random.default_rng(0)
    for _ in range(200):                  # any change of one 64-bit word changes the digest
        changed = pages[2].copy()
        word = int(rng.integers(0, PAGE_SIZE // 8))
        changed.view(np.uint64)[word] ^= np.uint64(int(rng.integers(1, 1 << 63)))
        assert content.page_digest(changed)[0] != d[2]
    swapped = pages[2].copy().view(np.uint64)
    swapped[[0, 1]] = swapped[[1, 0]]     # position matters: moved words are a change too
    assert content.page_digest(swapped.view(np.uint8))[0] != d[2]
