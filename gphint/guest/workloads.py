"""The workloads every experiment runs: deterministic given a seed, scaled by guest memory.

A workload advances by operations (`step(nops) -> ops done`); one operation is one system-call
sized action (read a file, write pages, allocate a burst...), each acting on batches of pages.
Randomness comes from numpy's PCG64 seeded with (seed, workload name): same seed, same
sequence of operations, whatever ran before.
"""
import zlib

import numpy as np

from ..errors import ConfigError
from .content import PAGE_SIZE

READ_MAX_BYTES = 256 << 10      # one read() of at most 256 KiB (a readahead window)


class Workload:
    name = ""
    description = ""

    def __init__(self, guest, seed=1, pid=None):
        self.g = guest
        self.seed = int(seed)
        key = zlib.crc32(self.name.encode())
        self.rng = np.random.default_rng([self.seed, key])
        self.pid = key % 1000 if pid is None else pid
        self.npages = guest.mem.npages
        self.ops = 0
        self.setup()

    def setup(self):
        """Work done before the first step (kept small: boot-time state is built by ops)."""

    def step(self, nops):
        for _ in range(nops):
            self.op()
        self.ops += nops
        return nops

    def op(self):
        raise NotImplementedError

    # --- helpers shared by the workloads ----------------------------------------------------
    def read_file(self, fid, offset=0, length=READ_MAX_BYTES):
        size = int(self.g.files.size_bytes[fid])
        if size == 0:
            return 0
        offset = min(offset, max(0, size - 1)) // PAGE_SIZE * PAGE_SIZE
        return len(self.g.cache.read(fid, offset, min(length, size - offset)))

    def zipf_cdf(self, n, a=1.0):
        w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** a
        return np.cumsum(w) / w.sum()

    def anon_budget(self, share):
        return max(1, int(self.npages * share))


class Idle(Workload):
    name = "idle"
    description = "boot-like: fill the cache from files and some anonymous memory, then idle"

    def setup(self):
        self.order = self.rng.permutation(len(self.g.files))
        self.cursor = 0
        self.cache_target = self.anon_budget(0.4)
        self.anon_target = self.anon_budget(0.1)
        self.anon_done = 0
        self.booted = False

    def op(self):
        if self.booted:
            return            # an idle guest does nothing: its memory state is what the host sees
        if self.anon_done < self.anon_target:
            n = min(256, self.anon_target - self.anon_done)
            self.g.anon.alloc(n, self.pid)
            self.anon_done += n
        elif self.cursor < self.order.size and \
                np.count_nonzero(self.g.table.kind == 1) < self.cache_target:
            self.read_file(int(self.order[self.cursor]))
            self.cursor += 1
        else:
            self.booted = True


class Fileserver(Workload):
    name = "fileserver"
    description = "Zipf-popular whole-file reads (up to 256 KiB) over the file set"

    def setup(self):
        n = len(self.g.files)
        self.popular = self.rng.permutation(n)
        self.cdf = self.zipf_cdf(n, 0.9)
        self.server_pages = self.anon_budget(0.03)
        self.started = False

    def op(self):
        if not self.started:               # the server process's own memory
            self.g.anon.alloc(self.server_pages, self.pid)
            self.started = True
            return
        r = self.rng.random()
        fid = int(self.popular[min(int(np.searchsorted(self.cdf, r)), self.popular.size - 1)])
        size = int(self.g.files.size_bytes[fid])
        off = int(self.rng.integers(0, max(1, size - READ_MAX_BYTES) // PAGE_SIZE + 1)) * PAGE_SIZE
        self.read_file(fid, off)


class Build(Workload):
    name = "build"
    description = "compile-like: small files read once, object files written, anonymous alloc/free churn"

    def setup(self):
        sizes = self.g.files.size_bytes
        self.sources = np.flatnonzero(sizes <= 64 << 10)
        if self.sources.size == 0:
            self.sources = np.argsort(sizes)[:max(1, sizes.size // 2)]
        self.sources = self.rng.permutation(self.sources)
        self.cursor = 0
        self.compiler = None
        self.max_compile_pages = max(16, self.anon_budget(0.02))
        self.k = 0

    def op(self):
        self.k += 1
        k = self.k
        if self.cursor >= self.sources.size:          # a new build: same sources, new order
            self.sources = self.rng.permutation(self.sources)
            self.cursor = 0
        self.read_file(int(self.sources[self.cursor]))
        self.cursor += 1
        if k % 4 == 0:                                 # a compiler process: alloc, work, exit
            if self.compiler is not None:
                self.g.anon.free(self.compiler, self.pid)
            n = int(self.rng.integers(16, self.max_compile_pages + 1))
            self.compiler = self.g.anon.alloc(n, self.pid)
            self.g.anon.write(self.compiler[:: 4], self.pid)
        if k % 8 == 0:                                 # an object file written
            fid = int(self.sources[int(self.rng.integers(0, self.sources.size))])
            npg = max(1, min(4, self.g.files.npages(fid)))
            self.g.cache.write(fid, 0, None, npg * PAGE_SIZE)
        if k % 64 == 0:
            self.g.cache.writeback()


class Database(Workload):
    name = "database"
    description = "anonymous buffer pool with Zipf dirty writes, data-file reads/writes, periodic checkpoints"

    def setup(self):
        sizes = self.g.files.size_bytes
        self.datafile = int(np.argmax(sizes))
        self.pool_pages = self.anon_budget(0.3)
        self.pool = None
        self.cdf = self.zipf_cdf(self.pool_pages, 0.8)
        self.hot = self.rng.permutation(self.pool_pages)
        self.checkpoint_every = 256
        self.k = 0

    def op(self):
        self.k += 1
        if self.pool is None:
            self.pool = self.g.anon.alloc(self.pool_pages, self.pid)
            return
        r = self.rng.random()
        if r < 0.6:                                    # update rows in the buffer pool
            pick = np.searchsorted(self.cdf, self.rng.random(8))
            pages = np.unique(self.pool[self.hot[np.minimum(pick, self.pool_pages - 1)]])
            self.g.anon.write(pages, self.pid)
        elif r < 0.85:                                 # read the table file
            npg = self.g.files.npages(self.datafile)
            self.read_file(self.datafile, int(self.rng.integers(0, npg)) * PAGE_SIZE, 16 << 10)
        else:                                          # write a table page (dirty, STABLE)
            npg = self.g.files.npages(self.datafile)
            self.g.cache.write(self.datafile, int(self.rng.integers(0, npg)) * PAGE_SIZE, None, PAGE_SIZE)
        if self.k % self.checkpoint_every == 0:
            self.g.cache.writeback(fid=self.datafile)


class Churn(Workload):
    name = "churn"
    description = "alloc/free bursts of random sizes that fragment free memory"

    def setup(self):
        self.live = []            # [pages, thinned?]
        self.budget = self.anon_budget(0.3)
        self.used = 0

    def op(self):
        grow = not self.live or (self.rng.random() < 0.5 and self.used < self.budget)
        if grow:
            n = int(min(self.rng.integers(1, 513), max(1, self.budget - self.used)))
            self.live.append([self.g.anon.alloc(n, self.pid), False])
            self.used += n
            return
        i = int(self.rng.integers(0, len(self.live)))
        block, thinned = self.live[i]
        if thinned or block.size < 2:        # a burst that was thinned before dies completely
            gone = block
            self.live.pop(i)
        else:
            # free every 2nd or 3rd page: the survivors pin holes the buddy allocator cannot
            # merge until the burst dies
            stride = int(self.rng.integers(2, 4))
            gone = block[::stride]
            self.live[i] = [np.delete(block, np.s_[::stride]), True]
        self.g.anon.free(gone, self.pid)
        self.used -= gone.size


class Mixed(Workload):
    name = "mixed"
    description = "phases of every other workload in turn, the starting one chosen by the seed"

    PHASE_OPS = 200
    ORDER = ("fileserver", "build", "database", "churn", "idle")

    def setup(self):
        self.parts = [WORKLOADS[n](self.g, self.seed) for n in self.ORDER]
        self.first = self.seed % len(self.parts)

    def op(self):
        phase = (self.ops // self.PHASE_OPS + self.first) % len(self.parts)
        self.parts[phase].step(1)
        self.ops += 1

    def step(self, nops):
        for _ in range(nops):
            self.op()
        return nops


WORKLOADS = {w.name: w for w in (Idle, Fileserver, Build, Database, Churn, Mixed)}


def all_workloads():
    """Every workload by name: these and their variants whose file accesses go through
    mappings (gphint.guest.mapped_workloads, the minor-fault and munmap paths)."""
    from .mapped_workloads import MAPPED_WORKLOADS    # it subclasses this module's workloads
    return {**WORKLOADS, **MAPPED_WORKLOADS}


def describe():
    """{name: one-line description}."""
    return {n: w.description for n, w in all_workloads().items()}


def make_workload(name, guest, seed=1):
    """The workload called name on guest; ConfigError listing the valid names otherwise."""
    known = all_workloads()
    cls = known.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError("unknown workload %r (valid: %s)" % (name, ", ".join(known)))
    return cls(guest, seed)
