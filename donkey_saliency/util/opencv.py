"""OpenCV, imported where it is used, with one line that says how to get it when it is missing.

No install of donkey-saliency brings OpenCV: a car already has one (donkeycar's install brings it; a
Jetson's CSI camera needs JetPack's GStreamer build, which a second OpenCV from PyPI would shadow).
A bare laptop adds one with the ``[opencv]`` extra.
"""
import os

from ..errors import MissingLibrary, first_line

# Decoding allocates what an image's header declares: a 0.5 MB PNG can declare 30000x30000 pixels
# (1.8 GB). OpenCV refuses images over this many pixels (read once, when cv2 is first imported; a
# user's own setting wins); a camera frame has a few hundred thousand.
MAX_IMAGE_PIXELS = 64 << 20

INSTALL_HINT = ("OpenCV (cv2) is not importable (%s); a car uses its own (donkeycar's install brings one, "
                "a Jetson has JetPack's), elsewhere: pip install 'donkey-saliency[opencv]'")


def import_cv2():
    """The ``cv2`` module, or MissingLibrary whose message is the install hint."""
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
    try:
        import cv2
    except ImportError as error:
        raise MissingLibrary(INSTALL_HINT % first_line(error))
    return cv2
