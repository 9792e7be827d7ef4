"""The child process that parses an untrusted NIR (HDF5) file for :func:`spiketriton.export.from_nir`.

HDF5's C library is not safe on hostile bytes: one flipped byte can crash it (SIGSEGV) or send it
into an endless loop. So the parent never parses a NIR file itself: it starts this script with
``sys.executable -I -S <this file>`` in a clean environment (no torch, no spiketriton: only numpy and
h5py are imported, which takes about 0.13 s) and hands it the file's bytes on stdin. The script

1. reads one JSON line (the parent's import paths for numpy/h5py and the limits), then the file image;
2. imports numpy and h5py, drops HDF5's filter-plugin search path (a file must not make us load a
   shared library) and lowers its own limits: no core dumps, no files written, a few descriptors, an
   address-space cap (``RLIMIT_AS``) and a CPU-time cap (``RLIMIT_CPU``, SIGXCPU past it);
3. walks the HDF5 tree as ``nir.read`` does (groups become dicts, datasets values, bytes strings), but
   follows hard links only (a soft or external link, external raw storage and virtual datasets would
   make HDF5 open other files), bounds the depth, the number of objects and the bytes of every dataset
   before reading it, and accepts only booleans, integers, floats and strings;
4. writes the result to stdout as plain data, never pickle: ``OK\\n``, an 8-byte little-endian length,
   a JSON tree, then the raw bytes of the arrays it names (dtype and shape in the JSON). A file it
   refuses gives ``ER\\n`` and a one-line reason.

A crash, a hang or a memory error here is the child's alone: the parent sees the exit status, the
signal or its own wall-clock timeout, and raises :class:`spiketriton.export.NIRFormatError`.

Nothing here may import spiketriton (that would import torch into the child).
"""

import io
import json
import struct
import sys

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX: the parent's wall-clock timeout still applies
    resource = None


def _limit(which, value):
    if resource is None:  # pragma: no cover
        return
    soft, hard = resource.getrlimit(which)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(which, (value, hard))


class Refused(Exception):
    """The file is not one we parse; the message says why."""


def _walk(h5py, np, root, lim):
    arrays, count = [], [0]
    total = [0]
    seen = set()

    def data(ds, where):
        if ds.shape is None:
            raise Refused(f"{where}: a dataset without a dataspace (HDF5 null space)")
        if ds.is_virtual:
            raise Refused(f"{where}: a virtual dataset (its data lives in other files)")
        if ds.external:
            raise Refused(f"{where}: a dataset with external storage (its data lives in other files)")
        if len(ds.shape) > lim["max_rank"]:
            raise Refused(f"{where}: a dataset of rank {len(ds.shape)}, beyond the limit of {lim['max_rank']}")
        n = 1
        for d in ds.shape:
            n *= int(d)
        dt = ds.dtype
        if h5py.check_string_dtype(dt) is not None:
            if n > lim["max_strings"]:
                raise Refused(f"{where}: {n} strings, beyond the limit of {lim['max_strings']}")
            v = ds[()]
            a = np.asarray(v, dtype=object)

            def text(x):
                if isinstance(x, bytes):
                    x = x.decode("utf-8")
                if not isinstance(x, str):
                    raise Refused(f"{where}: a string dataset holds a {type(x).__name__}")
                if len(x) > lim["max_string_chars"]:
                    raise Refused(f"{where}: a string of {len(x)} characters, beyond the limit of "
                                  f"{lim['max_string_chars']}")
                return x

            if a.ndim == 0:
                return {"s": text(a[()])}
            return {"s": [text(x) for x in a.reshape(-1)], "shape": list(a.shape)}
        if dt.kind not in "biuf" or dt.fields is not None or dt.subdtype is not None:
            raise Refused(f"{where}: a dataset of HDF5 type {dt} (only booleans, integers, floats and strings are "
                          f"NIR data)")
        nbytes = n * dt.itemsize
        if nbytes > lim["max_array_bytes"]:
            raise Refused(f"{where}: a dataset of shape {tuple(ds.shape)} ({nbytes} bytes), beyond the limit of "
                          f"{lim['max_array_bytes']} bytes for one array")
        total[0] += nbytes
        if total[0] > lim["max_total_bytes"]:
            raise Refused(f"the datasets hold more than {lim['max_total_bytes']} bytes, the limit for a NIR file")
        a = np.asarray(ds[()])
        if a.shape != tuple(ds.shape) or a.dtype.kind not in "biuf":
            raise Refused(f"{where}: read back as {a.dtype}{a.shape}, declared {dt}{tuple(ds.shape)}")
        a = np.array(a, dtype=a.dtype.newbyteorder("<"), order="C")  # 0-d stays 0-d
        arrays.append(a)
        return {"a": len(arrays) - 1, "dtype": a.dtype.str, "shape": list(a.shape)}

    def group(g, where, depth):
        if depth > lim["max_depth"]:
            raise Refused(f"{where}: groups nested deeper than {lim['max_depth']} levels")
        out = {}
        for key in g.keys():
            count[0] += 1
            if count[0] > lim["max_objects"]:
                raise Refused(f"more than {lim['max_objects']} HDF5 objects, the limit for a NIR file")
            here = f"{where}/{key}"
            link = g.get(key, getlink=True)
            if link is None:
                raise Refused(f"{here}: a link that is listed but cannot be read (a damaged link table)")
            if not isinstance(link, h5py.HardLink):
                raise Refused(f"{here}: a link of kind {type(link).__name__} (only hard links are followed: a link "
                              f"may name another file)")
            obj = g[key]
            addr = _address(h5py, obj)
            if addr is not None and addr in seen:
                raise Refused(f"{here}: an object linked from two places (the tree has a cycle or a shared node)")
            seen.add(addr)
            if isinstance(obj, h5py.Group):
                out[key] = {"g": group(obj, here, depth + 1)}
            elif isinstance(obj, h5py.Dataset):
                out[key] = data(obj, here)
            else:
                raise Refused(f"{here}: a {type(obj).__name__}, expected a group or a dataset")
        return out

    seen.add(_address(h5py, root))
    return group(root, "", 0), arrays


def _address(h5py, obj):
    """The object's identity in the file (its address or token), to see a node linked twice."""
    info = h5py.h5o.get_info(obj.id)
    token = getattr(info, "token", None)
    return token if token is not None else getattr(info, "addr", None)


def main():
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    config = json.loads(stdin.readline())
    sys.path[:] = config["path"]
    image = stdin.read()
    lim = config["limits"]

    import numpy as np
    import h5py

    while h5py.h5pl.size():  # no filter plugins: a file must not make us dlopen a library
        h5py.h5pl.remove(0)
    if resource is not None:
        _limit(resource.RLIMIT_CORE, 0)
        _limit(resource.RLIMIT_FSIZE, 0)
        _limit(resource.RLIMIT_NOFILE, 8)  # stdin/out/err and a few spare: the image is parsed in memory
        _limit(resource.RLIMIT_AS, int(lim["address_space_bytes"]))
        used = resource.getrusage(resource.RUSAGE_SELF)  # the limit counts from the start: add what is spent
        _limit(resource.RLIMIT_CPU, int(used.ru_utime + used.ru_stime) + 1 + int(lim["cpu_seconds"]))

    try:
        if len(image) > lim["max_file_bytes"]:
            raise Refused(f"{len(image)} bytes, beyond the limit of {lim['max_file_bytes']}")
        with h5py.File(io.BytesIO(image), "r") as f:
            tree, arrays = _walk(h5py, np, f, lim)
        head = json.dumps(tree, allow_nan=False).encode("utf-8")
    except Refused as e:
        stdout.write(b"ER\n" + str(e).encode("utf-8", "replace"))
        stdout.flush()
        return 0
    except Exception as e:  # h5py/HDF5 errors, MemoryError, RecursionError, UnicodeDecodeError, ...
        msg = str(e).splitlines()[0] if str(e) else ""
        stdout.write(b"ER\n" + f"{type(e).__name__}: {msg}"[:500].encode("utf-8", "replace"))
        stdout.flush()
        return 0
    stdout.write(b"OK\n" + struct.pack("<Q", len(head)) + head)
    for a in arrays:
        stdout.write(a.tobytes())
    stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
