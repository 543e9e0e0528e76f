"""The guest side: an OS memory manager that hints (Schwidefsky's guest page hinting, 2006).

Guest (guest.py) ties together the buddy allocator, the page cache over real files
(pagecache.py), anonymous memory with swap and swap cache (anon.py), deterministic content
(content.py), the file set (files.py) and the workloads (workloads.py).
"""
