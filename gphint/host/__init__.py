"""The host side: overcommit budget, reclaim strategies, host swap, peers (issue 5)."""
from .host import Host, HostThreadDied
from .spec import STRATEGIES, StrategySpec, parse_strategies, parse_strategy

__all__ = ["Host", "HostThreadDied", "STRATEGIES", "StrategySpec", "parse_strategy", "parse_strategies"]
