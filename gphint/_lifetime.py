"""Lifetime of objects that own kernel resources (mappings, file descriptors)."""


class Closeable:
    """A context manager that calls close(), and calls it again at garbage collection so a
    forgotten object still gives its mapping or descriptor back.  close() must be idempotent;
    an error at collection time is swallowed (the interpreter may be shutting down)."""

    def close(self):
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
