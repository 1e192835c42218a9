"""Saliency in the Donkey web UI: routes on the car's own ``LocalWebController`` (no new port).

``attach_web(ctr, part)`` (before ``V.start()``) adds, with ``ctr.add_handlers``:

    GET       /saliency                 the page (one HTML file shipped in the package, read once)
    GET       /saliency/video           MJPEG (multipart/x-mixed-replace) of the overlay
    GET       /saliency/camera          MJPEG of the camera frame each overlay is drawn on
    GET       /saliency/layer/<i>.jpg   conv layer i's channel-averaged map (newest result), min-max
                                        normalised and coloured, for display only
    GET       /saliency/stats           the live figures as JSON; fields: ``STATS_FIELDS``
    POST|PUT  /saliency/drive_view      body ``{"on": true|false}`` sets, an empty body flips the
                                        overlay in /drive's video; replies ``{"drive_view": bool}``

Requests are hostile until checked. Every route answers only a Host that is this car (403
otherwise: DNS rebinding; ``guard.AllowedHosts`` with ``SALIENCY_ALLOWED_HOSTS``), and the
server donkeycar creates gets ``guard.SERVER_LIMITS`` (``limit_slow_connections``).
/saliency/drive_view refuses a body over ``MAX_BODY_BYTES`` before reading it (413), a foreign
``Origin``/``Referer`` (403) and any body but one flat JSON object (400): ``handlers.SmallBodyHandler``
and ``guard.json_fields``, as for the review page's one write. The streams take at most ``max_viewers``
clients together (503 beyond) and drop a client that has not taken a frame for ``stall_s`` seconds.

Nothing from a request reaches the filesystem: the page is read from a fixed package file when
``attach_web`` runs, and the only request-derived value used is a layer index (digits, bounds-checked).

The stream scales with viewers: the part's worker calls our listener once per new overlay; while
anybody watches a stream, the listener JPEG-encodes that picture once and hands the bytes to the
Tornado IOLoop thread (``IOLoop.add_callback``). Each viewer's handler sleeps on its own event until
a newer frame exists (no polling, no frame sent twice to one client), writes it, and returns as
soon as its client disconnects (``on_connection_close``) - unlike donkeycar's ``VideoAPI``, which
re-encodes at ~175 JPEG/s per client and never returns. A slow client skips frames, never queues them.

``drive_view.DriveViewToggle`` is the small vehicle part that puts the overlay into ``ui/image_array``
(what /drive's ``<img src="/video">`` shows) while the toggle is on; the pilot's input is never touched.
"""
import collections
import functools
import logging
import threading
import time

from ..config import DEFAULTS
from ..car.drive_view import DriveViewToggle
from ..util.deps import require
from ..util.images import JPEG_QUALITY, encode_jpeg
from ..compute.overlay import layer_picture
from .guard import SERVER_LIMITS, AllowedHosts, log_request
from .handlers import read_page, tornado_handlers
from ..util.stats import median

logger = logging.getLogger(__name__)

BOUNDARY = "saliencyframe"
PAGE = "saliency.html"  # in web/static
MAX_BODY_BYTES = 1024  # /saliency/drive_view needs ~15 bytes
DRIVE_VIEW_FIELDS = [("on", bool)]
STALL_S = 10.0  # a stream client that takes no frame for this long is dropped

STATS_FIELDS = collections.OrderedDict([
    # from SaliencyPart.stats()
    ("status", "'starting' | 'running' | 'disabled: <why>'"),
    ("fps", "overlays per second over the last 100 (float)"),
    ("latency_ms", "median ms from a frame's arrival to its overlay being ready, or null"),
    ("infer_ms", "median ms of the backend's inference alone, or null"),
    ("received", "frames handed to the part"),
    ("processed", "frames that became overlays"),
    ("dropped", "frames replaced by a newer one before the worker took them"),
    ("errors", "faults counted by the part (logged once each)"),
    ("backend", "the backend running, e.g. 'onnxruntime (CPU)'"),
    ("model", "the pilot file's name"),
    ("layers", "conv layer names, shallow to deep (index i is /saliency/layer/<i>.jpg)"),
    ("method", "the saliency method (methods.METHODS)"),
    ("output", "the pilot output a gradient method explains ('steering' | 'throttle'), null for vbp"),
    ("explains", "what the picture explains, e.g. 'input-gradient of steering'"),
    ("watch_line", "the row (of the pilot's image) the attention is watched above: SALIENCY_WATCH_LINE, "
                   "or the upper third when it is 0; null before the first mask"),
    ("share_above", "share (0-1) of the attention above watch_line, mean of the last share_above_window "
                    "masks; null before the first mask"),
    ("share_above_latest", "the same share in the newest mask alone"),
    ("share_above_window", "how many masks share_above averages"),
    # from this module
    ("seq", "sequence number of the newest overlay (0: none yet)"),
    ("layer_shapes", "[h, w] of each layer's averaged map in the newest result"),
    ("overlays", "new overlays this stream has seen"),
    ("encodes", "JPEG encodes for /saliency/video: one per new overlay while it has a viewer (none without), "
                "never one per client"),
    ("camera_encodes", "JPEG encodes for /saliency/camera, same rule"),
    ("unwatched", "new overlays that no stream had a viewer for (nothing encoded)"),
    ("clients", "stream handlers running now (all streams)"),
    ("overlay_clients", "handlers running now on /saliency/video"),
    ("camera_clients", "handlers running now on /saliency/camera"),
    ("max_viewers", "stream clients allowed at once, all streams together (more get 503)"),
    ("refused", "stream clients refused because max_viewers were watching"),
    ("stalled", "stream clients dropped for taking no frame within the stall time"),
    ("frames_sent", "multipart frames written to clients, all streams"),
    ("bytes_sent", "JPEG bytes written to clients, all streams"),
    ("jpeg_bytes", "size of the newest overlay JPEG; null while /saliency/video has no viewer"),
    ("jpeg_quality", "JPEG quality of the streams (1-100)"),
    ("encode_ms", "median ms to JPEG-encode one picture (thread CPU time), or null"),
    ("drive_view", "true while /drive's video shows the overlay instead of the camera"),
    ("toggle_button", "web button (w1..w5) that flips drive_view, or null"),
])

Jpeg = collections.namedtuple("Jpeg", "seq data")

# This thread's CPU clock: time.thread_time is Python 3.7+; JetPack 4.6's Python 3.6 has the same clock here.
_thread_time = getattr(time, "thread_time", None) or (lambda: time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID))


class _Channel(object):
    """One MJPEG stream: the newest JPEG and the events of the handlers waiting for a newer one.
    Everything but ``clients`` (read by the worker) is touched only on the IOLoop thread."""

    def __init__(self, name):
        self.name = name
        self.frame = None  # Jpeg, or None when the newest result was not encoded
        self.wakers = set()
        self.encodes = 0

    @property
    def clients(self):
        return len(self.wakers)

    def publish(self, frame):
        self.frame = frame
        for waker in list(self.wakers):
            waker.set()


class SaliencyWeb(object):
    """The web side of one ``SaliencyPart``: encodes, counts, and serves. See the module docstring."""

    def __init__(self, ctr, part, jpeg_quality=JPEG_QUALITY, drive_view=False,
                 toggle_button=DEFAULTS["SALIENCY_TOGGLE_BUTTON"],
                 max_viewers=DEFAULTS["SALIENCY_MAX_VIEWERS"], stall_s=STALL_S,
                 allowed_hosts=DEFAULTS["SALIENCY_ALLOWED_HOSTS"]):
        quality = int(jpeg_quality)
        if not 1 <= quality <= 100:
            raise ValueError("SALIENCY_JPEG_QUALITY must be 1..100, not %r" % (jpeg_quality,))
        if int(max_viewers) < 1:
            raise ValueError("SALIENCY_MAX_VIEWERS must be at least 1, not %r" % (max_viewers,))
        self.max_viewers = int(max_viewers)
        self.stall_s = float(stall_s)
        self.allowed_hosts = allowed_hosts if isinstance(allowed_hosts, AllowedHosts) else AllowedHosts(allowed_hosts)
        self.refused = 0  # IOLoop thread only, as are stalled and the counters below
        self.stalled = 0
        self.ctr = ctr
        self.part = part
        self.jpeg_quality = quality
        self.drive_view = DriveViewToggle(on=drive_view, button=toggle_button)
        self.page = read_page(PAGE)
        self.overlay = _Channel("overlay")
        self.camera = _Channel("camera")
        self.closing = False
        self._lock = threading.Lock()  # the worker's counters, so stats() sees them consistently
        self._overlays = 0
        self._unwatched = 0
        self._encode_ms = collections.deque(maxlen=100)
        self._layer_cache = {}  # index -> Jpeg of the newest result's map (IOLoop thread only)
        self.frames_sent = 0
        self.bytes_sent = 0
        part.add_listener(self._on_result)

    # --- the part's worker thread -------------------------------------------------------------
    def _loop(self):
        """The server's IOLoop, or None before LocalWebController.update() has started it."""
        return getattr(self.ctr, "loop", None)

    def _on_result(self, result):
        """Listener: runs in the part's worker the moment an overlay is ready."""
        overlay_frame = camera_frame = None
        watched = self.overlay.clients or self.camera.clients
        if self.overlay.clients:
            overlay_frame = Jpeg(result.seq, self._encode(result.overlay))
        if self.camera.clients:
            camera_frame = Jpeg(result.seq, self._encode(result.frame))
        with self._lock:
            self._overlays += 1
            self._unwatched += 0 if watched else 1
            self.overlay.encodes += overlay_frame is not None
            self.camera.encodes += camera_frame is not None
        loop = self._loop()
        if loop is not None and not self.closing:
            try:
                loop.add_callback(self._publish, overlay_frame, camera_frame)
            except RuntimeError:  # the loop is closing with the car: nothing left to show
                pass

    def _encode(self, rgb):
        started = _thread_time()
        data = encode_jpeg(rgb, self.jpeg_quality)
        self._encode_ms.append((_thread_time() - started) * 1000.0)
        return data

    # --- the IOLoop thread --------------------------------------------------------------------
    def _publish(self, overlay_frame, camera_frame):
        self.overlay.publish(overlay_frame)
        self.camera.publish(camera_frame)

    def layer_jpeg(self, index):
        """JPEG of layer ``index``'s map in the newest result; None when there is no such map yet."""
        latest = self.part.latest
        if latest is None or not 0 <= index < len(latest.means) or latest.means[index] is None:
            return None  # (the part counted a malformed map as a fault and left None in its place)
        cached = self._layer_cache.get(index)
        if cached is None or cached.seq != latest.seq:
            try:
                picture = layer_picture(latest.means[index])
            except ValueError:
                return None
            cached = Jpeg(latest.seq, encode_jpeg(picture, self.jpeg_quality))
            self._layer_cache[index] = cached
        return cached

    def stats(self):
        """Everything in ``STATS_FIELDS``, JSON-ready."""
        figures = dict(self.part.stats())
        latest = self.part.latest
        with self._lock:
            figures.update(overlays=self._overlays, unwatched=self._unwatched, encodes=self.overlay.encodes,
                           camera_encodes=self.camera.encodes)
        encode_ms = median(self._encode_ms)
        newest = self.overlay.frame
        figures.update(
            seq=latest.seq if latest is not None else 0,
            layer_shapes=[list(m.shape[:2]) if m is not None else None for m in latest.means]
            if latest is not None else [],
            clients=self.clients, overlay_clients=self.overlay.clients, camera_clients=self.camera.clients,
            max_viewers=self.max_viewers, refused=self.refused, stalled=self.stalled,
            frames_sent=self.frames_sent, bytes_sent=self.bytes_sent,
            jpeg_bytes=len(newest.data) if newest is not None else None,
            jpeg_quality=self.jpeg_quality,
            encode_ms=round(encode_ms, 3) if encode_ms is not None else None,
            drive_view=self.drive_view.on, toggle_button=self.drive_view.button,
        )
        return figures

    @property
    def clients(self):
        return self.overlay.clients + self.camera.clients

    def routes(self):
        """(pattern, handler, kwargs) for ``Application.add_handlers``."""
        handlers = _handlers()
        mine = dict(hosts=self.allowed_hosts, web=self)
        return [
            (r"/saliency/?", handlers["page"], dict(hosts=self.allowed_hosts, page=self.page)),
            (r"/saliency/video", handlers["stream"], dict(mine, channel=self.overlay)),
            (r"/saliency/camera", handlers["stream"], dict(mine, channel=self.camera)),
            (r"/saliency/layer/([0-9]{1,3})\.jpg", handlers["layer"], mine),
            (r"/saliency/stats", handlers["stats"], mine),
            (r"/saliency/drive_view", handlers["drive_view"], mine),
        ]

    def close(self):
        """Ends every stream handler (call on the IOLoop thread, or via ``loop.add_callback``)."""
        self.closing = True
        for channel in (self.overlay, self.camera):
            channel.publish(None)


def attach_web(ctr, part, jpeg_quality=JPEG_QUALITY, drive_view=False,
               toggle_button=DEFAULTS["SALIENCY_TOGGLE_BUTTON"], max_viewers=DEFAULTS["SALIENCY_MAX_VIEWERS"],
               stall_s=STALL_S, review_tub=None, allowed_hosts=DEFAULTS["SALIENCY_ALLOWED_HOSTS"]):
    """Adds the saliency routes to a ``LocalWebController`` (call before ``V.start()``) and returns the
    ``SaliencyWeb``; add its ``drive_view`` part to the vehicle after ``UserPilotCondition``.
    ``review_tub`` (a tub path, or a callable giving the tub being written) also mounts the
    read-only review page at /saliency/review (review.py). Every route answers only the hosts
    in ``allowed_hosts`` (``guard.AllowedHosts``: names beyond the machine's own)."""
    web = SaliencyWeb(ctr, part, jpeg_quality=jpeg_quality, drive_view=drive_view, toggle_button=toggle_button,
                      max_viewers=max_viewers, stall_s=stall_s, allowed_hosts=allowed_hosts)
    ctr.add_handlers(r".*", web.routes())
    if review_tub is not None:
        from .review import mount  # the review page's module, only for a car that shows it

        mount(ctr, review_tub, web.allowed_hosts)
    limit_slow_connections(ctr)
    ctr.settings.setdefault("log_function", log_request)  # a flood of refused requests: one line a minute
    return web


def limit_slow_connections(ctr):
    """donkeycar's ``LocalWebController.update()`` creates its server with ``self.listen(port)``
    and no time limits; this instance's ``listen`` adds ``SERVER_LIMITS`` (idle/header and body
    timeouts), so a slow client cannot hold a connection (a file descriptor) for ever. The
    long-lived MJPEG responses are not affected: the limits bound reading requests, not replies."""
    listen = ctr.listen

    def listen_with_limits(port, address=None, **options):
        for name, value in SERVER_LIMITS.items():
            options.setdefault(name, value)
        return listen(port, address, **options)

    ctr.listen = listen_with_limits


# --- Tornado handlers (tornado is imported only when attach_web runs) ------------------------------

@functools.lru_cache(maxsize=None)
def _handlers():
    """This page's handler classes, on ``handlers.tornado_handlers``' shared ones."""
    import datetime

    require("tornado")  # one line saying how to get it, not a traceback
    from tornado.gen import with_timeout
    from tornado.iostream import StreamClosedError
    from tornado.locks import Event
    from tornado.util import TimeoutError as FlushTimeout

    shared = tornado_handlers()

    class StatsHandler(shared.Guarded):
        def get(self):
            self.reply_json(self.web.stats())

    class LayerHandler(shared.Guarded):
        def get(self, index):
            frame = self.web.layer_jpeg(int(index))
            if frame is None:
                self.fail(404, "no such layer map (yet)")
                return
            self.set_header("X-Saliency-Seq", str(frame.seq))
            self.reply_jpeg(frame.data)

    class DriveViewHandler(shared.SmallBody):
        max_body = MAX_BODY_BYTES

        def post(self):
            if not self.body.strip():
                wanted = None  # an empty body flips
            else:
                fields = self.body_fields(DRIVE_VIEW_FIELDS, '{"on": true} or {"on": false}, or an empty body to flip')
                if fields is None:
                    return
                wanted = fields[0]
            toggle = self.web.drive_view
            state = toggle.flip() if wanted is None else toggle.set(wanted)
            logger.info("saliency overlay in /drive: %s (from the web page)", "on" if state else "off")
            self.reply_json({"drive_view": state})

        put = post

    class StreamHandler(shared.Guarded):
        def initialize(self, hosts, web, channel):
            super(StreamHandler, self).initialize(hosts, web=web, channel=channel)
            self.waker = Event()
            self.closed = False

        async def get(self):
            if self.web.clients >= self.web.max_viewers:
                self.web.refused += 1
                self.set_status(503)
                self.set_header("Retry-After", "5")
                self.write("saliency streams: %d viewers already (SALIENCY_MAX_VIEWERS)" % self.web.max_viewers)
                return
            self.set_header("Content-Type", "multipart/x-mixed-replace; boundary=" + BOUNDARY)
            self.set_header("Cache-Control", "no-cache, no-store, must-revalidate")
            self.set_header("Pragma", "no-cache")
            channel = self.channel
            channel.wakers.add(self.waker)
            sent = None
            try:
                await self.flush_or_drop()  # headers now: the client knows the stream is there
                while not self.closed and not self.web.closing:
                    frame = channel.frame
                    if frame is not None and frame.seq != sent:
                        self.write(("--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n"
                                    "X-Saliency-Seq: %d\r\n\r\n" % (BOUNDARY, len(frame.data), frame.seq))
                                   .encode("ascii"))
                        self.write(frame.data)
                        self.write(b"\r\n")
                        sent = frame.seq
                        self.web.frames_sent += 1
                        self.web.bytes_sent += len(frame.data)
                        await self.flush_or_drop()  # a newer frame may arrive meanwhile: the loop checks again
                        continue
                    # No await between the check above and this wait: publish() runs on this same
                    # thread, so a frame cannot slip in unnoticed.
                    self.waker.clear()
                    await self.waker.wait()
            except StreamClosedError:
                pass
            finally:
                channel.wakers.discard(self.waker)

        async def flush_or_drop(self):
            """flush(), but a client that takes nothing for stall_s is hung up on (StreamClosedError):
            its handler would otherwise wait for it forever, holding a viewer's place."""
            try:
                await with_timeout(datetime.timedelta(seconds=self.web.stall_s), self.flush(),
                                   quiet_exceptions=(StreamClosedError,))
            except FlushTimeout:
                self.web.stalled += 1
                self.request.connection.stream.close()
                raise StreamClosedError()

        def on_connection_close(self):
            self.closed = True
            self.waker.set()

    return dict(page=shared.Page, stats=StatsHandler, layer=LayerHandler, drive_view=DriveViewHandler,
                stream=StreamHandler)
