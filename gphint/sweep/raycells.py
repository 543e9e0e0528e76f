"""Cells as Ray tasks: each in a fresh worker process (max_calls=1), at most one per node at a
time -- every task asks for one unit of the custom resource `gphint_node`, which each node
offers exactly once (`ray start --resources='{"gphint_node": 1}'`), so two runs never share a
host's memory.  Without an address, a local Ray instance with 2 CPUs and that resource.

Ray keeps retrying an address where no cluster answers (minutes of log lines), so an address
is checked first: it must resolve and accept a TCP connection.
"""
import os
import socket
import sys
import threading
import time

from ..errors import ConfigError

RESOURCE = "gphint_node"
CONNECT_TIMEOUT_S = 5.0
INIT_TIMEOUT_S = 60.0
REMEDY = "start each node with: ray start ... --resources='{\"%s\": 1}'" % RESOURCE


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs the ray package, which is not installed: "
                          "pip install 'gphint[ray]'") from None
    return ray


def check_address(address):
    """Refuse at once an address that cannot be a Ray cluster (Ray itself would retry)."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("--ray %r: expected HOST:PORT of a Ray cluster's head (GCS), e.g. "
                          "10.0.0.1:6379, or auto" % address)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except socket.gaierror as e:
        raise ConfigError("--ray %r: cannot resolve %s (%s)" % (address, host, e.strerror)) from None
    except OSError as e:
        raise ConfigError("--ray %r: no Ray cluster answers there (%s)"
                          % (address, e.strerror or e)) from None


def _init_with_deadline(ray, **kw):
    """ray.init, but a cluster that accepts the connection and never answers ends the sweep
    with one line instead of hanging it."""
    def give_up():
        print("gphint: error: --ray %r: the Ray cluster did not answer within %.0f s"
              % (kw.get("address"), INIT_TIMEOUT_S), file=sys.stderr)
        os._exit(2)
    timer = threading.Timer(INIT_TIMEOUT_S, give_up)
    timer.daemon = True
    timer.start()
    try:
        ray.init(**kw)
    finally:
        timer.cancel()


def connect(address):
    """(ray, whether this process started the instance and must shut it down)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    quiet = dict(log_to_driver=False, include_dashboard=False, configure_logging=False)
    if address is None:
        try:
            ray.init(num_cpus=2, resources={RESOURCE: 1}, **quiet)
        except Exception as e:          # Ray raises bare Exception when its raylet is late
            ray.shutdown()
            raise ConfigError("--ray: the local Ray instance did not start: %s"
                              % (str(e).strip().splitlines() or [type(e).__name__])[-1]) from None
    else:
        check_address(address)
        _init_with_deadline(ray, address=address, **quiet)
    return ray, True


class RayCells:
    """The local backend's interface (gphint.sweep.local.LocalCells) over Ray tasks."""

    def __init__(self, address, debug=False):
        from . import raytask
        self.ray, self.owned = connect(address)
        nodes = self.ray.cluster_resources().get(RESOURCE, 0)
        if nodes < 1:
            self.close()
            raise ConfigError("--ray: no node of the Ray cluster offers the %r resource that "
                              "keeps runs one per node: %s" % (RESOURCE, REMEDY))
        self.ray.cloudpickle.register_pickle_by_value(raytask)
        self.task = self.ray.remote(max_calls=1, num_cpus=1, resources={RESOURCE: 1},
                                    max_retries=0)(raytask.run_cell)
        self.debug = debug
        self.running = {}           # ObjectRef -> (cell, attempt)

    def free_slots(self):
        # one task in flight per node (the resource would queue more): a cell's wall time is
        # then its dispatch and run, not a wait in Ray's queue
        return int(self.ray.cluster_resources().get(RESOURCE, 1)) - len(self.running)

    def start(self, cell, attempt):
        self.running[self.task.remote(cell.argv(), self.debug)] = (cell, attempt, time.monotonic())

    def poll(self, timeout=0.2):
        if not self.running:
            return []
        ready, _ = self.ray.wait(list(self.running), num_returns=len(self.running), timeout=timeout)
        done = []
        for ref in ready:
            cell, attempt, t0 = self.running.pop(ref)
            try:
                rec, node, _ = self.ray.get(ref)
            except self.ray.exceptions.RayError as e:
                lines = str(e).strip().splitlines() or [type(e).__name__]
                rec, node = {"error": "ray: " + lines[-1]}, None
            wall_s = time.monotonic() - t0
            if "strategy" not in rec:
                from ..host import parse_strategy
                spec = parse_strategy(cell.options["strategy"])
                rec = dict(rec, strategy=str(spec), strategy_name=spec.name)
            done.append((cell, attempt, rec, node, wall_s))
        return done

    def stop(self):
        for ref in self.running:
            self.ray.cancel(ref, force=True)
        self.running = {}

    def close(self):
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()
            self.owned = False
