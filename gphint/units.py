"""Sizes as users write them ("64M", "1G", 4096) and as people read them."""
import re

from .errors import ConfigError

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40,
          "TIB": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(size, what="size"):
    """Bytes from an int or a string like '64M', '1.5G', '4096'.  Must be > 0."""
    if isinstance(size, bool):
        raise ConfigError("%s must be a byte count or a string like '64M', got %r" % (what, size))
    if isinstance(size, int):
        n = size
    elif isinstance(size, str):
        m = _SIZE_RE.match(size)
        unit = m.group(2).upper() if m else None
        if not m or unit not in _UNITS:
            raise ConfigError("%s %r is not a size (examples: 4096, '64M', '1G')" % (what, size))
        n = int(float(m.group(1)) * _UNITS[unit])
    else:
        try:
            n = int(size)
        except (TypeError, ValueError):
            raise ConfigError("%s must be a byte count or a string like '64M', got %r" % (what, size)) from None
        if n != size:
            raise ConfigError("%s must be a whole number of bytes, got %r" % (what, size))
    if n <= 0:
        raise ConfigError("%s must be positive, got %r" % (what, size))
    return n


def fmt_bytes(n):
    """'12.3 MiB' -- for tables and messages."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024
