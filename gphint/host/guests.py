"""The hypervisor's side of guests: create them for a strategy, schedule them, ask them to
verify.  Every call the experiment makes into the guest layer (gphint.guest, issue 4) and the
fault service (gphint.faults, issue 3) goes through here, so the runner stays independent of
their internals.

A guest under `none`, `reporting` or `balloon` runs without CMMA hints (its pages stay
STABLE): those peers must not profit from states they do not have.  `unused` guests hint
UNUSED only (s390 mainline); `cmma` guests hint everything.
"""
from ..errors import Unsupported

MIXED_CYCLE = ("fileserver", "build", "database", "idle", "churn")


def import_layer(module, feature, remedy):
    """Import gphint.<module> or raise Unsupported naming the feature that needs it."""
    import importlib
    try:
        return importlib.import_module("gphint." + module)
    except ImportError as e:
        raise Unsupported(feature, "gphint.%s is not importable (%s)" % (module, e), remedy) from None


def _guest_module():
    return import_layer("guest.guest", "the guest model", "the guest layer (issue 4) provides it")


def workload_names():
    """Valid --workload values: the guest layer's WORKLOADS plus 'mixed'."""
    try:
        from ..guest.workloads import WORKLOADS
    except ImportError:
        return ("mixed",) + MIXED_CYCLE
    names = tuple(WORKLOADS)
    return names if "mixed" in names else names + ("mixed",)


def workload_for(index, workload):
    """The workload of guest `index`: 'mixed' cycles through the others (guest 0 busy first)."""
    if workload != "mixed":
        return workload
    return MIXED_CYCLE[index % len(MIXED_CYCLE)]


def fault_service():
    from ..faults import FaultService
    return FaultService()


def make_guest(index, config, spec, svc):
    """Guest `index` of a run: its own memory, workload, seed (seed + index) and hint level."""
    mod = _guest_module()
    hints = spec.hints
    kwargs = dict(files=config.files, seed=config.seed + index, batch=int(spec.params.get("batch", 32)),
                  hinting=hints != "off", discard_mode=config.discard_mode, fault_service=svc)
    g = mod.Guest(config.guest_mem_bytes, **kwargs)
    g.name = "g%d" % index
    if hints == "unused" and hasattr(g, "set_hint_level"):
        g.set_hint_level("unused")
    g.workload_name = workload_for(index, config.workload)
    from ..guest.workloads import WORKLOADS
    g.workload = WORKLOADS[g.workload_name](g, seed=config.seed + index)
    return g


def is_idle(g):
    return getattr(g, "workload_name", None) == "idle"


def step(g, nops):
    n = g.workload.step(nops)
    return nops if n is None else int(n)


def alloc(g, npages):
    return g.alloc(npages)


def free(g, pages):
    g.free(pages)


def verify(g):
    return int(g.verify())


def census(guests):
    out = {}
    for g in guests:
        for k, v in g.census().items():
            k = k if isinstance(k, str) else "".join(str(x) for x in k)
            out[k] = out.get(k, 0) + int(v)
    return out


def service_stats(svc):
    if svc is None:
        return {}
    s = svc.stats()
    return {k: v for k, v in s.items() if not isinstance(v, dict)}


def close(g):
    close = getattr(g, "close", None)
    if close is not None:
        close()
