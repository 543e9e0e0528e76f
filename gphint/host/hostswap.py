"""The host's last resort: write stable pages to the host swap file (double paging).

Everything the host needs from the discard-fault service (gphint.faults) goes through this one
small class, so that the strategies do not care how slots are kept.  Without a fault service
there is no swap-in on access, so host swapping is Unsupported (never hand back zeros for data).
"""
from .. import _mechanism, caps
from ..errors import Unsupported


def fault_service_available():
    """Can this process run the discard-fault service (compiled mechanism + userfaultfd)?"""
    if not _mechanism.COMPILED:
        return False, "the pure-Python mechanism has no C fault service (%s)" % _mechanism.WHY_PURE
    if not (caps.has("userfaultfd") or caps.has("userfaultfd_user_mode_only")):
        f = caps.probe().features["userfaultfd"]
        return False, "userfaultfd is unavailable: %s" % f.reason
    if "MOVE" not in caps.probe().uffd_features:
        return False, ("UFFDIO_MOVE is not offered (Linux >= 6.8): host swap-out needs it to "
                       "detach a page atomically")
    return True, ""


def require_fault_service(what):
    ok, why = fault_service_available()
    if not ok:
        raise Unsupported(what, why, "use the compiled mechanism as root (or "
                          "vm.unprivileged_userfaultfd=1), or run without --host-mem (proactive mode)")


class HostSwapper:
    """Swap-out through the fault service; swap-in happens in the service on guest access."""

    def __init__(self, fault_service, swap):
        self.svc = fault_service
        self.swap = swap
        self.out_npages = 0
        self.calls = 0

    def swap_out(self, mem, pages):
        """Preserve `pages` of `mem` in host swap (Sr -> Sp, dirty Pr -> Sp); returns pages written."""
        if len(pages) == 0:
            return 0
        n = self.svc.swap_out(mem, pages, self.swap)
        self.out_npages += n
        self.calls += 1
        return n

    def in_npages(self):
        """Pages swapped back in on access (the service counts them)."""
        return int(self.svc.stats().get("swap_ins", 0))

    def used_bytes(self):
        """Host swap in use right now."""
        return self.swap.used_bytes
