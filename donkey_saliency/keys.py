"""The vehicle-memory and tub keys: what the part writes, the tub records, the web UI shows.

A leaf module (no imports): every module that names a key takes it from here.
"""
CAMERA_KEY = "cam/image_array"              # the camera frame
CAMERA_TRANS_KEY = "cam/image_array_trans"  # the frame after donkeycar's TRANSFORMATIONS
UI_IMAGE_KEY = "ui/image_array"             # what /drive's video shows (donkeycar 4.5-5.3)

OVERLAY_KEY = "saliency/image_array"        # uint8 RGB heat map over the frame
MASK_KEY = "saliency/mask"                  # uint8 grayscale mask
LATENCY_KEY = "saliency/latency_ms"         # frame arrival -> overlay ready
LAG_KEY = "saliency/lag_ms"                 # how old the frame the mask belongs to is
DRIVE_IMAGE_KEY = "saliency/drive_image"    # /drive's image where the controller reads the camera's own key

# The part's outputs, in order, and the ones the tub records (with donkeycar's types).
OUTPUTS = [OVERLAY_KEY, MASK_KEY, LATENCY_KEY, LAG_KEY]
RECORD_KEYS = [OVERLAY_KEY, MASK_KEY, LAG_KEY]
RECORD_TYPES = ["image_array", "image_array", "float"]
NO_MASK_LAG_MS = -1.0  # lag reported until the first mask exists: a value, so no record lacks one

# donkeycar's drive values: the user's (web controller, joystick), the pilot's, and the drive mode.
USER_ANGLE_KEY = "user/angle"
USER_THROTTLE_KEY = "user/throttle"
PILOT_ANGLE_KEY = "pilot/angle"
PILOT_THROTTLE_KEY = "pilot/throttle"
MODE_KEY = "user/mode"
PILOT_KEYS = (PILOT_ANGLE_KEY, PILOT_THROTTLE_KEY)

# The drive's values on the review page's timeline.
TIMELINE_KEYS = (USER_ANGLE_KEY, USER_THROTTLE_KEY) + PILOT_KEYS

# Tub metadata a backfilled copy carries.
MODEL_META_KEY = "saliency/model"
BACKFILLED_FROM_META_KEY = "saliency/backfilled_from"
