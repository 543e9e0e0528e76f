"""`kernel`: the no-hints peer a real KVM host is -- overcommit, no balloon, the kernel's LRU.

The guests' memory sits in a memory cgroup limited to the budget (gphint.host.sandbox), and the
Linux kernel's own reclaim swaps it to a real swap area, with the access bits user space cannot
see (mm/vmscan.c's active/inactive lists; MGLRU where enabled).  gphint neither hints nor
reclaims: the host object only samples residency for the record.  Compare it with the
user-space `none`, which swaps oldest-resident first (FIFO) to a file: the double paging of
VSwapper (ASPLOS 2014) without the kernel's recency information.
"""
from .spec import registers
from .strategies import Strategy


@registers("kernel")
class KernelPeer(Strategy):
    name = "kernel"

    def reclaim(self, need_npages):
        return 0        # the kernel reclaims, at the cgroup's limit
