"""The guest side: an OS memory manager that hints (issue 4)."""
