"""Image files and bytes: read and decode to uint8 RGB, encode JPEG and PNG. Pure codec, no tubs."""
import os

import numpy as np

from .errors import InputError
from .fileio import atomic_write
from .opencv import import_cv2

JPEG_QUALITY = 75  # what donkeycar's TubWriter writes (PIL's default); the web streams pass their own


def read_image(path):
    """A uint8 RGB (or grayscale) image from a file a user named, or InputError."""
    if not os.path.isfile(path):
        raise InputError("image not found: %s" % path)
    try:
        return read_rgb(path)
    except InputError:
        raise InputError("not an image file: %s" % path)


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
    """JPEG bytes of a uint8 RGB or grayscale ((h, w) or (h, w, 1)) image."""
    cv2 = import_cv2()

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise InputError("could not encode a JPEG image of shape %s" % (image.shape,))
    return data.tobytes()


def write_png(path, image):
    """A uint8 RGB or grayscale image as PNG: encoded in memory, then written atomically."""
    cv2 = import_cv2()

    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)
    if not ok:
        raise InputError("could not encode %s" % path)
    atomic_write(path, data.tobytes())
