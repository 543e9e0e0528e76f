"""What a real host needs, for `gphint caps`: a memory cgroup controller, a swap area that can
be enabled, O_DIRECT on the files' filesystem, cachestat(2), PSI -- each probed for real."""
import os
import tempfile


def features(Feature):
    from . import cachemode, cgroup, swaparea, witness
    out = {}
    version, parent, why = cgroup.detect()
    root = os.geteuid() == 0
    ok = version is not None and root and os.access(parent, os.W_OK)
    out["memory_cgroup"] = Feature(
        ok, detail="cgroup %s memory controller; run cgroups below %s" % (version, parent) if ok else "",
        reason="" if ok else (why or "cgroup %s memory controller at %s, but creating a cgroup there needs "
                              "root (euid %d)" % (version, parent, os.geteuid())),
        remedy="" if ok else "run as root with the memory controller (cgroup v2 or the v1 memory hierarchy); "
        "without it --host-mem is enforced by gphint alone and `kernel` is unavailable")
    tmp = tempfile.gettempdir()
    active = swaparea.lasting_areas()
    can, why = swaparea.can_enable(tmp)
    out["swap_area"] = Feature(
        bool(active) or can,
        detail=("%d swap area(s) active" % len(active)) if active else ("can enable a " + why if can else ""),
        reason="" if active or can else why, remedy="" if active or can else swaparea.REMEDY)
    ok, why = cachemode.probe_direct(tmp)
    out["o_direct"] = Feature(ok, detail=why if ok else "", reason="" if ok else why,
                              remedy="" if ok else "put TMPDIR and --files on a disk filesystem "
                              "(ext4, xfs); --cache host and buffered host swap are the fallback")
    cs = witness.has_cachestat()
    out["cachestat"] = Feature(cs, detail="cachestat(2): page cache held per file" if cs else "",
                               reason="" if cs else "cachestat(2) is not offered: mincore over a mapping instead",
                               remedy="" if cs else "Linux >= 6.5")
    psi = witness.psi_memory_some_us() is not None
    out["psi"] = Feature(psi, detail="/proc/pressure/memory" if psi else "",
                         reason="" if psi else "/proc/pressure/memory is missing: psi_memory_some_us is null",
                         remedy="" if psi else "a kernel with CONFIG_PSI=y (and psi=1 on the command line)")
    return out
