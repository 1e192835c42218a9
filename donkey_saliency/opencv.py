"""OpenCV, imported where it is used, with one line that says how to get it when it is missing.

No install of donkey-saliency brings OpenCV: a car already has one (donkeycar's install brings it; a
Jetson's CSI camera needs JetPack's GStreamer build, which a second OpenCV from PyPI would shadow).
A bare laptop adds one with the ``[opencv]`` extra.
"""
from .errors import MissingLibrary, first_line

INSTALL_HINT = ("OpenCV (cv2) is not importable (%s); a car uses its own (donkeycar's install brings one, "
                "a Jetson has JetPack's), elsewhere: pip install 'donkey-saliency[opencv]'")


def import_cv2():
    """The ``cv2`` module, or MissingLibrary whose message is the install hint."""
    try:
        import cv2
    except ImportError as error:
        raise MissingLibrary(INSTALL_HINT % first_line(error))
    return cv2
