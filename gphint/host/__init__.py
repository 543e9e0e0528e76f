"""The host side: overcommit budget, reclaim strategies, host swap, peers (issue 5)."""
