"""A tub for the review page: the drive as compact arrays (``TubIndex``), read with tub.py's readers
record by record, never holding the records; and donkeycar's delete marks (``set_deleted``), never
written beside a live writer (``live_writer``)."""
import array
import json
import os
import time

import numpy as np

from ..errors import InputError
from ..util.fileio import atomic_write
from ..keys import LAG_KEY, MODE_KEY, TIMELINE_KEYS
from .read import (
    IMAGE_TYPES, parse_v2_line, read_v1_meta, read_v1_record, read_v2_manifest, tub_version, v1_image_paths, v1_record_numbers, v1_session, v1_start_ms, v2_catalog_lines, v2_image_paths)

MODES = ("user", "local_angle", "local")  # donkeycar's drive modes; code len(MODES): other or absent
RECENT_WRITE_S = 10.0  # a manifest.json changed this recently is watched for a further change ...
WATCH_S = 1.5  # ... for this long (donkeycar's writer rewrites it with every record: 20 times a second)


class TubBeingWritten(InputError):
    """Marking records deleted in a tub a writer holds: refused (its next update would lose them)."""


class TubIndex(object):
    """A tub's drive as compact arrays, read in one pass and never holding its records: per record
    the ``TIMELINE_KEYS`` values (float32, NaN where absent), the drive mode (a code into ``MODES``),
    ``_timestamp_ms``, the saliency lag and where the record lives on disk (~40 bytes a record).
    ``record(i)`` reads one record back; ``refresh()`` reads what a tub being written has added and
    the current deleted marks. v2 and v1 tubs; ``index`` is the record's position, as in
    ``open_tub``."""

    def __init__(self, path):
        self.path, self.version = tub_version(path)
        self.values = [array.array("f") for _ in TIMELINE_KEYS]
        self.modes = array.array("B")
        self.timestamps = array.array("d")
        self.lags = array.array("f")
        self.where = array.array("q")  # v2: byte offset in its catalog; v1: record number
        self.catalog = array.array("H")  # v2: catalog number
        self._unreadable = set()
        self._marked = set()  # deleted_indexes (v2) / excluded positions (v1)
        self._position = (0, 0)  # v2: where the next catalog line starts
        self._catalog_paths = []
        self.inputs, self.types = [], []
        self.refresh()

    def __len__(self):
        return len(self.modes)

    @property
    def image_keys(self):
        return [k for k, t in zip(self.inputs, self.types) if t in IMAGE_TYPES]

    def refresh(self):
        """Read records added since the last call and the current deleted marks; how many were added."""
        before = len(self)
        if self.version == 2:
            self._refresh_v2()
        else:
            self._refresh_v1()
        return len(self) - before

    def _append(self, record, where, catalog=0):
        index = len(self.modes)
        if record is None:
            self._unreadable.add(index)
            record = {}
        for values, key in zip(self.values, TIMELINE_KEYS):
            values.append(_float_or_nan(record.get(key)))
        mode = record.get(MODE_KEY)
        self.modes.append(MODES.index(mode) if mode in MODES else len(MODES))
        self.timestamps.append(_float_or_nan(record.get("_timestamp_ms")))
        self.lags.append(_float_or_nan(record.get(LAG_KEY)))
        self.where.append(where)
        self.catalog.append(catalog)

    def _refresh_v2(self):
        inputs, types, self.metadata, _, catalogs = read_v2_manifest(self.path)
        self.inputs, self.types = inputs, types
        self._catalog_paths = catalogs["paths"]
        self._marked = set(catalogs["deleted_indexes"])
        end = self._position
        for number, offset, line in v2_catalog_lines(self.path, self._catalog_paths, self._position, True):
            self._append(parse_v2_line(line), offset, number)
            end = (number, offset + len(line))
        self._position = end

    def _refresh_v1(self):
        meta, self.inputs, self.types, excluded = read_v1_meta(self.path)
        self.metadata = meta
        self._start_ms = v1_start_ms(meta)
        self._session = v1_session(self._start_ms)
        last = self.where[-1] if len(self) else -1
        for number in v1_record_numbers(self.path):
            if number > last:
                self._append(read_v1_record(self.path, number, len(self), self._start_ms, self._session), number)
        numbers = np.frombuffer(self.where, dtype=np.int64) if len(self) else np.zeros(0, np.int64)
        self._marked = set(np.nonzero(np.isin(numbers, sorted(excluded)))[0].tolist())

    def deleted(self):
        """bool array: marked deleted (v2) / excluded (v1), or unreadable."""
        flags = np.zeros(len(self), dtype=bool)
        marked = [i for i in self._marked | self._unreadable if 0 <= i < len(flags)]
        flags[marked] = True
        return flags

    def is_deleted(self, index):
        return index in self._marked or index in self._unreadable

    def array(self, key):
        """float32 array of one of ``TIMELINE_KEYS``."""
        return np.frombuffer(self.values[TIMELINE_KEYS.index(key)], dtype=np.float32) if len(self) \
            else np.zeros(0, np.float32)

    def record(self, index):
        """Record ``index`` read back from disk (a dict; empty when unreadable)."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self.version == 1:
            record = read_v1_record(self.path, self.where[index], index, self._start_ms, self._session)
        else:
            with open(os.path.join(self.path, self._catalog_paths[self.catalog[index]]), "rb") as handle:
                handle.seek(self.where[index])
                record = parse_v2_line(handle.readline())
        return record or {}

    def images(self, index, record=None):
        """{key: absolute path} of record ``index``'s image files that lie inside the tub (a record
        naming a file elsewhere, e.g. ``../x``, gets nothing for that key)."""
        record = self.record(index) if record is None else record
        paths = (v2_image_paths if self.version == 2 else v1_image_paths)(self.path, self.image_keys, record)
        inside = os.path.join(os.path.realpath(self.path), "")  # both resolved: a tub opened through a link
        return {k: p for k, p in paths.items() if os.path.realpath(p).startswith(inside)}


def _float_or_nan(value):
    try:
        return float(value) if value is not None and not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def set_deleted(tub_path, indexes, deleted=True):
    """Mark records deleted (or restore them) as donkeycar's ``Manifest.delete_records`` /
    ``restore_records`` do: their indexes in ``deleted_indexes`` of manifest.json's catalog line.
    The manifest is read again under a lock on the tub directory (two writers never lose each
    other's marks) and replaced atomically; the other lines are kept byte for byte. v2 tubs only;
    TubBeingWritten while a writer holds the tub (``live_writer``).
    Returns the sorted deleted indexes now stored."""

    path = os.path.abspath(os.fspath(tub_path))
    if not os.path.isfile(os.path.join(path, "manifest.json")):
        raise InputError("%s: marking records deleted needs a v2 tub (manifest.json)" % path)
    with _DirectoryLock(path):
        refuse_live_writer(path)
        with open(os.path.join(path, "manifest.json"), "r") as handle:
            lines = handle.read().split("\n")
        read_v2_manifest(path)  # validates
        content = [i for i, line in enumerate(lines) if line.strip()]
        catalog_line = content[4]
        catalogs = json.loads(lines[catalog_line])
        current = set(int(i) for i in catalogs.get("deleted_indexes", []))
        count = int(catalogs.get("current_index", 0))
        wanted = set(int(i) for i in indexes)
        bad = [i for i in wanted if not 0 <= i < count]
        if bad:
            raise InputError("%s: no record %d (the tub has %d)" % (path, bad[0], count))
        current = (current | wanted) if deleted else (current - wanted)
        catalogs["deleted_indexes"] = sorted(current)
        lines[catalog_line] = json.dumps(catalogs)
        atomic_write(os.path.join(path, "manifest.json"), "\n".join(lines).encode("utf-8"))
        _OUR_WRITES[path] = _signature(os.stat(os.path.join(path, "manifest.json")))
    return catalogs["deleted_indexes"]


def refuse_live_writer(tub_path):
    """TubBeingWritten when ``live_writer`` finds one: donkeycar's writer keeps manifest.json open
    and rewrites its catalog line from its own memory with every record, so a mark written beside
    it is lost (and a manifest replaced under it loses every later record)."""
    reason = live_writer(tub_path)
    if reason:
        raise TubBeingWritten("%s is being recorded (%s): marking records deleted now would be lost; stop "
                              "the car's recording first" % (tub_path, reason))


def live_writer(tub_path, watch_s=WATCH_S):
    """Why a v2 tub looks like it is being written, or None. Two signs: a process holds its
    manifest.json open for writing (Linux ``/proc``; processes of other users are not visible), or
    manifest.json changed within ``RECENT_WRITE_S`` and changes again within ``watch_s`` (a writer
    on another machine, over a shared folder). An idle writer on another machine is not seen."""
    manifest = os.path.join(tub_path, "manifest.json")
    try:
        stat = os.stat(manifest)
    except OSError:
        return None
    pid = _process_writing(os.path.realpath(manifest), stat)
    if pid is not None:
        return "process %d holds its manifest.json open for writing" % pid
    if time.time() - stat.st_mtime > RECENT_WRITE_S or _OUR_WRITES.get(os.path.abspath(tub_path)) == _signature(stat):
        return None  # not changed lately, or by set_deleted itself
    deadline = time.monotonic() + watch_s
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            now = os.stat(manifest)
        except OSError:
            return "its manifest.json is being replaced"
        if _signature(now) != _signature(stat):
            return "its manifest.json keeps changing"
    return None


_OUR_WRITES = {}  # tub path -> _signature of the manifest set_deleted wrote last


def _signature(stat):
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def _process_writing(real_path, stat):
    """The id of a process (this one included) with ``real_path`` open for writing, or None."""
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None  # no /proc: not Linux
    for pid in pids:
        fd_dir = os.path.join("/proc", pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or another user's
        for fd in fds:
            try:
                if os.readlink(os.path.join(fd_dir, fd)) != real_path:
                    continue
                same = os.stat(os.path.join(fd_dir, fd))
                with open(os.path.join("/proc", pid, "fdinfo", fd)) as handle:
                    flags = next((int(line.split()[1], 8) for line in handle if line.startswith("flags:")), 0)
            except (OSError, ValueError, IndexError):
                continue
            if (same.st_dev, same.st_ino) == (stat.st_dev, stat.st_ino) and flags & os.O_ACCMODE != os.O_RDONLY:
                return int(pid)
    return None


class _DirectoryLock(object):
    """An exclusive flock on a directory (where fcntl exists): what two writers of one tub share."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return self
        self.fd = os.open(self.path, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None
        return False
