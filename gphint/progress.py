"""Progress bars for anything longer than a few seconds: tqdm on stderr, off with --quiet or
when stderr is not a terminal (logs and pipes get no control characters)."""
import sys

from tqdm import tqdm


def enabled(quiet):
    return not quiet and sys.stderr.isatty()


class Bar:
    """A bar over `total` units (seconds of a run); `update_to(x)` moves it to x."""

    def __init__(self, total, desc, quiet=False, unit="s"):
        self._bar = tqdm(total=round(total, 1), desc=desc, unit=unit, leave=False, file=sys.stderr,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} {unit}",
                         disable=not enabled(quiet))
        self._at = 0.0

    def update_to(self, x):
        x = round(x, 1)
        if x > self._at:
            self._bar.update(x - self._at)
            self._at = x

    def describe(self, desc):
        self._bar.set_description_str(desc)

    def close(self):
        self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
