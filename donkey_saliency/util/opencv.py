"""OpenCV, imported where it is used (``util.deps.require``: one line that says how to get it when it
is missing), with its image-size bound set first.

No install of donkey-saliency brings OpenCV: a car already has one (donkeycar's install brings it; a
Jetson's CSI camera needs JetPack's GStreamer build, which a second OpenCV from PyPI would shadow).
A bare laptop adds one with the ``[opencv]`` extra.
"""
import os

from .deps import require

# Decoding allocates what an image's header declares: a 0.5 MB PNG can declare 30000x30000 pixels
# (1.8 GB). OpenCV refuses images over this many pixels (read once, when cv2 is first imported; a
# user's own setting wins); a camera frame has a few hundred thousand.
MAX_IMAGE_PIXELS = 64 << 20

def import_cv2():
    """The ``cv2`` module, or MissingLibrary whose message is the install hint."""
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
    return require("cv2")
