"""The fileserver and build workloads with their file accesses through mappings, the paths
patch 7 of Schwidefsky's guest page hinting series is about (minor faults and munmap).

fileserver-mmap: a server that mmaps the files it serves and keeps the last MAPPED_FILES of
them mapped (a mapped-file cache, as web servers keep): a file served again from a live mapping
takes no fault, one mapped anew takes a minor fault per cached page.
build-mmap: the compiler mmaps each source read-only and unmaps it when done; every 8th step
an object file is written through a writable shared mapping (as linkers write their output).

Same operation counts and random streams as the read()/write() workloads they extend."""
import numpy as np

from .content import PAGE_SIZE
from .workloads import READ_MAX_BYTES, Build, Fileserver

MAPPED_FILES = 16


class FileserverMapped(Fileserver):
    name = "fileserver-mmap"
    description = "Zipf-popular file serving through mmap, the last 16 files kept mapped"

    def setup(self):
        super().setup()
        self.live = {}          # fid -> Mapping, in mapping order (dicts keep insertion order)

    def op(self):
        if not self.started:
            super().op()
            return
        r = self.rng.random()
        fid = int(self.popular[min(int(np.searchsorted(self.cdf, r)), self.popular.size - 1)])
        size = int(self.g.files.size_bytes[fid])
        off = int(self.rng.integers(0, max(1, size - READ_MAX_BYTES) // PAGE_SIZE + 1)) * PAGE_SIZE
        if size == 0:
            return
        m = self.live.pop(fid, None)
        if m is None:
            m = self.g.mmap(fid, 0, size, pid=self.pid)
            if len(self.live) >= MAPPED_FILES:
                self.g.munmap(self.live.pop(next(iter(self.live))))
        self.live[fid] = m
        self.g.mapped_read(m, off, min(READ_MAX_BYTES, size - off))


class BuildMapped(Build):
    name = "build-mmap"
    description = "compile-like through mmap: sources mapped read-only, objects written through writable mappings"

    def op(self):
        self.k += 1
        k = self.k
        if self.cursor >= self.sources.size:
            self.sources = self.rng.permutation(self.sources)
            self.cursor = 0
        fid = int(self.sources[self.cursor])
        self.cursor += 1
        size = int(self.g.files.size_bytes[fid])
        if size:
            m = self.g.mmap(fid, 0, size, pid=self.pid)
            self.g.mapped_read(m, 0, size)
            self.g.munmap(m)
        if k % 4 == 0:
            if self.compiler is not None:
                self.g.anon.free(self.compiler, self.pid)
            n = int(self.rng.integers(16, self.max_compile_pages + 1))
            self.compiler = self.g.anon.alloc(n, self.pid)
            self.g.anon.write(self.compiler[:: 4], self.pid)
        if k % 8 == 0:
            obj = int(self.sources[int(self.rng.integers(0, self.sources.size))])
            npg = max(1, min(4, self.g.files.npages(obj)))
            m = self.g.mmap(obj, 0, npg * PAGE_SIZE, writable=True, pid=self.pid)
            self.g.mapped_write(m, 0, npg * PAGE_SIZE)
            self.g.munmap(m)
        if k % 64 == 0:
            self.g.cache.writeback()


MAPPED_WORKLOADS = {w.name: w for w in (FileserverMapped, BuildMapped)}
