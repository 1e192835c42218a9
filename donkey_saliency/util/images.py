"""Image files and bytes: read and decode to uint8 RGB, encode JPEG and PNG. Pure codec, no tubs."""
import os

import numpy as np

from ..errors import InputError
from .fileio import atomic_write, read_limited
from .opencv import import_cv2, MAX_IMAGE_PIXELS

JPEG_QUALITY = 80  # every JPEG we write: the web streams (SALIENCY_JPEG_QUALITY), review's pictures, backfilled tubs
MAX_IMAGE_BYTES = 64 << 20  # an image file we read whole (a camera frame is some KB)


def read_image(path):
    """A uint8 RGB (or grayscale) image from a file a user named, or InputError."""
    if not os.path.isfile(path):
        raise InputError("image not found: %s" % path)
    return _to_rgb(_decode(_read_bounded(path), path), "not an image file: %s" % path)


def read_rgb(path):
    """An image file as uint8 RGB (or grayscale (H, W)), or InputError."""
    return decode_image(_read_bounded(path), path)


def decode_image(data, source):
    return _to_rgb(_decode(data, source), "not a readable image: %s" % source)


def _read_bounded(path):
    try:
        return read_limited(path, MAX_IMAGE_BYTES, "an image")
    except (IOError, OSError):
        raise InputError("image missing: %s" % path)


def _decode(data, source):
    """The decoded image (OpenCV's BGR order), None when the bytes are not one; InputError when
    its header declares more pixels than OpenCV is let decode."""
    cv2 = import_cv2()

    try:  # cv2.imdecode raises on an empty buffer (a 0-byte file) and returns None on other junk
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if len(data) else None
    except cv2.error as error:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(error):
            raise InputError("%s: declares more than %d pixels, more than an image we decode can have; refusing it"
                             % (source, MAX_IMAGE_PIXELS))
        return None


def _to_rgb(image, unreadable):
    cv2 = import_cv2()

    if image is None:
        raise InputError(unreadable)
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
