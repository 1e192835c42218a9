# donkey-saliency settings: copy into your car's myconfig.py and change what you need.
# Every value below is the default; a missing setting takes it.

SALIENCY_ENABLED = True           # False: add_saliency() adds nothing
SALIENCY_MODEL_PATH = None        # None: the pilot given to `python manage.py drive --model ...`;
                                  # or a file: .h5 .keras .tflite, a SavedModel dir, or an .onnx
                                  # made by `donkey-saliency export` (needs no TensorFlow on the car)
SALIENCY_BACKEND = "auto"         # auto: TensorRT on a Jetson with tensorrt+pycuda, else ONNX Runtime;
                                  # or "tensorrt" / "onnxruntime"
SALIENCY_METHOD = "input-gradient" # |d output / d pixel| (chosen with `evaluate`); vbp, input-x-gradient,
                                  # grad-cam, vbp-gxa-mid, ... (README "Saliency methods"): all computed
                                  # inside the graph from its backward pass, no TensorFlow needed
SALIENCY_OUTPUT = "steering"      # steering | throttle: the decision a gradient method explains
SALIENCY_LEVEL = None             # grad-cam's conv level (0 = shallowest); None: the deepest
SALIENCY_ORT_PROVIDERS = None     # ONNX Runtime providers, e.g. ["CUDAExecutionProvider", "CPUExecutionProvider"]
SALIENCY_THREADS = 1              # ONNX Runtime CPU threads: leave the other cores to the car
SALIENCY_TRT_PRECISION = None      # fp16 | fp32; None: fp16, or fp32 for a gradient method's graph (its backward pass)
SALIENCY_CACHE_DIR = None         # exported graphs and TensorRT engines; None: ~/.cache/donkey_saliency
SALIENCY_IMAGE_KEY = None         # None: the image the pilot sees (cam/image_array_trans when
                                  # TRANSFORMATIONS is set, as complete.py does), else cam/image_array
SALIENCY_ALPHA = 0.5              # heat-map opacity over the camera image, 0..1
SALIENCY_COLORMAP = "jet"         # jet | inferno | magma | viridis | turbo | hot | plasma | gray
SALIENCY_MAX_FPS = 0              # cap the mask rate (0: every frame the loop gives, newest first)
SALIENCY_WEB = True               # /saliency page, /saliency/video and /saliency/stats on the web UI
SALIENCY_JPEG_QUALITY = 80        # quality of the streamed overlay (encoded once per frame)
SALIENCY_ALLOWED_HOSTS = ()       # names the web UI answers beyond localhost and the car's own (e.g.
                                  # ["mycar.lan"]; ".lan" also allows subdomains; ["*"] turns the check off)
SALIENCY_MAX_VIEWERS = 16         # stream viewers at once, all saliency streams together (more get 503)
SALIENCY_DRIVE_VIEW = False       # start with the overlay instead of the camera in /drive
SALIENCY_TOGGLE_BUTTON = "w5"     # web button (w1..w5) that toggles the /drive view; None: no button
SALIENCY_RECORD = True            # record saliency/image_array, saliency/mask, saliency/lag_ms in the tub
SALIENCY_SHARE_PILOT = False      # True: the pilot's own forward pass gives the mask (one pass, lag 0 while
                                  # it drives): the pilot's inference then runs on the saliency backend
SALIENCY_WATCH_LINE = 0           # the live page shows the share of attention above this row of the pilot's
                                  # image: `donkey-saliency audit`'s recommended_roi_crop_top; 0: the upper third
SALIENCY_SYNC_MS = 0              # wait up to this many ms in the loop for the current frame's mask, so it is
                                  # recorded with lag 0 (e.g. 5); 0: never wait
