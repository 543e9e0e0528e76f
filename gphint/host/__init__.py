"""The host side: overcommit budget, reclaim strategies, host swap, and the peers it is compared with."""
from .host import Host, HostThreadDied
from .spec import STRATEGIES, StrategySpec, parse_strategies, parse_strategy

__all__ = ["Host", "HostThreadDied", "STRATEGIES", "StrategySpec", "parse_strategy", "parse_strategies"]
