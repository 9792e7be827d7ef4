"""Opening files we did not write: regular files only, never more bytes than a format allows.

A path may name a FIFO (``open`` blocks until a writer comes), a device such as ``/dev/zero`` (its
size reads as 0, so a size check passes, and reading never ends), or a directory. Each is refused
before a byte is read: the file is opened without blocking (``O_NONBLOCK``, which a FIFO honours at
open and a regular file ignores) and checked with ``fstat`` on the open descriptor, so a symlink is
judged by what it points to and a file swapped after the check is not read.
"""

from __future__ import annotations

import os
import stat


def open_regular(path, who: str) -> int:
    """An ``O_RDONLY`` descriptor of ``path``, or ``ValueError`` naming ``who`` when it is not a regular
    file (``OSError`` when it cannot be opened at all)."""
    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                    else "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
            raise ValueError(f"{who}: {os.fspath(path)} is {kind}; expected a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular(path, who: str) -> None:
    """Raise like :func:`open_regular` unless ``path`` is a regular file (for readers that open the
    path themselves, e.g. safetensors and h5py)."""
    os.close(open_regular(path, who))


def read_regular(path, who: str, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit + 1`` of them (so a caller sees that a
    file grew past its limit); ``ValueError`` when it is not a regular file."""
    fd = open_regular(path, who)
    with os.fdopen(fd, "rb") as f:
        return f.read(limit + 1)
