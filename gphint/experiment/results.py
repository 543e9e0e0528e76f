"""The results document: schema version, environment, and its atomic write (docs/results.md)."""
import json
import os
import platform
import subprocess

import psutil

from .. import caps, outputs
from .._version import __version__
from ..host.hostswap import fault_service_available

SCHEMA_VERSION = 1


def git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment():
    """What a reader needs to trust (or reproduce) the numbers."""
    c = caps.probe()
    return {"kernel": c.kernel, "machine": c.machine, "python": platform.python_version(),
            "gphint_version": __version__, "git_commit": git_commit(), "mechanism": c.mechanism,
            "cpu_count": os.cpu_count(), "page_size": c.page_size, "thp_mode": c.thp_mode,
            "mem_total_bytes": psutil.virtual_memory().total,
            "capabilities": {n: f.available for n, f in c.features.items()},
            "fault_service": fault_service_available()[0]}

def results_document(config, records, env=None):
    return {"schema_version": SCHEMA_VERSION, "config": config.to_dict(),
            "env": env or environment(), "results": records}


def write_json(path, doc, option="--json"):
    """Write doc to a regular file (gphint.outputs: never into a FIFO or over a device)."""
    def dump(f):
        json.dump(doc, f, indent=1)
        f.write("\n")
    return outputs.write_atomically(path, dump, option)
