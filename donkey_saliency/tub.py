"""Saliency in tubs: the recording contract, tub reading (v1 and v2), and backfill.

Recording (``recording_inputs``): the manage.py helper adds ``RECORD_KEYS``/``RECORD_TYPES`` to the
TubWriter's lists, unless ``DATA_PATH`` already holds a tub with other inputs - donkeycar's
``Manifest`` asserts on that, so the user gets one line saying what to do instead.

Backfill (``backfill``): a copy of an existing tub with the saliency keys added, computed in
batches. The source is only read. The copy is written into a hidden temp directory beside the
target and renamed at the end, so an interrupted run leaves no half-written tub and a rerun
starts from scratch.

Review (``TubIndex``, ``set_deleted``): the drive as compact arrays for the review page, read with
the same readers record by record, never holding the records; and donkeycar's delete marks.

Tub layouts read here:
- v2 (donkeycar >= 4): ``manifest.json`` (5 JSON lines: inputs, types, user metadata, manifest
  metadata, catalog metadata with ``deleted_indexes``), ``catalog_N.catalog`` (one JSON record a
  line; a record's index is its line number across catalogs), ``images/``.
- v1 (donkeycar 3): ``meta.json`` (inputs, types, start), ``record_N.json``, images beside them,
  ``exclude.json`` (excluded record numbers).
The copy is always v2. Deleted (v2) and excluded (v1) records are kept, still marked deleted, with
saliency computed for them too, so restoring one in ``donkey ui`` gives a complete record.
"""
import collections
import json
import logging
import os
import re
import shutil
import sys
import time

import numpy as np

from .errors import InputError
from .opencv import import_cv2

logger = logging.getLogger(__name__)

RECORD_KEYS = ["saliency/image_array", "saliency/mask", "saliency/lag_ms"]
RECORD_TYPES = ["image_array", "image_array", "float"]
OVERLAY_KEY, MASK_KEY, LAG_KEY = RECORD_KEYS
NO_MASK_LAG_MS = -1.0  # lag recorded before the first mask exists (the part's value)
JPEG_QUALITY = 75  # what donkeycar's TubWriter writes (PIL's default)
BACKFILL_SUFFIX = "_saliency"
CAMERA_KEY = "cam/image_array"
IMAGE_TYPES = ("image_array", "gray16_array", "image")
CATALOG_MAX_LEN = 1000  # donkeycar's default records per catalog file


# --------------------------------------------------------------------------------------------
# Recording

def recording_inputs(data_path, inputs, types, auto_create=False):
    """The TubWriter's (inputs, types, message) with the saliency keys added where that is safe.

    donkeycar's ``Manifest`` asserts when an existing tub's inputs/types differ from the writer's
    (unless the writer gives none). When ``DATA_PATH`` already holds such a tub the lists come back
    unchanged and ``message`` tells the user what to do; otherwise ``message`` is None."""
    inputs, types = list(inputs), list(types)
    extended_inputs = inputs + [k for k in RECORD_KEYS if k not in inputs]
    extended_types = types + [t for k, t in zip(RECORD_KEYS, RECORD_TYPES) if k not in inputs]
    if auto_create or not data_path:
        return extended_inputs, extended_types, None  # a new tub directory every run
    stored = read_manifest_head(data_path)
    if stored is None:
        return extended_inputs, extended_types, None  # no tub there yet: the writer creates one
    stored_inputs, stored_types = stored
    if stored_inputs == extended_inputs and stored_types == extended_types:
        return extended_inputs, extended_types, None  # a tub recorded with saliency: carry on
    fix = "set a new DATA_PATH or AUTO_CREATE_NEW_TUB = True in myconfig.py"
    if stored_inputs == inputs and stored_types == types:
        return inputs, types, ("not recording saliency: DATA_PATH %s already holds a tub recorded without it; "
                               "to record saliency, %s" % (data_path, fix))
    return inputs, types, ("not recording saliency: DATA_PATH %s already holds a tub with other inputs, which "
                           "donkeycar will refuse to open; %s" % (data_path, fix))


def read_manifest_head(tub_path):
    """(inputs, types) stored in a v2 tub's manifest.json, or None when there is none (or it is
    empty: donkeycar then writes a fresh one)."""
    path = os.path.join(tub_path, "manifest.json")
    try:
        with open(path, "r") as handle:
            first, second = handle.readline(), handle.readline()
    except (IOError, OSError):
        return None
    if not first.strip():
        return None
    try:
        return list(json.loads(first)), list(json.loads(second))
    except ValueError:
        return ["<unreadable manifest.json>"], []


# --------------------------------------------------------------------------------------------
# Reading tubs

Entry = collections.namedtuple("Entry", "index deleted record images")
Entry.__doc__ = """One record of a source tub.

index    the record's index in the v2 copy (v2: its own; v1: its position in record-number order)
deleted  marked deleted (v2) / excluded (v1), or unreadable
record   the stored JSON record (dict; empty when unreadable)
images   {key: absolute path of the image file} for the image-typed fields
"""


class SourceTub(object):
    """A tub opened for reading: its layout, inputs, metadata and every record (deleted ones too)."""

    def __init__(self, path, version, inputs, types, metadata, manifest_metadata, max_len, entries):
        self.path = path
        self.version = version
        self.inputs = list(inputs)
        self.types = list(types)
        self.metadata = metadata
        self.manifest_metadata = manifest_metadata
        self.max_len = max_len
        self.entries = entries

    @property
    def input_types(self):
        return dict(zip(self.inputs, self.types))

    @property
    def image_keys(self):
        return [k for k, t in zip(self.inputs, self.types) if t in IMAGE_TYPES]

    @property
    def live_entries(self):
        return [e for e in self.entries if not e.deleted]

    def __len__(self):
        return len(self.live_entries)

    def missing_images(self, keys=None, include_deleted=False):
        """[(index, path)] of image files that live records refer to and that do not exist."""
        missing = []
        for entry in self.entries:
            if entry.deleted and not include_deleted:
                continue
            for key, path in entry.images.items():
                if (keys is None or key in keys) and not os.path.isfile(path):
                    missing.append((entry.index, path))
        return missing

    def check_images(self, keys=None):
        """InputError naming the first missing image (and how many are missing), if any are."""
        missing = self.missing_images(keys)
        if missing:
            index, path = missing[0]
            raise InputError("%s: record %d's image %s is missing (%d missing in all); repair or delete "
                             "those records first" % (self.path, index, os.path.relpath(path, self.path), len(missing)))


def open_tub(path):
    """Open a v2 or v1 tub for reading, or InputError saying why it is not one."""
    path = os.path.abspath(os.fspath(path)).rstrip(os.sep) or os.sep
    if not os.path.isdir(path):
        raise InputError("tub not found: %s" % path)
    if os.path.isfile(os.path.join(path, "manifest.json")):
        return _read_v2(path)
    if os.path.isfile(os.path.join(path, "meta.json")):
        return _read_v1(path)
    raise InputError("%s is not a tub (no manifest.json, and no meta.json of a donkeycar 3 tub)" % path)


def _read_v2(path):
    inputs, types, metadata, manifest_metadata, catalogs = read_v2_manifest(path)
    deleted = set(catalogs.get("deleted_indexes", []))
    image_keys = [k for k, t in zip(inputs, types) if t in IMAGE_TYPES]
    entries = []
    for _, _, line in v2_catalog_lines(path, catalogs["paths"]):
        index = len(entries)
        record = parse_v2_line(line)
        if record is None:
            # donkeycar's iterator skips such a line too; the copy keeps it as a deleted stub
            entries.append(Entry(index, True, {"_index": index}, {}))
            continue
        entries.append(Entry(index, index in deleted, record, v2_image_paths(path, image_keys, record)))
    return SourceTub(path, 2, inputs, types, metadata, manifest_metadata, int(catalogs["max_len"]), entries)


def read_v2_manifest(path):
    """A v2 tub's manifest.json as its five parts (inputs, types, metadata, manifest metadata,
    catalog metadata with ``paths``, ``max_len``, ``deleted_indexes``), or InputError."""
    try:
        with open(os.path.join(path, "manifest.json"), "r") as handle:
            lines = [line for line in handle.read().split("\n") if line.strip()]
        inputs, types, metadata, manifest_metadata, catalogs = [json.loads(line) for line in lines[:5]]
        catalogs["paths"] = [str(name) for name in catalogs["paths"]]
        catalogs["deleted_indexes"] = [int(i) for i in catalogs.get("deleted_indexes", [])]
        catalogs["max_len"] = int(catalogs.get("max_len", CATALOG_MAX_LEN))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InputError("%s: manifest.json is not a donkeycar tub manifest" % path)
    if catalogs["max_len"] < 1:
        raise InputError("%s: manifest.json's max_len is %d; records per catalog must be at least 1"
                         % (path, catalogs["max_len"]))
    if len(inputs) != len(types):
        raise InputError("%s: manifest.json lists %d inputs but %d types" % (path, len(inputs), len(types)))
    return inputs, types, metadata, manifest_metadata, catalogs


def v2_catalog_lines(path, catalog_paths, start=(0, 0), complete_only=False):
    """(catalog number, byte offset, line bytes) of every non-empty record line of a v2 tub's
    catalogs, from ``start`` = (catalog number, byte offset) on. ``complete_only``: stop at a last
    line without its newline (a tub being written), so a later call from there reads it whole."""
    for number in range(start[0], len(catalog_paths)):
        catalog = inside(path, catalog_paths[number], "catalog")
        if not os.path.isfile(catalog):
            raise InputError("%s: catalog %s listed in manifest.json is missing" % (path, catalog_paths[number]))
        with open(catalog, "rb") as handle:
            offset = start[1] if number == start[0] else 0
            handle.seek(offset)
            for line in handle:
                if complete_only and not line.endswith(b"\n"):
                    return
                if line.strip():
                    yield number, offset, line
                offset += len(line)


def parse_v2_line(line):
    """One catalog line as a record dict, or None when it is not one."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def v2_image_paths(path, image_keys, record):
    images_dir = os.path.join(path, "images")
    return {k: inside(images_dir, record[k], "record %s's %s" % (record.get("_index"), k)) for k in image_keys
            if isinstance(record.get(k), str)}


def read_v1_meta(path):
    """(meta.json dict, inputs, types, excluded record numbers) of a donkeycar 3 tub, or InputError."""
    try:
        with open(os.path.join(path, "meta.json"), "r") as handle:
            meta = json.load(handle)
        inputs, types = list(meta["inputs"]), list(meta["types"])
    except (ValueError, KeyError, TypeError):
        raise InputError("%s: meta.json is not a donkeycar 3 tub's meta.json" % path)
    if len(inputs) != len(types):  # as for a v2 manifest: the copy's manifest would pair them wrongly
        raise InputError("%s: meta.json lists %d inputs but %d types" % (path, len(inputs), len(types)))
    excluded = set()
    exclude_path = os.path.join(path, "exclude.json")
    if os.path.isfile(exclude_path):
        try:
            with open(exclude_path, "r") as handle:
                excluded = set(int(i) for i in json.load(handle))
        except (ValueError, TypeError):
            raise InputError("%s: exclude.json is not a list of record numbers" % path)
    return meta, inputs, types, excluded


_V1_RECORD = re.compile(r"^record_(\d+)\.json$")


def v1_record_numbers(path):
    """The record numbers of a donkeycar 3 tub, sorted."""
    return sorted(int(m.group(1)) for m in (_V1_RECORD.match(n) for n in os.listdir(path)) if m)


def v1_start_ms(meta):
    return int(round(float(meta.get("start", 0)) * 1000))


def v1_session(start_ms):
    return "%s_0" % time.strftime("%y-%m-%d", time.localtime(start_ms / 1000.0 if start_ms else time.time()))


def read_v1_record(path, number, index, start_ms, session):
    """Record ``number`` of a v1 tub in donkeycar 4's form (``_index``, ``_session_id``,
    ``_timestamp_ms``), or None when its file is not a JSON object."""
    try:
        with open(os.path.join(path, "record_%d.json" % number), "r") as handle:
            stored = json.load(handle)
        if not isinstance(stored, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError):
        return None
    # The v1 fields under the same keys; 'milliseconds' (since the tub's start) becomes
    # donkeycar 4's '_timestamp_ms' (epoch milliseconds).
    record = {k: v for k, v in stored.items() if k != "milliseconds"}
    record["_index"] = index
    record["_session_id"] = session
    try:
        record["_timestamp_ms"] = start_ms + int(stored.get("milliseconds", 0) or 0)
    except (TypeError, ValueError):
        record["_timestamp_ms"] = start_ms
    return record


def v1_image_paths(path, image_keys, record):
    return {k: inside(path, record[k], "record %s's %s" % (record.get("_index"), k)) for k in image_keys
            if isinstance(record.get(k), str)}


def _read_v1(path):
    meta, inputs, types, excluded = read_v1_meta(path)
    image_keys = [k for k, t in zip(inputs, types) if t in IMAGE_TYPES]
    start_ms = v1_start_ms(meta)
    session = v1_session(start_ms)
    entries = []
    for number in v1_record_numbers(path):
        index = len(entries)
        record = read_v1_record(path, number, index, start_ms, session)
        if record is None:
            entries.append(Entry(index, True, {"_index": index, "_session_id": session}, {}))
            continue
        entries.append(Entry(index, number in excluded, record, v1_image_paths(path, image_keys, record)))
    metadata = {k: v for k, v in meta.items() if k not in ("inputs", "types")}
    manifest_metadata = {"created_at": time.time(),
                         "sessions": {"all_full_ids": [session], "last_id": 0, "last_full_id": session}}
    return SourceTub(path, 1, inputs, types, metadata, manifest_metadata, CATALOG_MAX_LEN, entries)


def inside(root, name, what):
    """``root/name``, or InputError when ``name`` (from a tub's own files: hostile until checked)
    leads out of ``root`` - an absolute path, ``..``, or a link pointing elsewhere."""
    target = os.path.join(root, name)
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(target)]) != real_root:
        raise InputError("%s: %s path %r leads outside the tub; refusing it" % (root, what, name))
    return target


def camera_image_paths(path, key=CAMERA_KEY):
    """The image files of ``key`` for a tub's live records, in record order (v1 or v2 tub)."""
    source = open_tub(path)
    paths = [entry.images[key] for entry in source.live_entries if key in entry.images]
    if not paths:
        raise InputError("%s holds no %s images" % (source.path, key))
    return paths


# --------------------------------------------------------------------------------------------
# The drive as compact arrays (the review page's timeline)

MODES = ("user", "local_angle", "local")  # donkeycar's drive modes; code len(MODES): other or absent
TIMELINE_KEYS = ("user/angle", "user/throttle", "pilot/angle", "pilot/throttle")


class TubIndex(object):
    """A tub's drive as compact arrays, read in one pass and never holding its records: per record
    the ``TIMELINE_KEYS`` values (float32, NaN where absent), the drive mode (a code into ``MODES``),
    ``_timestamp_ms``, the saliency lag and where the record lives on disk (~40 bytes a record).
    ``record(i)`` reads one record back; ``refresh()`` reads what a tub being written has added and
    the current deleted marks. v2 and v1 tubs; ``index`` is the record's position, as in
    ``open_tub``."""

    def __init__(self, path):
        import array

        path = os.path.abspath(os.fspath(path)).rstrip(os.sep) or os.sep
        if not os.path.isdir(path):
            raise InputError("tub not found: %s" % path)
        if os.path.isfile(os.path.join(path, "manifest.json")):
            self.version = 2
        elif os.path.isfile(os.path.join(path, "meta.json")):
            self.version = 1
        else:
            raise InputError("%s is not a tub (no manifest.json, and no meta.json of a donkeycar 3 tub)" % path)
        self.path = path
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
        mode = record.get("user/mode")
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
        inside = os.path.join(self.path, "")
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
    other's marks) and replaced atomically; the other lines are kept byte for byte. v2 tubs only.
    Returns the sorted deleted indexes now stored."""
    from .graph import atomic_write

    path = os.path.abspath(os.fspath(tub_path))
    if not os.path.isfile(os.path.join(path, "manifest.json")):
        raise InputError("%s: marking records deleted needs a v2 tub (manifest.json)" % path)
    with _DirectoryLock(path):
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
    return catalogs["deleted_indexes"]


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


def image_file_name(index, key, extension=".jpg"):
    """donkeycar's tub v2 image name (``Tub._image_file_name``): ``12_cam_image_array_.jpg``."""
    return "_".join([str(index), key.replace("/", "_"), extension])


def read_rgb(path):
    """An image file as uint8 RGB (or grayscale (H, W)), or InputError."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (IOError, OSError):
        raise InputError("image missing: %s" % path)
    return decode_image(data, path)


def decode_image(data, source):
    cv2 = import_cv2()

    try:  # cv2.imdecode raises on an empty buffer (a 0-byte file) and returns None on other junk
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if len(data) else None
    except cv2.error:
        image = None
    if image is None:
        raise InputError("not a readable image: %s" % source)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def encode_jpeg(image, quality=JPEG_QUALITY):
    """JPEG bytes of a uint8 RGB or grayscale image."""
    cv2 = import_cv2()

    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise InputError("could not encode a JPEG image")
    return data.tobytes()


def write_png(path, image):
    """A uint8 RGB or grayscale image as PNG: encoded in memory, then written atomically."""
    cv2 = import_cv2()

    from .graph import atomic_write

    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)
    if not ok:
        raise InputError("could not encode %s" % path)
    atomic_write(path, data.tobytes())


# --------------------------------------------------------------------------------------------
# Writing tubs

class TubV2Writer(object):
    """Writes donkeycar's tub v2 layout in one pass (the files ``datastore_v2.Manifest`` and
    ``Catalog`` write, byte for byte), keeping each record's own ``_index``, ``_timestamp_ms`` and
    ``_session_id``. Records arrive in index order; images are written by the caller into
    ``images_dir``. ``close(deleted)`` writes the catalog manifests and manifest.json."""

    def __init__(self, path, inputs, types, metadata=None, manifest_metadata=None, max_len=CATALOG_MAX_LEN):
        self.path = path
        self.inputs = list(inputs)
        self.types = list(types)
        self.metadata = dict(metadata or {})
        self.manifest_metadata = dict(manifest_metadata or {"created_at": time.time()})
        self.max_len = int(max_len)
        if self.max_len < 1:
            raise InputError("records per catalog (max_len) must be at least 1, not %d" % self.max_len)
        self.images_dir = os.path.join(path, "images")
        os.makedirs(self.images_dir, exist_ok=True)
        self.count = 0
        self._catalogs = []  # (name, start_index, created_at, line_lengths)
        self._handle = None
        self._start_catalog()

    def _start_catalog(self):
        self._finish_catalog()
        name = "catalog_%d.catalog" % len(self._catalogs)
        self._catalogs.append((name, self.count, time.time(), []))
        self._handle = open(os.path.join(self.path, name), "w", newline="\n")

    def _finish_catalog(self):
        if self._handle is None:
            return
        self._handle.close()
        self._handle = None
        name, start, created, lengths = self._catalogs[-1]
        stem = os.path.splitext(name)[0]
        contents = dict(path=stem + ".catalog_manifest", created_at=created, start_index=start, line_lengths=lengths)
        with open(os.path.join(self.path, stem + ".catalog_manifest"), "w", newline="\n") as handle:
            handle.write(json.dumps(contents, allow_nan=False, sort_keys=True) + "\n")

    def write(self, record):
        if self.count > 0 and self.count % self.max_len == 0:
            self._start_catalog()
        try:
            line = json.dumps(record, allow_nan=False, sort_keys=True) + "\n"
        except ValueError:
            raise InputError("record %d holds a NaN or infinite number, which a v2 tub cannot store" % self.count)
        self._handle.write(line)
        self._catalogs[-1][3].append(len(line))
        self.count += 1

    def close(self, deleted_indexes=()):
        self._finish_catalog()
        catalog_metadata = dict(paths=[c[0] for c in self._catalogs], current_index=self.count,
                                max_len=self.max_len,
                                deleted_indexes=sorted(i for i in set(deleted_indexes) if 0 <= i < self.count))
        lines = [json.dumps(self.inputs), json.dumps(self.types), json.dumps(self.metadata),
                 json.dumps(self.manifest_metadata), json.dumps(catalog_metadata)]
        with open(os.path.join(self.path, "manifest.json"), "w", newline="\n") as handle:
            handle.write("\n".join(lines) + "\n")

    def abandon(self):
        if self._handle is not None:
            self._handle.close()
            self._handle = None


# --------------------------------------------------------------------------------------------
# Progress

class Progress(object):
    """One stderr line: ``label  done/total  pct  rate/s  ETA``. Redrawn in place on a terminal (at
    most 10 times a second), a plain line every few seconds otherwise."""

    def __init__(self, total, label, unit="frames", stream=None, enabled=True):
        self.total = max(int(total), 0)
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done = 0
        self.started = time.monotonic()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._drawn = 0.0 if self._tty else self.started  # in a log, the first line after 5 s, not at once

    @property
    def rate(self):
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, count):
        self.done += count
        now = time.monotonic()
        if self.enabled and now - self._drawn >= (0.1 if self._tty else 5.0):
            self._drawn = now
            self._draw("\r" if self._tty else "", "" if self._tty else "\n")

    def _draw(self, start, end):
        rate = self.rate
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        self.stream.write("%s%s  %d/%d %s  %3.0f%%  %.0f/s  ETA %ds%s" % (
            start, self.label, self.done, self.total, self.unit, pct, rate, int(left + 0.5), end))
        self.stream.flush()

    def close(self):
        if self.enabled:
            self._draw("\r" if self._tty else "", "\n")


# --------------------------------------------------------------------------------------------
# Backfill

BackfillResult = collections.namedtuple("BackfillResult", "path source_version records deleted masks seconds")


def default_output(tub_path):
    return os.path.abspath(os.fspath(tub_path)).rstrip(os.sep) + BACKFILL_SUFFIX


def partial_path(out_path):
    """The hidden directory a backfill writes into before the final rename."""
    parent, name = os.path.split(os.path.abspath(out_path).rstrip(os.sep))
    return os.path.join(parent, ".%s.partial" % name)


class OutputLock(object):
    """An exclusive claim on an output path: ``.NAME.lock`` beside it, created with O_EXCL and
    holding the owner's pid, removed on release. A lock whose process is gone is taken over."""

    def __init__(self, out_path):
        parent, name = os.path.split(os.path.abspath(out_path).rstrip(os.sep))
        self.path = os.path.join(parent, ".%s.lock" % name)
        self.out_path = out_path
        self._held = False

    def acquire(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None or _process_exists(holder):  # (no pid yet: it is being created)
                    raise InputError("another run (pid %s) is writing %s; wait for it, or choose another --out "
                                     "(its lock: %s)" % (holder or "?", self.out_path, self.path))
                logger.info("taking over %s: its process %d is gone", self.path, holder)
                os.unlink(self.path)
                continue
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write("%d\n" % os.getpid())
            except OSError:  # e.g. a full disk: no lock left behind
                os.unlink(self.path)
                raise
            self._held = True
            return self
        raise InputError("could not lock %s (%s keeps reappearing)" % (self.out_path, self.path))

    def _holder(self):
        try:
            with open(self.path, "r") as handle:
                return int(handle.read().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def release(self):
        if self._held:
            self._held = False
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def default_threads():
    """ONNX Runtime threads for backfill: every core but one, which the JPEG workers need (on a
    2-core machine one inference thread beside the workers measured fastest: scripts/bench_backfill.py)."""
    return max(1, (os.cpu_count() or 2) - 1)


def _split(items, parts):
    size = max(1, -(-len(items) // max(1, parts)))
    return [items[i:i + size] for i in range(0, len(items), size)]


class _Backfill(object):
    """One backfill run: decode (thread pool) -> batched inference (this thread) -> overlay, encode
    and write (thread pool), overlapped so the two cores of a small machine both stay busy."""

    def __init__(self, source, saliency, writer, image_key, alpha, colormap, workers):
        self.source = source
        self.saliency = saliency
        self.writer = writer
        self.image_key = image_key
        self.alpha = alpha
        self.colormap = colormap
        self.workers = max(1, int(workers))
        self.masks = 0

    def out_record(self, entry, has_mask):
        record = dict(entry.record)
        for key, path in entry.images.items():
            if self.source.version == 1:
                record[key] = image_file_name(entry.index, key, os.path.splitext(path)[1] or ".jpg")
            # v2: the same file name in images/
        if has_mask:
            record[OVERLAY_KEY] = image_file_name(entry.index, OVERLAY_KEY)
            record[MASK_KEY] = image_file_name(entry.index, MASK_KEY)
            record[LAG_KEY] = 0.0  # the mask was computed from this very frame
        return record

    def decode(self, entries):
        """[(camera bytes or None, RGB frame or None)] for the entries."""
        out = []
        for entry in entries:
            path = entry.images.get(self.image_key)
            data = frame = None
            if path is not None:
                try:
                    with open(path, "rb") as handle:
                        data = handle.read()
                    frame = decode_image(data, path)
                except (IOError, OSError, InputError) as error:
                    if not entry.deleted:  # deleted records may have lost their images; live ones may not
                        raise InputError("%s: record %d: %s" % (self.source.path, entry.index,
                                                               getattr(error, "strerror", None) or error))
                    frame = None
            out.append((data, frame))
        return out

    def store(self, items):
        """Copy the record's images and write its overlay and mask JPEGs."""
        from .overlay import mask_to_uint8, overlay

        images_dir = self.writer.images_dir
        for entry, record, (data, frame), mask in items:
            for key, path in entry.images.items():
                target = os.path.join(images_dir, record[key])
                if key == self.image_key and data is not None:
                    with open(target, "wb") as handle:
                        handle.write(data)
                elif os.path.isfile(path):
                    shutil.copyfile(path, target)
            if mask is not None:
                with open(os.path.join(images_dir, record[OVERLAY_KEY]), "wb") as handle:
                    handle.write(encode_jpeg(overlay(frame, mask, self.alpha, self.colormap)))
                with open(os.path.join(images_dir, record[MASK_KEY]), "wb") as handle:
                    handle.write(encode_jpeg(mask_to_uint8(mask)))

    def run(self, batch, progress=None):
        from concurrent.futures import ThreadPoolExecutor

        entries = self.source.entries
        batches = [entries[i:i + batch] for i in range(0, len(entries), batch)]
        pool = ThreadPoolExecutor(max_workers=self.workers)
        decoding = collections.deque()
        storing = collections.deque()

        def submit_decode(k):
            if k < len(batches):
                decoding.append([pool.submit(self.decode, part) for part in _split(batches[k], self.workers)])

        try:
            submit_decode(0)
            submit_decode(1)
            for k, chunk in enumerate(batches):
                decoded = [item for future in decoding.popleft() for item in future.result()]
                submit_decode(k + 2)
                frames = [frame for _, frame in decoded if frame is not None]
                masks = iter(self._masks(frames))
                items = []
                for entry, (data, frame) in zip(chunk, decoded):
                    mask = next(masks) if frame is not None else None
                    record = self.out_record(entry, mask is not None)
                    self.writer.write(record)
                    items.append((entry, record, (data, frame), mask))
                self.masks += len(frames)
                storing.extend(pool.submit(self.store, part) for part in _split(items, self.workers))
                while len(storing) > 2 * self.workers:  # bound the memory held by pending writes
                    storing.popleft().result()
                if progress is not None:
                    progress.update(len(chunk))
            while storing:
                storing.popleft().result()
        finally:
            for future in list(storing) + [f for group in decoding for f in group]:
                future.cancel()
            pool.shutdown(wait=True)

    def _masks(self, frames):
        if not frames:
            return []
        same = all(f.shape == frames[0].shape for f in frames)
        return self.saliency.masks(np.stack(frames) if same else frames)


def backfill(tub_path, model_path=None, out_path=None, batch=64, backend="auto", image_key=CAMERA_KEY,
             alpha=0.5, colormap="jet", workers=2, threads=0, progress=True, saliency=None, method="vbp"):
    """Write a copy of the tub at ``tub_path`` with saliency added; return a BackfillResult.
    ``method``: the saliency method (``methods.METHODS``).

    ``threads``: ONNX Runtime intra-op threads, 0 for ``default_threads()``; ``workers``: threads
    decoding, encoding and writing JPEGs. ``saliency``: an open ``api.Saliency`` to use instead of
    loading ``model_path``. Raises
    InputError / ModelError before anything is written when the input is bad."""
    source = open_tub(tub_path)
    out_path = os.path.abspath(os.fspath(out_path)) if out_path else default_output(source.path)
    if os.path.lexists(out_path):
        raise InputError("output %s already exists; choose another --out" % out_path)
    types = source.input_types
    if image_key not in types:
        raise InputError("%s has no %s field (its fields: %s)" % (source.path, image_key, ", ".join(source.inputs)))
    if types[image_key] not in IMAGE_TYPES:
        raise InputError("%s: %s is a %s field, not an image" % (source.path, image_key, types[image_key]))
    present = [k for k in RECORD_KEYS if k in types]
    if present:
        raise InputError("%s already has saliency (%s); review it with 'donkey-saliency render'"
                         % (source.path, ", ".join(present)))
    if int(batch) < 1:
        raise InputError("--batch must be at least 1")
    source.check_images()
    from .overlay import check_style

    alpha, colormap = check_style(alpha, colormap)
    # Before anything is written or removed: a second run to the same --out must not touch the first's copy.
    with OutputLock(out_path):
        return _backfill_locked(source, model_path, out_path, batch, backend, image_key, alpha, colormap, workers,
                                threads, progress, saliency, method)


def _backfill_locked(source, model_path, out_path, batch, backend, image_key, alpha, colormap, workers, threads,
                     progress, saliency, method):
    own = saliency is None
    if own:
        from . import load

        saliency = load(model_path, backend=backend, threads=threads or default_threads(), method=method)
    started = time.monotonic()
    work = partial_path(out_path)
    writer = None
    try:
        if own:
            saliency.__enter__()
        if os.path.lexists(work):
            logger.info("removing %s, left by an interrupted backfill", work)
            shutil.rmtree(work)
        os.makedirs(work)
        metadata = dict(source.metadata)
        metadata["saliency/model"] = os.path.basename(str(model_path or getattr(saliency.graph, "source", "")))
        metadata["saliency/backfilled_from"] = source.path
        writer = TubV2Writer(work, source.inputs + RECORD_KEYS, source.types + RECORD_TYPES, metadata,
                             source.manifest_metadata, source.max_len)
        bar = Progress(len(source.entries), "backfill", enabled=bool(progress),
                       stream=progress if hasattr(progress, "write") else None)
        run = _Backfill(source, saliency, writer, image_key, alpha, colormap, workers)
        run.run(int(batch), bar)
        writer.close(e.index for e in source.entries if e.deleted)
        bar.close()
        if os.path.lexists(out_path):
            raise InputError("output %s appeared while the backfill ran; left it alone" % out_path)
        os.rename(work, out_path)
    except BaseException:
        if writer is not None:
            writer.abandon()
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if own:
            saliency.close()
    deleted = sum(1 for e in source.entries if e.deleted)
    return BackfillResult(out_path, source.version, len(source.entries), deleted, run.masks,
                          time.monotonic() - started)
