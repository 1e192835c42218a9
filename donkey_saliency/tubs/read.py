"""Tubs, read: the recording contract (which keys the TubWriter gets) and the v1/v2 readers.

Recording (``recording_inputs``): the manage.py helper adds ``RECORD_KEYS``/``RECORD_TYPES`` to the
TubWriter's lists, unless ``DATA_PATH`` already holds a tub with other inputs - donkeycar's
``Manifest`` asserts on that, so the user gets one line saying what to do instead.

Reading (``open_tub``): every record of a tub, deleted ones too, with its image paths checked to stay
inside the tub. Layouts:
- v2 (donkeycar >= 4): ``manifest.json`` (5 JSON lines: inputs, types, user metadata, manifest
  metadata, catalog metadata with ``deleted_indexes``), ``catalog_N.catalog`` (one JSON record a
  line; a record's index is its line number across catalogs), ``images/``.
- v1 (donkeycar 3): ``meta.json`` (inputs, types, start), ``record_N.json``, images beside them,
  ``exclude.json`` (excluded record numbers).

The review page's index is ``tub_index.py``, the v2 writer ``tub_writer.py``, backfill ``backfill.py``.
"""
import collections
import json
import logging
import os
import re
import time

import numpy as np

from ..errors import InputError
from ..util.fileio import read_limited, size_text
from ..util.images import read_rgb
from ..keys import CAMERA_KEY, RECORD_KEYS, RECORD_TYPES

logger = logging.getLogger(__name__)

IMAGE_TYPES = ("image_array", "gray16_array", "image")
CATALOG_MAX_LEN = 1000  # donkeycar's default records per catalog file
# Bounds on what a tub's own files make us read (hostile until checked): a record line is a few
# hundred bytes, a manifest grows by ~7 bytes per deleted record.
MAX_RECORD_BYTES = 1 << 20
MAX_MANIFEST_BYTES = 64 << 20
MANIFEST_READS = 20  # reads of a manifest that does not parse before it counts as broken (a torn read is retried)
MANIFEST_RETRY_S = 0.005


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
            first, second = handle.readline(MAX_MANIFEST_BYTES), handle.readline(MAX_MANIFEST_BYTES)
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


def require_field(tub, key):
    """InputError unless ``tub`` (a ``SourceTub`` or ``TubIndex``) records ``key``."""
    if key not in tub.inputs:
        raise InputError("%s has no %s field (its fields: %s)" % (tub.path, key, ", ".join(tub.inputs)))


def tub_version(path):
    """(absolute path, 2 or 1) of the tub at ``path``: 2 with a manifest.json (donkeycar >= 4), 1 with
    a donkeycar 3 meta.json; InputError saying why it is not a tub."""
    path = os.path.abspath(os.fspath(path)).rstrip(os.sep) or os.sep
    if not os.path.isdir(path):
        raise InputError("tub not found: %s" % path)
    if os.path.isfile(os.path.join(path, "manifest.json")):
        return path, 2
    if os.path.isfile(os.path.join(path, "meta.json")):
        return path, 1
    raise InputError("%s is not a tub (no manifest.json, and no meta.json of a donkeycar 3 tub)" % path)


def open_tub(path):
    """Open a v2 or v1 tub for reading, or InputError saying why it is not one."""
    path, version = tub_version(path)
    return _read_v2(path) if version == 2 else _read_v1(path)


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
    catalog metadata with ``paths``, ``max_len``, ``deleted_indexes``), or InputError. A read that
    does not parse is read again (``MANIFEST_READS`` times): donkeycar's writer may be mid-rewrite."""
    for attempt in range(MANIFEST_READS):
        try:
            inputs, types, metadata, manifest_metadata, catalogs = _parse_manifest(_manifest_text(path))
            break
        except (ValueError, KeyError, TypeError, AttributeError):
            # donkeycar's writer rewrites the manifest's last line in place (truncate, then write)
            # on every record: a read in between sees it torn; the next one sees it whole.
            if attempt + 1 == MANIFEST_READS:
                raise InputError("%s: manifest.json is not a donkeycar tub manifest" % path)
            time.sleep(MANIFEST_RETRY_S)
    if catalogs["max_len"] < 1:
        raise InputError("%s: manifest.json's max_len is %d; records per catalog must be at least 1"
                         % (path, catalogs["max_len"]))
    if len(inputs) != len(types):
        raise InputError("%s: manifest.json lists %d inputs but %d types" % (path, len(inputs), len(types)))
    return inputs, types, metadata, manifest_metadata, catalogs


def _manifest_text(path):
    return read_limited(os.path.join(path, "manifest.json"), MAX_MANIFEST_BYTES,
                        "a tub's manifest.json").decode("utf-8")


def _parse_manifest(text):
    lines = [line for line in text.split("\n") if line.strip()]
    inputs, types, metadata, manifest_metadata, catalogs = [json.loads(line) for line in lines[:5]]
    catalogs["paths"] = [str(name) for name in catalogs["paths"]]
    catalogs["deleted_indexes"] = [int(i) for i in catalogs.get("deleted_indexes", [])]
    catalogs["max_len"] = int(catalogs.get("max_len", CATALOG_MAX_LEN))
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
            while True:
                line = handle.readline(MAX_RECORD_BYTES + 1)  # never more: a hostile line may be GBs long
                if not line:
                    break
                if len(line) > MAX_RECORD_BYTES:
                    raise InputError("%s: the line at byte %d of %s is over %s, more than a record can be; "
                                     "refusing the tub" % (path, offset, catalog_paths[number],
                                                           size_text(MAX_RECORD_BYTES)))
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
    text = read_limited(os.path.join(path, "meta.json"), MAX_RECORD_BYTES, "a tub's meta.json")
    try:
        meta = json.loads(text.decode("utf-8"))
        inputs, types = list(meta["inputs"]), list(meta["types"])
    except (ValueError, KeyError, TypeError):
        raise InputError("%s: meta.json is not a donkeycar 3 tub's meta.json" % path)
    if len(inputs) != len(types):  # as for a v2 manifest: the copy's manifest would pair them wrongly
        raise InputError("%s: meta.json lists %d inputs but %d types" % (path, len(inputs), len(types)))
    excluded = set()
    exclude_path = os.path.join(path, "exclude.json")
    if os.path.isfile(exclude_path):
        text = read_limited(exclude_path, MAX_MANIFEST_BYTES, "a tub's exclude.json")
        try:
            excluded = set(int(i) for i in json.loads(text.decode("utf-8")))
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
        stored = json.loads(read_limited(os.path.join(path, "record_%d.json" % number), MAX_RECORD_BYTES,
                                         "a record").decode("utf-8"))
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
    leads out of ``root`` - an absolute path, ``..``, or a link pointing elsewhere - or holds a NUL
    byte (no file has such a name; the OS calls would raise)."""
    if "\0" in name:
        raise InputError("%s: %s name %r holds a NUL byte; no file has such a name" % (root, what, name))
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


def tub_frames(path, count=None, key=CAMERA_KEY):
    """RGB uint8 frames of ``key``, ``count`` of them spread evenly over the tub's live records
    (all of them without ``count``)."""
    paths = camera_image_paths(path, key)
    if count is not None and count < len(paths):
        paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, count)]
    return [read_rgb(p) for p in paths]
