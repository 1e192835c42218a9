"""Backfill: a copy of an existing tub (v1 or v2) with the saliency keys added, computed in batches.

The source is only read. The copy is written into a hidden temp directory beside the target and
renamed at the end, so an interrupted run leaves no half-written tub and a rerun starts from
scratch. The copy is always v2. Deleted (v2) and excluded (v1) records are kept, still marked
deleted, with saliency computed for them too, so restoring one in ``donkey ui`` gives a complete record.
"""
import collections
import logging
import os
import shutil
import time

import numpy as np

from ..compute.methods import DEFAULT_METHOD, DEFAULT_OUTPUT
from ..api import Saliency
from ..config import DEFAULT_ALPHA, DEFAULT_COLORMAP
from ..util.console import Progress
from ..errors import InputError
from ..util.images import decode_image, encode_jpeg
from ..keys import (
    BACKFILLED_FROM_META_KEY, CAMERA_KEY, LAG_KEY, MASK_KEY, MODEL_META_KEY, OVERLAY_KEY, RECORD_KEYS, RECORD_TYPES)
from ..compute.overlay import check_style, mask_to_uint8, overlay
from ..tubs.read import IMAGE_TYPES, open_tub, require_field
from ..tubs.write import TubV2Writer, image_file_name

logger = logging.getLogger(__name__)

BACKFILL_SUFFIX = "_saliency"

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
             alpha=DEFAULT_ALPHA, colormap=DEFAULT_COLORMAP, workers=2, threads=0, progress=True, saliency=None,
             method=DEFAULT_METHOD, output=DEFAULT_OUTPUT, level=None):
    """Write a copy of the tub at ``tub_path`` with saliency added; return a BackfillResult.
    ``method``: the saliency method (``methods.METHODS``), explaining ``output`` (``level``: Grad-CAM's).

    ``threads``: ONNX Runtime intra-op threads, 0 for ``default_threads()``; ``workers``: threads
    decoding, encoding and writing JPEGs. ``saliency``: an open ``api.Saliency`` to use instead of
    loading ``model_path``. Raises
    InputError / ModelError before anything is written when the input is bad."""
    source = open_tub(tub_path)
    out_path = os.path.abspath(os.fspath(out_path)) if out_path else default_output(source.path)
    if os.path.lexists(out_path):
        raise InputError("output %s already exists; choose another --out" % out_path)
    require_field(source, image_key)
    types = source.input_types
    if types[image_key] not in IMAGE_TYPES:
        raise InputError("%s: %s is a %s field, not an image" % (source.path, image_key, types[image_key]))
    present = [k for k in RECORD_KEYS if k in types]
    if present:
        raise InputError("%s already has saliency (%s); review it with 'donkey-saliency render'"
                         % (source.path, ", ".join(present)))
    if int(batch) < 1:
        raise InputError("--batch must be at least 1")
    source.check_images()

    alpha, colormap = check_style(alpha, colormap)
    # Before anything is written or removed: a second run to the same --out must not touch the first's copy.
    with OutputLock(out_path):
        return _backfill_locked(source, model_path, out_path, batch, backend, image_key, alpha, colormap, workers,
                                threads, progress, saliency, dict(method=method, output=output, level=level))


def _backfill_locked(source, model_path, out_path, batch, backend, image_key, alpha, colormap, workers, threads,
                     progress, saliency, choice):
    own = saliency is None
    if own:
        saliency = Saliency.open(model_path, backend=backend, threads=threads or default_threads(), **choice)
    started = time.monotonic()
    work = partial_path(out_path)
    writer = None
    try:
        if own:
            saliency.activate()
        if os.path.lexists(work):
            logger.info("removing %s, left by an interrupted backfill", work)
            shutil.rmtree(work)
        os.makedirs(work)
        metadata = dict(source.metadata)
        metadata[MODEL_META_KEY] = os.path.basename(str(model_path or getattr(saliency, "source", None) or ""))
        metadata[BACKFILLED_FROM_META_KEY] = source.path
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
