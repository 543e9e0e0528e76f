"""The function a Ray task runs on a node: one cell, `gphint run` in a child of the task's
fresh worker process, on the gphint installed *there*.

Ray pickles this module by value (gphint.sweep.raycells), so that a node without gphint can
load the task and say so, instead of failing to unpickle it with a traceback.  Hence no
gphint import at the top.
"""


def run_cell(run_argv, debug):
    """(record, node, wall seconds) of one cell on this node."""
    import socket
    import tempfile
    try:
        from gphint.sweep import local
    except ImportError as e:
        return ({"error": "node %s has no gphint with sweep support installed (%s): pip install "
                          "gphint there, in the Python Ray runs" % (socket.gethostname(), e)},
                {"hostname": socket.gethostname()}, 0.0)
    with tempfile.TemporaryDirectory(prefix="gphint-raycell-") as tmp:
        rec, wall_s = local.run_cell(run_argv, tmp, debug)
    return rec, local.node_info(), wall_s
