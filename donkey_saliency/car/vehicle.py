"""``add_saliency``: the one call a manage.py makes (see README for where it goes in complete.py).

It reads ``SALIENCY_*`` from cfg (through config.py), adds the SaliencyPart on the image the pilot
sees, attaches the web routes to the running LocalWebController, and extends the TubWriter's
inputs/types in place so saliency is recorded with every record.
"""
import logging

from .. import config
from ..errors import setup_failure
from .interpreter import SaliencyInterpreter
from ..keys import CAMERA_KEY, DRIVE_IMAGE_KEY, OUTPUTS
from .part import SaliencyPart
from ..tubs.read import recording_inputs
from ..web.live import attach_web

logger = logging.getLogger(__name__)


def find_web_controller(V, ctr=None):
    """The LocalWebController: ``ctr`` itself, or the one among the vehicle's parts (complete.py's
    ``ctr`` is the joystick when one is configured)."""
    from donkeycar.parts.web_controller.web import LocalWebController

    if isinstance(ctr, LocalWebController):
        return ctr
    for entry in V.parts:
        if isinstance(entry["part"], LocalWebController):
            return entry["part"]
    return None


def add_drive_view(V, web_controller, toggle):
    """Adds the toggle (the one the /saliency page flips) so that it feeds whatever /drive's video
    shows: the web controller's first input. donkeycar 4.5-5.3 show ``ui/image_array`` (written by
    UserPilotCondition, read by nothing else): the toggle rewrites it. donkeycar 4.4 shows
    ``cam/image_array``, which the pilot and the tub read too: the controller gets a key of its own."""
    entry = next((e for e in V.parts if e["part"] is web_controller), None)
    shown = entry["inputs"][0] if entry is not None and entry["inputs"] else None
    if shown is None:
        logger.warning("saliency: the web controller is not a part of this vehicle yet (or shows no image), "
                       "so the overlay cannot appear in /drive; call add_saliency after the web controller "
                       "is added (the /saliency page works either way)")
    elif shown != toggle.inputs[0]:  # the toggle rewrites ui/image_array: 4.5 and 5.x show it
        toggle.show_through(shown, DRIVE_IMAGE_KEY)
        entry["inputs"][0] = DRIVE_IMAGE_KEY
        logger.info("saliency: /drive showed %s; it now shows %s (the camera's image, or the overlay "
                    "while the toggle is on)", shown, DRIVE_IMAGE_KEY)
    V.add(toggle, inputs=toggle.inputs, outputs=toggle.outputs)  # runs after UserPilotCondition


def add_saliency(V, cfg, ctr=None, inputs=None, types=None, model_path=None):
    """``donkey_saliency.add_saliency``: never raises. Whatever fails (a library, the pilot, a backend,
    the web routes) is one ERROR line saying how to fix it, the vehicle's parts are left as they were,
    and it returns None: the car drives without saliency."""
    parts, wiring = list(V.parts), [list(entry.get("inputs") or []) for entry in V.parts]
    try:
        return wire_saliency(V, cfg, ctr=ctr, inputs=inputs, types=types, model_path=model_path)
    except Exception as error:  # noqa: BLE001 - the car must drive on
        V.parts[:] = parts
        for entry, entry_inputs in zip(parts, wiring):
            if entry.get("inputs") is not None:
                entry["inputs"][:] = entry_inputs
        logger.error("saliency: off, the car drives without it: %s", setup_failure(error))
        return None


def wire_saliency(V, cfg, ctr=None, inputs=None, types=None, model_path=None):
    """Add live saliency to vehicle ``V``. ``inputs``/``types`` are the TubWriter's lists, extended
    in place when SALIENCY_RECORD is on. Returns the part, or None when saliency is off.
    A bad model does not raise: the part logs and stays inert, the car drives on."""
    s = config.settings(cfg)
    if not s["SALIENCY_ENABLED"]:
        return None
    model = s["SALIENCY_MODEL_PATH"] or model_path
    if not model:
        logger.info("saliency: no pilot model (drive --model or SALIENCY_MODEL_PATH), so no saliency")
        return None
    backend_options = dict(threads=s["SALIENCY_THREADS"], precision=s["SALIENCY_TRT_PRECISION"],
                           cache_dir=s["SALIENCY_CACHE_DIR"])
    if s["SALIENCY_ORT_PROVIDERS"]:
        backend_options["providers"] = list(s["SALIENCY_ORT_PROVIDERS"])
    part = SaliencyPart(model, backend=s["SALIENCY_BACKEND"], alpha=s["SALIENCY_ALPHA"],
                        colormap=s["SALIENCY_COLORMAP"], max_fps=s["SALIENCY_MAX_FPS"],
                        cache_dir=s["SALIENCY_CACHE_DIR"], backend_options=backend_options,
                        method=s["SALIENCY_METHOD"], sync_ms=s["SALIENCY_SYNC_MS"], output=s["SALIENCY_OUTPUT"],
                        level=s["SALIENCY_LEVEL"], watch_line=s["SALIENCY_WATCH_LINE"])
    if s["SALIENCY_SHARE_PILOT"]:
        share_pilot_pass(V, part, model_path, s["SALIENCY_BACKEND"], backend_options)
    image_key = config.image_key(cfg)
    # The transformed image exists only when the pilot runs; fall back to the camera's.
    part_inputs = [image_key] if image_key == CAMERA_KEY else [image_key, CAMERA_KEY]
    V.add(part, inputs=part_inputs, outputs=list(OUTPUTS), threaded=True)

    web_controller = find_web_controller(V, ctr) if s["SALIENCY_WEB"] else None
    if web_controller is not None:
        web = attach_web(web_controller, part, jpeg_quality=s["SALIENCY_JPEG_QUALITY"],
                         drive_view=s["SALIENCY_DRIVE_VIEW"], toggle_button=s["SALIENCY_TOGGLE_BUTTON"],
                         max_viewers=s["SALIENCY_MAX_VIEWERS"], allowed_hosts=s["SALIENCY_ALLOWED_HOSTS"],
                         review_tub=lambda: tub_being_written(V))  # the TubWriter is added after us
        add_drive_view(V, web_controller, web.drive_view)

    if s["SALIENCY_RECORD"] and inputs is not None and types is not None:
        new_inputs, new_types, message = recording_inputs(
            getattr(cfg, "DATA_PATH", None), list(inputs), list(types), getattr(cfg, "AUTO_CREATE_NEW_TUB", False))
        if message:
            logger.warning("saliency: %s", message)
        inputs[:], types[:] = new_inputs, new_types
    return part


def find_pilot(V):
    """The car's donkeycar KerasPilot among the vehicle's parts (by what it has: importing
    donkeycar.parts.keras would import TensorFlow), or None."""
    for entry in V.parts:
        part = entry["part"]
        if hasattr(part, "interpreter") and hasattr(part, "interpreter_to_output"):
            return part
    return None


def share_pilot_pass(V, part, model_path, backend, backend_options):
    """SALIENCY_SHARE_PILOT: put a SaliencyInterpreter into the car's pilot, so its forward pass also gives
    the mask, handed to ``part``. Returns the interpreter, or None (logged) when the pilot keeps its own.

    With a gradient method the drive loop runs the pilot alone (no head): the backward pass and the
    mask stay in the part's worker, on its own graph given the frame, so the loop waits for none of it."""
    pilot = find_pilot(V)
    if pilot is None or not model_path:
        logger.info("saliency: SALIENCY_SHARE_PILOT is on but the car has no pilot part with a --model file")
        return None
    try:
        in_pass = part.method_masks is not None and not part.method_masks.output_needed
        interpreter = SaliencyInterpreter(backend=backend, cache_dir=backend_options.get("cache_dir"),
                                          backend_options=backend_options, head=in_pass)
        interpreter.load(model_path)
    except Exception as error:  # the car drives on with donkeycar's own interpreter
        logger.warning("saliency: the pilot keeps its own interpreter (%s)", error)
        return None
    if in_pass:
        interpreter.add_listener(part.accept_mask)
    pilot.interpreter = interpreter
    logger.info("saliency: the pilot %s runs on the SaliencyInterpreter; %s", type(pilot).__name__,
                "its pass gives the mask" if in_pass else "the %s mask comes from the saliency worker, off the loop"
                % part.method_masks.method)
    return interpreter


def tub_being_written(vehicle):
    """The base path of the first donkeycar ``TubWriter`` among a vehicle's parts, or None."""
    for entry in getattr(vehicle, "parts", []):
        tub = getattr(entry.get("part"), "tub", None)
        if tub is not None and getattr(tub, "base_path", None):
            return str(tub.base_path)
    return None

