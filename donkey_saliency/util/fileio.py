"""Files written so that nothing is ever half-written, with the modes open() would give; the cache
directory; content digests. Below everything but errors.py (standard library otherwise)."""
import hashlib
import os
import tempfile

from ..errors import InputError


def default_file_mode():
    """0o666 less the process umask, as open() would give a new file (read without changing the
    umask, which is process-wide and not thread-safe to flip)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


def atomic_write(path, data):
    """Write to a temp file beside ``path`` and rename: nothing is ever half-written."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, default_file_mode())  # mkstemp makes owner-only files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def default_cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "donkey_saliency")


def file_digest(path):
    """Content hash of a pilot file, or of every file of a SavedModel directory."""
    sha = hashlib.sha256()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                sha.update(os.path.relpath(full, path).encode())
                with open(full, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        sha.update(chunk)
    else:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                sha.update(chunk)
    return sha.hexdigest()


def read_limited(path, limit, what, error_class=None):
    """The bytes of ``path``, reading at most ``limit`` + 1 of them: ``error_class`` (InputError by
    default) naming the limit when the file holds more. For files a tool is handed, which may be
    hostile: a bounded read never fills memory, whatever size the file claims or has."""
    with open(path, "rb") as handle:
        too_big = os.fstat(handle.fileno()).st_size > limit  # a regular file says so unread
        data = b"" if too_big else handle.read(limit + 1)  # others (a pipe, /dev/zero) are read up to it
    if too_big or len(data) > limit:
        raise (error_class or InputError)("%s: over %s, more than %s can be; refusing to read it"
                                          % (path, size_text(limit), what))
    return data


def size_text(count):
    """1048576 -> '1 MiB': a limit as a user reads it."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return "%g %s" % (round(count / float(1 << shift), 1), unit)
    return "%d bytes" % count


def json_bytes(value, indent=1):
    """``value`` as UTF-8 JSON text with every NaN or infinity written as null (bare NaN is not
    JSON); allow_nan=False guards against any left."""
    import json
    import math

    def finite(item):
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if isinstance(item, dict):
            return {key: finite(v) for key, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [finite(v) for v in item]
        return item

    return (json.dumps(finite(value), indent=indent, allow_nan=False) + "\n").encode("utf-8")
