"""Deterministic page content: every byte the guest writes is a function of
(seed, key, page, version), so verify() can recompute what any page must hold.

key names the owner: a file id for the page cache, ANON_KEY_BASE + process id for anonymous
memory.  One 64-bit hash per page, expanded to 512 words by a counter-mode splitmix64
finaliser -- all in numpy over whole batches of pages (no per-page Python loop).
"""
import mmap

import numpy as np

from .._mechanism import mech

PAGE_SIZE = mmap.PAGESIZE
WORDS_PER_PAGE = PAGE_SIZE // 8
ANON_KEY_BASE = 1 << 40          # keeps process keys apart from file ids

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_K_SEED = np.uint64(0xD6E8FEB86659FD93)
_K_KEY = np.uint64(0xA0761D6478BD642F)
_K_PAGE = np.uint64(0xE7037ED1A0B428DB)
_K_VERSION = np.uint64(0x8EBC6AF09C88C6E3)
_LANES = np.arange(WORDS_PER_PAGE, dtype=np.uint64) * _GOLDEN
_c_digests = getattr(mech, "page_digests", None)


def _mix(z):
    """splitmix64 finaliser, in place on a uint64 array."""
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def _u64(x, n):
    return np.broadcast_to(np.asarray(x, dtype=np.int64).astype(np.uint64), (n,))


def page_hash(seed, keys, pages, versions):
    """One uint64 per page from (seed, key, page, version); arguments broadcast to pages' length."""
    pages = np.atleast_1d(np.asarray(pages, dtype=np.int64))
    n = pages.size
    with np.errstate(over="ignore"):
        h = _u64(seed, n) * _K_SEED
        h = h ^ (_u64(keys, n) * _K_KEY)
        h ^= _mix(_u64(pages, n) * _K_PAGE + np.uint64(1))
        h ^= _mix(_u64(versions, n) * _K_VERSION + np.uint64(2))
        return _mix(h)


def generate(seed, keys, pages, versions, out=None):
    """(n, PAGE_SIZE) uint8 content of n pages; written into `out` if given (e.g. guest frames)."""
    h = page_hash(seed, keys, pages, versions)
    with np.errstate(over="ignore"):
        words = h[:, None] + _LANES[None, :]
        _mix(words)
    data = words.view(np.uint8).reshape(h.size, PAGE_SIZE)
    if out is None:
        return data
    out[...] = data
    return out


_DIGEST_K = (np.arange(WORDS_PER_PAGE, dtype=np.uint64) * np.uint64(2) + np.uint64(1)) * _GOLDEN


def page_digest(pages, index=None):
    """One uint64 content digest per row of pages ((n, PAGE_SIZE) uint8; index: only those
    rows), never 0: the record of what a page held when the guest read or wrote it.  The same
    function as ext/stores.c's gph_page_digest (sum of word_i * K_i mod 2**64 with every K_i odd,
    then splitmix64's finaliser), so the fault thread can check a reload against it; the
    compiled one runs when there is one (numpy_page_digest is the same in numpy)."""
    rows = np.asarray(pages).reshape(-1, PAGE_SIZE)
    if index is not None:
        index = np.ascontiguousarray(index, dtype=np.int64).reshape(-1)
    if _c_digests is not None and rows.dtype == np.uint8 and rows.flags.c_contiguous:
        return _c_digests(rows, index)
    return numpy_page_digest(rows if index is None else rows[index])


def numpy_page_digest(pages):
    rows = np.ascontiguousarray(pages, dtype=np.uint8).reshape(-1, PAGE_SIZE)
    with np.errstate(over="ignore"):
        h = (rows.view(np.uint64) * _DIGEST_K).sum(axis=1, dtype=np.uint64)
        h ^= np.uint64(WORDS_PER_PAGE)
        return _mix(h) | np.uint64(1)


def mismatching(actual, expected):
    """Boolean per page: does row i of actual differ anywhere from row i of expected?"""
    a = np.ascontiguousarray(actual).reshape(len(actual), -1)
    e = np.ascontiguousarray(expected).reshape(len(expected), -1)
    # compare as uint64 words: 8x fewer elements than bytes
    return (a.view(np.uint64) != e.view(np.uint64)).any(axis=1)
