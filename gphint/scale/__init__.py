"""`gphint scale`: fleets of N guests on vCPU threads, and what taking memory back costs the host
and the guests as N grows (config, fleet, takeback, run, report)."""
