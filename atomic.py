"""The one atomic file write of the project: readers see the old file or the complete new one, never a torn one."""

import os


def fsync_dir(path: str) -> None:
    """Make a rename in directory `path` durable (ext4/xfs need the directory entry fsynced after a rename)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write_fn, tmp: str | None = None) -> None:
    """write_fn(binary file) on `path + '.tmp'` (or `tmp`), fsync, rename over `path`, fsync the directory; on any
    error `path` is untouched and the temporary file removed."""
    tmp = tmp or path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))
