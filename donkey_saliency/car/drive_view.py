"""The vehicle part that shows the overlay in /drive's video while its toggle is on (the /saliency
page and a web button flip it). Wired by vehicle.py; web.py holds the one the page controls."""
import logging
import threading

from ..config import DEFAULTS
from ..keys import OVERLAY_KEY, UI_IMAGE_KEY

logger = logging.getLogger(__name__)

WEB_BUTTONS = ("w1", "w2", "w3", "w4", "w5")


class DriveViewToggle(object):
    """Vehicle part: while on, /drive's video (``ui/image_array``) shows the overlay.

    Add it after donkeycar's ``UserPilotCondition`` (which writes ``ui/image_array``)::

        V.add(toggle, inputs=toggle.inputs, outputs=toggle.outputs)

    inputs  ['ui/image_array', 'saliency/image_array', 'web/<button>'] (no button input when button is None)
    outputs ['ui/image_array']

    A press of the web button (donkeycar's ExplodeDict puts ``web/w5`` True in memory for one loop)
    flips it; so does the /saliency page. ``run`` never raises: on any trouble it passes the UI
    image through unchanged. It reads and writes only ``ui/image_array`` - the pilot's ``cam/*``
    images are never touched.
    """

    def __init__(self, on=False, button=DEFAULTS["SALIENCY_TOGGLE_BUTTON"]):
        if not isinstance(on, (bool, int)):  # e.g. DriveViewToggle(web): the page would not reach it
            raise TypeError("DriveViewToggle(on=...) takes a bool; the toggle the /saliency page controls "
                            "is attach_web(...).drive_view")
        if button is not None and button not in WEB_BUTTONS:
            raise ValueError("SALIENCY_TOGGLE_BUTTON must be one of %s or None, not %r"
                             % (", ".join(WEB_BUTTONS), button))
        self.button = button
        self._on = bool(on)
        self._was_pressed = False
        self._lock = threading.Lock()
        self.inputs = [UI_IMAGE_KEY, OVERLAY_KEY] + (["web/" + button] if button else [])
        self.outputs = [UI_IMAGE_KEY]

    @property
    def on(self):
        return self._on

    def set(self, on):
        with self._lock:
            self._on = bool(on)
            return self._on

    def flip(self):
        with self._lock:
            self._on = not self._on
            return self._on

    def run(self, ui_image=None, overlay_image=None, pressed=None):
        try:
            pressed = bool(pressed)
            if pressed and not self._was_pressed:  # a press, not a held button
                state = self.flip()
                logger.info("saliency overlay in /drive: %s", "on" if state else "off")
            self._was_pressed = pressed
            if self._on and overlay_image is not None:
                return overlay_image
        except Exception as error:  # pragma: no cover - never stop the car over a picture
            logger.warning("saliency drive view: %s", error)
        return ui_image

    def show_through(self, shown_key, own_key):
        """For a web controller that shows a key the pilot or the tub also read (donkeycar 4.4's
        shows ``cam/image_array``): read ``shown_key``, write ``own_key``, never ``shown_key``; the
        caller points the controller at ``own_key``."""
        self.inputs[0] = shown_key
        self.outputs = [own_key]

    def shutdown(self):
        pass
