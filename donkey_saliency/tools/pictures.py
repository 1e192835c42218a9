"""What the laptop's pictures and videos share (``render``, ``layers``, ``filters``): colours, text
drawn on a picture with OpenCV, the width of a sheet, and the check of the file a picture goes to."""
import os

from ..errors import InputError
from ..util.opencv import import_cv2

FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX
WHITE, GREY, DARK = (255, 255, 255), (150, 150, 150), (30, 30, 30)
USER_COLOR, PILOT_COLOR = (60, 200, 60), (70, 140, 255)  # green / blue, as makemovie draws them
RED, ORANGE, YELLOW = (255, 60, 60), (255, 165, 0), (255, 230, 120)
SHEET_WIDTH = 1280  # the layer grid's and the filter chart's width in pixels


def put_text(image, words, org, scale=0.45, color=WHITE, thickness=1):
    cv2 = import_cv2()

    cv2.putText(image, words, (int(org[0]), int(org[1])), FONT, scale, color, thickness, cv2.LINE_AA)


def put_label(image, words, x, y, scale=0.3, color=WHITE):
    """Small text on a dark box, readable on any tile; (x, y) is the box's top-left corner."""
    cv2 = import_cv2()

    (w, h), base = cv2.getTextSize(words, FONT, scale, 1)
    cv2.rectangle(image, (x, y), (x + w + 3, y + h + base + 2), (0, 0, 0), -1)
    put_text(image, words, (x + 1, y + h + 1), scale, color)


def check_output(path, force, suffixes):
    """InputError unless ``path`` may be written: one of ``suffixes``, not there yet (or ``force``),
    in a folder that exists."""
    if not path.lower().endswith(suffixes):
        raise InputError("--out must name a %s file" % " or ".join(suffixes))
    if os.path.lexists(path) and not force:
        raise InputError("output %s already exists (pass --force to replace it)" % path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError("output directory %s does not exist" % parent)
