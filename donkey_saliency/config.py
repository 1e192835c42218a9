"""``SALIENCY_*`` settings: defaults, and the one place that reads donkeycar's ``cfg``.

Every name here has a commented twin in ``myconfig_snippets/saliency.py``. The look of the overlay
(``DEFAULT_ALPHA``, ``DEFAULT_COLORMAP``) is also every tool's default.
"""
from .keys import CAMERA_KEY, CAMERA_TRANS_KEY
from .compute.methods import DEFAULT_METHOD, DEFAULT_OUTPUT
from .util.images import JPEG_QUALITY

DEFAULT_ALPHA = 0.5      # the heat map's weight over the frame
DEFAULT_COLORMAP = "jet"
DONKEY_WEB_PORT = 8887   # donkeycar's web UI (cfg.WEB_CONTROL_PORT's default): the demo serves it there
DRIVE_LOOP_HZ = 20       # donkeycar's drive loop (cfg.DRIVE_LOOP_HZ's default): records a second in a tub

DEFAULTS = dict(
    SALIENCY_ENABLED=True,
    SALIENCY_MODEL_PATH=None,        # None: the pilot given to `manage.py drive --model`
    SALIENCY_BACKEND="auto",         # auto | tensorrt | onnxruntime
    SALIENCY_METHOD=DEFAULT_METHOD,  # methods.METHODS (all computed in the graph; vbp: VisualBackProp as published)
    SALIENCY_OUTPUT=DEFAULT_OUTPUT,  # steering | throttle: the decision a gradient method explains
    SALIENCY_LEVEL=None,             # grad-cam's conv level (0 = shallowest); None: the deepest
    SALIENCY_ORT_PROVIDERS=None,     # e.g. ["CUDAExecutionProvider", "CPUExecutionProvider"]
    SALIENCY_THREADS=1,              # ONNX Runtime intra-op threads: keep cores for the car
    SALIENCY_TRT_PRECISION=None,     # fp16 | fp32; None: fp16, or fp32 for a gradient method's graph
    SALIENCY_CACHE_DIR=None,         # None: ~/.cache/donkey_saliency
    SALIENCY_IMAGE_KEY=None,         # None: cam/image_array_trans with TRANSFORMATIONS, else cam/image_array
    SALIENCY_ALPHA=DEFAULT_ALPHA,
    SALIENCY_COLORMAP=DEFAULT_COLORMAP,
    SALIENCY_MAX_FPS=0,              # 0: as fast as frames arrive
    SALIENCY_WEB=True,               # routes /saliency, /saliency/video, /saliency/stats on the web UI
    SALIENCY_JPEG_QUALITY=JPEG_QUALITY,  # the web streams (1-100)
    SALIENCY_ALLOWED_HOSTS=(),       # names the car is reached by beyond its own (requests_guard.AllowedHosts)
    SALIENCY_MAX_VIEWERS=16,         # /saliency/video + /saliency/camera clients at once (more get 503)
    SALIENCY_DRIVE_VIEW=False,       # start with the overlay in /drive's video
    SALIENCY_TOGGLE_BUTTON="w5",     # web button that toggles it (w1..w5), None for none
    SALIENCY_RECORD=True,            # add saliency keys to the TubWriter
    SALIENCY_SHARE_PILOT=False,      # the pilot's own pass gives the mask (its inference runs on our backend)
    SALIENCY_WATCH_LINE=0,           # live share of attention above this row (audit's ROI_CROP_TOP); 0: upper third
    SALIENCY_SYNC_MS=0,              # wait up to this long for the current frame's mask (lag 0); 0: never
)


def setting(cfg, name):
    return getattr(cfg, name, DEFAULTS[name]) if cfg is not None else DEFAULTS[name]


def settings(cfg):
    """All SALIENCY_* values as a dict, cfg overriding the defaults."""
    return {name: setting(cfg, name) for name in DEFAULTS}


def image_key(cfg):
    """The memory key of the image the pilot sees."""
    key = setting(cfg, "SALIENCY_IMAGE_KEY")
    if key:
        return key
    if hasattr(cfg, "TRANSFORMATIONS") or hasattr(cfg, "POST_TRANSFORMATIONS"):
        return CAMERA_TRANS_KEY
    return CAMERA_KEY


# The laptop tools' command-line defaults, here so that the car's cli.py declares every command's
# options without importing tools/ (Python 3.8+, may use TensorFlow).
EVALUATE_AREA = 0.15       # evaluate --area: the salient region, this top fraction of the mask
EVALUATE_FRAMES = 150      # evaluate --frames
AUDIT_DEPENDENCE_FRAMES = 400  # audit --dependence-frames: the 90 % interval says what this many give
