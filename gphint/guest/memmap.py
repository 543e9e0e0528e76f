"""The guest kernel's struct-page array (its mem_map), kept inside the guest's own memory.

A real guest keeps the per-page state its allocator and balloon driver walk -- the buddy order
of a free block, the allocated bit, the balloon mark -- in `struct page`, 64 bytes per 4 KiB
frame on x86_64 (include/linux/mm_types.h), in memory that is part of the guest.  When the host
has swapped those frames out, the guest must fault them back before its allocator can answer,
which is what made ballooning many idle guests slow.  MemMap reserves the first
ceil(npages * 64 / page_size) frames of a GuestMemory for that array (1/64 of the guest) and
exposes its fields as numpy views that read and write those frames: every allocator or balloon
step that touches a page's state touches guest memory, and a swapped-out frame of it takes a
real userfaultfd fault served by the host.
"""
import numpy as np

STRUCT_PAGE_BYTES = 64
# the fields the buddy allocator and the balloon driver keep per frame; the rest of the 64
# bytes is what Linux keeps there besides (flags, refcount, mapping, lru, private)
STRUCT_PAGE = np.dtype({"names": ["order", "isolated", "reported", "allocated", "balloon"],
                        "formats": ["i1", "i1", "?", "?", "?"],
                        "offsets": [0, 1, 2, 3, 4], "itemsize": STRUCT_PAGE_BYTES})


def reserved_pages(npages, page_size):
    """Frames the mem_map of npages frames occupies."""
    return -(-npages * STRUCT_PAGE_BYTES // page_size)


class MemMap:
    """MemMap(mem): struct pages of every frame of mem, stored in mem's first `reserved` frames.
    Fields: order, isolated, reported, allocated, balloon (numpy views, one entry per frame)."""

    def __init__(self, mem):
        self.mem = mem
        self.reserved = reserved_pages(mem.npages, mem.page_size)
        if self.reserved >= mem.npages:
            from ..errors import ConfigError
            raise ConfigError("guest memory of %d pages is too small for its struct pages (%d pages)"
                              % (mem.npages, self.reserved))
        raw = mem.region[:mem.npages * STRUCT_PAGE_BYTES]
        self.pages = raw.view(STRUCT_PAGE)

    def field(self, name):
        return self.pages[name]

    def frames_of(self, pages):
        """The mem_map frames holding the struct pages of `pages` (sorted, unique)."""
        pages = np.asarray(pages, dtype=np.int64)
        return np.unique(pages * STRUCT_PAGE_BYTES // self.mem.page_size)

    @property
    def frames(self):
        """Every frame of the mem_map."""
        return np.arange(self.reserved, dtype=np.int64)
