"""The TensorRT engine cache: pure Python, imports no TensorRT.

A serialized engine only works with the TensorRT version and the GPU it was built for, so every
file carries a header saying what it was built from and for, and is checked before TensorRT ever
sees it. Anything that does not match exactly (another graph, TensorRT version, GPU or precision; a
cut-off or damaged file; something that is not ours) is rebuilt, never trusted.

File layout::

    MAGIC (8 bytes) | header length (4 bytes, little-endian) | header (UTF-8 JSON) | engine bytes

The header holds the fields of :data:`KEY_FIELDS` plus the engine's size and sha256, so a file cut
short or altered after writing is caught. Files are written atomically (temp file + rename).
"""
import hashlib
import json
import logging
import os
import struct

from ..util.fileio import atomic_write, default_cache_dir

logger = logging.getLogger(__name__)

MAGIC = b"DSALTRT\x01"
HEADER_FORMAT = 1  # bump when the header's meaning changes
_LENGTH = struct.Struct("<I")
MAX_HEADER_BYTES = 64 * 1024  # a header is ~300 bytes; anything near this is not ours

# What an engine depends on: each one changes the cache key (and so the file name).
KEY_FIELDS = ("graph_digest", "tensorrt_version", "gpu_name", "compute_capability", "precision", "input_shape")
# Header entries about the engine bytes themselves.
_CONTENT_FIELDS = ("engine_size", "engine_sha256")


class CacheFileError(ValueError):
    """A cache file that cannot be read back as an engine; the message says what is wrong."""


def engine_meta(graph_digest, tensorrt_version, gpu_name, compute_capability, precision, input_shape):
    """The metadata an engine is keyed by, in one normal form (so equal things compare equal)."""
    if isinstance(compute_capability, (tuple, list)):
        compute_capability = ".".join(str(int(part)) for part in compute_capability)
    return dict(graph_digest=str(graph_digest), tensorrt_version=str(tensorrt_version), gpu_name=str(gpu_name),
                compute_capability=str(compute_capability), precision=str(precision),
                input_shape=[int(d) for d in input_shape])


def _key_part(meta):
    missing = [f for f in KEY_FIELDS if f not in meta]
    if missing:
        raise ValueError("engine metadata lacks %s" % ", ".join(missing))
    return {field: meta[field] for field in KEY_FIELDS}


def cache_key(meta):
    """24 hex digits of sha256 over the key fields (canonical JSON): the engine's identity."""
    canonical = json.dumps(_key_part(meta), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:24]


def engine_dir(cache_dir=None):
    """Where engines live: ``<cache_dir>/engines``, cache_dir defaulting to the graph cache's."""

    return os.path.join(cache_dir or default_cache_dir(), "engines")


def engine_path(directory, meta):
    """``<directory>/engine-<precision>-<key>.trt``: one file per (graph, TensorRT, GPU, precision, shape)."""
    return os.path.join(directory, "engine-%s-%s.trt" % (meta["precision"], cache_key(meta)))


def pack(meta, engine_bytes):
    """Header + engine bytes, ready to write."""
    engine_bytes = bytes(engine_bytes)
    header = dict(_key_part(meta))
    header.update(format=HEADER_FORMAT, engine_size=len(engine_bytes),
                  engine_sha256=hashlib.sha256(engine_bytes).hexdigest())
    encoded = json.dumps(header, sort_keys=True).encode("utf-8")
    return MAGIC + _LENGTH.pack(len(encoded)) + encoded + engine_bytes


def unpack(data):
    """(meta, engine_bytes) from :func:`pack`'s output, or CacheFileError saying what is wrong."""
    data = bytes(data)
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise CacheFileError("not a donkey-saliency engine file (no magic bytes)")
    start = len(MAGIC) + _LENGTH.size
    if len(data) < start:
        raise CacheFileError("truncated header (file is %d bytes)" % len(data))
    (length,) = _LENGTH.unpack(data[len(MAGIC):start])
    if length > MAX_HEADER_BYTES:
        raise CacheFileError("header length %d is implausible" % length)
    if len(data) < start + length:
        raise CacheFileError("truncated header (%d of %d bytes)" % (len(data) - start, length))
    try:
        meta = json.loads(data[start:start + length].decode("utf-8"))
    except ValueError as error:
        raise CacheFileError("header is not readable JSON (%s)" % error)
    if not isinstance(meta, dict):
        raise CacheFileError("header is not a JSON object")
    if meta.get("format") != HEADER_FORMAT:
        raise CacheFileError("header format %r, this version reads %d" % (meta.get("format"), HEADER_FORMAT))
    missing = [f for f in KEY_FIELDS + _CONTENT_FIELDS if f not in meta]
    if missing:
        raise CacheFileError("header lacks %s" % ", ".join(missing))
    engine_bytes = data[start + length:]
    if len(engine_bytes) != meta["engine_size"]:
        raise CacheFileError("engine is %d bytes, header says %d (truncated or appended to)"
                             % (len(engine_bytes), meta["engine_size"]))
    if hashlib.sha256(engine_bytes).hexdigest() != meta["engine_sha256"]:
        raise CacheFileError("engine bytes do not match their checksum (corrupt)")
    return meta, engine_bytes


def mismatches(found, expected):
    """Human-readable differences between two metadata dicts over the key fields."""
    out = []
    for field in KEY_FIELDS:
        if found.get(field) != expected.get(field):
            out.append("%s %r, need %r" % (field, found.get(field), expected.get(field)))
    return out


def check(path, expected_meta):
    """("load", reason, engine_bytes) if ``path`` holds an engine built for exactly ``expected_meta``,
    else ("rebuild", reason, None). Never raises for a bad file: a bad file means rebuild."""
    if not os.path.exists(path):
        return "rebuild", "no cached engine at %s" % path, None
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        return "rebuild", "cannot read %s (%s)" % (path, error), None
    try:
        meta, engine_bytes = unpack(data)
    except CacheFileError as error:
        return "rebuild", "%s: %s" % (path, error), None
    differences = mismatches(meta, engine_meta(**_key_part(expected_meta)))
    if differences:
        return "rebuild", "%s was built for something else: %s" % (path, "; ".join(differences)), None
    return "load", "cached engine %s matches" % path, engine_bytes


def decide(path, expected_meta):
    """("load" | "rebuild", reason): what to do with the cache file at ``path``."""
    action, reason, _ = check(path, expected_meta)
    return action, reason


def store(path, meta, engine_bytes):
    """Write header + engine atomically: a crash mid-write leaves no half file behind."""

    atomic_write(path, pack(meta, engine_bytes))
    return path
