"""Opening files we did not write: regular files only, never more bytes than a format allows; and
writing files so that a failure never leaves a partial one.

A path may name a FIFO (``open`` blocks until a writer comes), a device such as ``/dev/zero`` (its
size reads as 0, so a size check passes, and reading never ends), or a directory. Each is refused
before a byte is read: the file is opened without blocking (``O_NONBLOCK``, which a FIFO honours at
open and a regular file ignores) and checked with ``fstat`` on the open descriptor, so a symlink is
judged by what it points to and a file swapped after the check is not read.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile


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


def _umask() -> int:
    """The process's umask, read without changing it where /proc says it (os.umask can only be read by
    setting it, which races with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    m = os.umask(0o022)
    os.umask(m)
    return m


def write_atomic(path, data: bytes, who: str = "write") -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the complete new one, never a
    part: the bytes go to a temporary file in the same directory (``.<name>.<random>.tmp``), which is
    fsynced, given an ordinary file's mode (``0o666`` less the umask, as ``open()`` creates files: ``0o644``
    under the usual umask 022) and renamed over ``path``. On any
    failure (a full disk, a file-size limit, a read-only directory, an interrupt) the temporary file
    is removed, ``path`` is left as it was, and the error is re-raised; an ``OSError`` keeps its class
    and errno and gains a message naming ``who`` and ``path``.

    Plain Python I/O only: a failed ``write`` raises (CPython ignores ``SIGXFSZ``, so exceeding
    ``RLIMIT_FSIZE`` is ``EFBIG``) instead of killing the process as a C library may.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{who}: data must be bytes, got {type(data).__name__}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; ours are ordinary files (open() would honour the umask)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            raise type(e)(e.errno, f"{who}: cannot write {path!r}: {e.strerror or e}") from None
        raise
    with contextlib.suppress(OSError):  # make the rename durable where directories can be fsynced
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
