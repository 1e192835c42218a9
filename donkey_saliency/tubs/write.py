"""Tubs, written: donkeycar's v2 layout in one pass (what backfill and the benchmarks write)."""
import json
import os
import time

from ..errors import InputError
from .read import CATALOG_MAX_LEN


def image_file_name(index, key, extension=".jpg"):
    """donkeycar's tub v2 image name (``Tub._image_file_name``): ``12_cam_image_array_.jpg``."""
    return "_".join([str(index), key.replace("/", "_"), extension])


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
