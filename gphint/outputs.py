"""Where results go: regular files only, checked before a run and replaced atomically.

`open(path, "w")` or a rename onto the path would write into a FIFO (blocking until a reader
comes), into a device, or replace a device node with a regular file (as root, `--json
/dev/full` turned /dev/full into a file).  A results path must name a regular file, a symlink
to one (the link's target is written), or nothing yet; it is checked when the options are
read, so that a bad path fails before minutes of work, and again at the write, which goes to
a temporary file in the same directory renamed over the target (readers never see half a
document, and a failed write leaves the old file as it was).
"""
import os
import stat
import tempfile

from .errors import ConfigError

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode):
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def target_of(path, option="path"):
    """The regular file that writing `path` replaces (a symlink's target), after checking that
    it is one or does not exist yet and that its directory can take a new file."""
    path = os.fspath(path)
    if not path:
        raise ConfigError("%s: empty path" % option)
    target = os.path.realpath(path) if os.path.islink(path) else os.path.abspath(path)
    if os.path.islink(path) and not os.path.lexists(target):
        raise ConfigError("%s %r is a dangling symlink (to %s)" % (option, path, target))
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise ConfigError("%s %r: %s" % (option, path, e.strerror)) from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        via = "" if target == os.path.abspath(path) else " (a symlink to %s)" % target
        raise ConfigError("%s %r%s is %s: results are written to regular files only"
                          % (option, path, via, _kind(st.st_mode)))
    # the nearest existing ancestor must be a writable directory (missing ones are created)
    d = os.path.dirname(target)
    while not os.path.lexists(d):
        d = os.path.dirname(d)
    if not os.path.isdir(d):
        raise ConfigError("%s %r: %s is not a directory" % (option, path, d))
    if not os.access(d, os.W_OK | os.X_OK):
        raise ConfigError("%s %r: directory %s is not writable" % (option, path, d))
    return target


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path, write, option="path", binary=False):
    """Call write(f) on a temporary file next to path's target, then rename it over the target
    (keeping an existing file's permissions).  Returns the target."""
    target = target_of(path, option)
    d = os.path.dirname(target)
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(target) + ".", suffix=".tmp")
    try:
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb" if binary else "w") as f:
            fd = -1
            write(f)
        target_of(path, option)       # still a regular file (or absent) after the write
        os.replace(tmp, target)
    except BaseException as e:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, ConfigError) and e.filename is None:
            # a full or read-only filesystem: say which file (the bare OSError names none)
            raise OSError(e.errno, "%s (writing %s %s)" % (e.strerror, option, target)) from None
        raise
    return target
