"""Experiments: guests + a host + a strategy, run for a while -> one results record (JSON).

`run_one(config, strategy)` runs in this process (runner); `compare(config, strategies)` runs
each strategy in a fresh child process (comparison).  The record's fields are the contract
documented in docs/results.md; RunConfig (config) holds every option of a run.
"""
from .comparison import child_command, compare
from .config import MAX_SEED, MIN_GUEST_MEM_BYTES, RunConfig, meminfo_bytes
from .results import SCHEMA_VERSION, environment, git_commit, results_document, write_json
from .runner import FULL_BELOW_BYTES, Runner, explain_full_tmpdir, run_one
from .stop import STOP, Stopped

__all__ = ["FULL_BELOW_BYTES", "MAX_SEED", "MIN_GUEST_MEM_BYTES", "RunConfig", "Runner", "SCHEMA_VERSION",
           "STOP", "Stopped", "child_command", "compare", "environment", "explain_full_tmpdir",
           "git_commit", "meminfo_bytes", "results_document", "run_one", "write_json"]
