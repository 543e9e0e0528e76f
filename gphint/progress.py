"""Progress bars for anything longer than a few seconds: tqdm on stderr, off with --quiet or
when stderr is not a terminal (logs and pipes get no control characters)."""
import sys

from tqdm import tqdm


def enabled(quiet):
    return not quiet and sys.stderr.isatty()


class Bar:
    """A bar from 0 to 100 (percent done); `update_to(percent)` moves it forward."""

    def __init__(self, desc, quiet=False):
        self._bar = tqdm(total=100, desc=desc, leave=False, file=sys.stderr,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}",
                         disable=not enabled(quiet))
        self._at = 0

    def update_to(self, percent):
        percent = int(min(percent, 100))
        if percent > self._at:
            self._bar.update(percent - self._at)
            self._at = percent

    def describe(self, desc):
        self._bar.set_description_str(desc)

    def close(self):
        self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
