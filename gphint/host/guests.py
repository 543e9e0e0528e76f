"""The hypervisor's side of guests: create them for a strategy, schedule them, ask them to
verify.  Every call the experiment makes into the guest layer (gphint.guest) and the fault
service (gphint.faults) goes through here, so the runner stays independent of their internals.

A guest under `none`, `reporting` or `balloon` runs without CMMA hints (its pages stay
STABLE): those peers must not profit from states they do not have.  `unused` guests hint
UNUSED only (s390 mainline); `cmma` guests hint everything.
"""
import numpy as np

from ..batching import BATCH
from ..errors import GphintError
from ..faults import FaultService
from ..guest.files import FileSet
from ..guest.guest import Guest
from ..guest.guest_reclaim import DISCARD_LIST_BATCH
from ..guest.workloads import all_workloads

MIXED_CYCLE = ("fileserver", "build", "database", "idle", "churn")


def workload_names():
    """Valid single --workload names: the guest layer's workloads plus 'mixed'."""
    names = tuple(all_workloads())
    return names if "mixed" in names else names + ("mixed",)


def workload_list(workload):
    """'mixed' -> the mixed cycle; 'database,idle,idle' -> that list; 'fileserver' -> [it]."""
    if workload == "mixed":
        return list(MIXED_CYCLE)
    return [w.strip() for w in workload.split(",") if w.strip()]


def workload_for(index, workload):
    """The workload of guest `index`: lists (and 'mixed') are dealt out to guests in turn."""
    names = workload_list(workload)
    return names[index % len(names)]


def fault_service(locking="holdbits"):
    return FaultService(locking=locking)


PROBE_ORDER = 9           # the probe frees whole 2 MiB blocks (free page reporting's unit)


def shared_files(config):
    """One generated file set for all guests of a run (guests booted from one image): written
    once instead of once per guest.  None when the user gave --files."""
    if config.files is not None:
        return None
    return FileSet(None, seed=config.seed, total_bytes=2 * config.guest_mem_bytes)


def make_guest(index, config, spec, svc, fileset=None):
    """Guest `index` of a run: its own memory, workload, seed (seed + index) and hint level.
    Guests only read the shared tree; their writes go to private overlays."""
    hints = spec.hints
    name = "g%d" % index
    files = fileset.root if fileset is not None else config.files
    # kernel's spec has no keys: its guests are hint-less, the buffer's capacity is unused
    g = Guest(config.guest_mem_bytes, files=files, seed=config.seed + index,
              batch=spec.params.get("batch", BATCH), hinting=hints != "off",
              discard_mode=config.discard_mode, fault_service=svc,
              workload=workload_for(index, config.workload), name=name, thp=config.guest_thp,
              minor_fault=config.minor_fault,
              discard_list_batch=config.discard_list_batch or DISCARD_LIST_BATCH)
    g.workload_name = workload_for(index, config.workload)
    if hints == "unused":
        # s390 mainline: the allocator's UNUSED/STABLE hooks only; the page cache never marks
        # VOLATILE or POT_VOLATILE
        g.set_hint_level("unused")
    return g


def is_idle(g):
    return g.workload_name == "idle"


def step(g, nops):
    return int(g.step(nops))


def probe_alloc(g, npages):
    """A guest kernel buffer of 2 MiB blocks (like a huge page), written so that it is
    resident: returns its frames.  The guest shrinks its caches first if it must."""
    a = g.allocator
    nblocks = max(1, npages >> PROBE_ORDER)
    firsts = []
    try:
        for _ in range(nblocks):
            try:
                firsts.append(a.alloc_block(PROBE_ORDER))
            except MemoryError:
                g.reclaim(2 << PROBE_ORDER)
                firsts.append(a.alloc_block(PROBE_ORDER))
    except (MemoryError, GphintError):
        pass            # fewer blocks: the probe frees what it got
    if getattr(g, "thp", False):
        a.mark_huge(firsts)     # a THP guest's buffer is huge pages: a partial free only splits
    a.flush_hints()
    frames = (np.asarray(firsts, dtype=np.int64)[:, None]
              + np.arange(1 << PROBE_ORDER, dtype=np.int64)).reshape(-1)
    g.mem.frames[frames] = 0x5A        # touched: resident, counted by the host
    return frames


def probe_free(g, frames):
    g.allocator.free(frames)
    g.allocator.flush_hints()     # the free is complete when its UNUSED hints are submitted


def verify(g):
    return int(g.verify())


def census(guests):
    out = {}
    for g in guests:
        for k, v in g.census().items():
            k = k if isinstance(k, str) else "".join(str(x) for x in k)
            out[k] = out.get(k, 0) + int(v)
    return out


def discard_list_stats(guests, svc):
    """The discarded page list over all guests (gphint.guest.guest_reclaim), with the fault
    service's count of served pages it did not list because the guest had freed them."""
    keys = ("drained_discarded", "dropped_drained", "dlist_drains", "dlist_retired_by_free")
    out = {k: int(sum(g.stats[k] for g in guests)) for k in keys}
    out["dlist_high_water"] = max((int(g.stats["dlist_high_water"]) for g in guests), default=0)
    out["dlist_batch"] = guests[0].discard_list_batch if guests else 0
    out["ring_stale"] = int(svc.stats().get("ring_stale", 0)) if svc is not None else 0
    return out


def thp_stats(guests):
    """A THP guest fleet's huge-page counters summed over guests (gphint.guest.thp), None on
    4 KiB guests: what the huge pages did to the memory a guest can give back."""
    if not guests or not getattr(guests[0], "thp", False):
        return None
    out = {}
    for g in guests:
        for k, v in g.allocator.thp_stats().items():
            out[k] = out.get(k, 0) + int(v)
    return out


def mapping_stats(guests):
    """Guest processes' mappings of the page cache (gphint.guest.mappings), summed over guests:
    what patch 7 saves on the mmap workloads; all zero for workloads that never map a file."""
    keys = ("mmaps", "munmaps", "minor_faults", "major_faults", "changes_saved", "corrected",
            "correction_changes")
    out = {k: int(sum(g.mappings.stats[k] for g in guests)) for k in keys}
    out["state_changes"] = int(sum(g.mappings.state_changes() for g in guests))
    return out


def service_stats(svc):
    if svc is None:
        return {}
    s = svc.stats()
    return {k: v for k, v in s.items() if not isinstance(v, dict)}


def close(g):
    g.close()
