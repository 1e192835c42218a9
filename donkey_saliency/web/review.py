"""The review page: scrub a recorded tub in the browser, camera | saliency, with the whole drive's
steering and throttle (user and pilot) on one timeline. This module is its routes and servers;
what they show is ``review_model.Review``'s.

Served two ways, at the same paths:
- ``donkey-saliency review TUB`` (``serve``): its own small Tornado server, optionally with
  ``--model`` (overlay and layer maps computed when the tub has none) and ``--writable`` (the ``d``
  key marks records deleted, as donkeycar does); with two ``--model``, camera | A | B and both pilots'
  steering (``review_pair``).
- on the car's ``LocalWebController`` (``mount``, from ``live.attach_web``): the tub being written,
  read-only, recorded saliency only (the car's CPU belongs to the pilot).

Routes (``PREFIX`` = /saliency/review):

    GET  PREFIX                        the page (a fixed package file)
    GET  PREFIX/meta                   JSON: tub, record count, rate, capabilities, top disagreements
    GET  PREFIX/timeline               the drive as bytes: ``TIMELINE_LAYOUT`` arrays of N int8/uint8
    GET  PREFIX/record/<i>             JSON: record i's fields (index, timestamp, mode, lag, values)
    GET  PREFIX/frame/<i>/<view>.jpg   view: camera | overlay | mask | layer<k> | pilotA | pilotB (two --model)
    POST PREFIX/deleted                body {"index": i, "deleted": bool}; --writable only, same Origin

Every route answers only a Host that is this machine (``guard.AllowedHosts``); the delete is refused
with 409 while the tub is being recorded (``tubs.index.live_writer``). Nothing that reads the tub
runs on the IOLoop: each request's work runs on its source's one thread (``review_model``).
"""
import functools
import logging

from ..errors import InputError
from ..util.deps import require
from .guard import REFUSALS, SERVER_LIMITS, AllowedHosts, log_request
from .handlers import read_page, tornado_handlers
from .review_model import CarReview, FixedReview, NotFound, Review
from ..tubs.index import TubBeingWritten

logger = logging.getLogger(__name__)

PREFIX = "/saliency/review"
DEFAULT_PORT = 8890  # `donkey-saliency review`'s port; the page opens at a record with PREFIX#record=N
PAGE = "review.html"  # in web/static
MAX_POST_BYTES = 256
DELETED_FIELDS = [("index", int), ("deleted", bool)]
MAX_CONNECTIONS = 256  # the CLI's server: connections at once (fewer where the file limit is lower)


# --------------------------------------------------------------------------------------------
# Tornado

def routes(source, allowed_hosts):
    """(pattern, handler, kwargs) for ``add_handlers``; ``source.get()`` gives the Review, run on
    ``source.executor``; every route answers only ``allowed_hosts`` (an ``AllowedHosts``)."""
    handlers = _handlers()
    options = dict(source=source, hosts=allowed_hosts)
    return [
        (PREFIX + r"/?", handlers["page"], dict(page=read_page(PAGE), hosts=allowed_hosts)),
        (PREFIX + r"/meta", handlers["meta"], options),
        (PREFIX + r"/timeline", handlers["timeline"], options),
        (PREFIX + r"/record/([0-9]{1,9})", handlers["record"], options),
        (PREFIX + r"/frame/([0-9]{1,9})/(camera|overlay|mask|pilotA|pilotB|layer[0-9]{1,3})\.jpg", handlers["frame"],
         options),
        (PREFIX + r"/deleted", handlers["deleted"], options),
    ]


def mount(ctr, tub, allowed_hosts):
    """Adds the read-only review of ``tub`` (a path, or a callable giving the tub being written)
    to a running ``LocalWebController``."""
    ctr.add_handlers(r".*", routes(CarReview(tub), allowed_hosts))


def application(review, allowed_hosts=()):
    """The CLI's Tornado application: the review routes, and / sends you to the page; hosts as in
    ``guard.AllowedHosts`` (names beyond loopback and this machine's own)."""
    from tornado.web import Application

    hosts = allowed_hosts if isinstance(allowed_hosts, AllowedHosts) else AllowedHosts(allowed_hosts)
    return Application([(r"/", _handlers()["redirect"], dict(url=PREFIX, hosts=hosts))]
                       + routes(FixedReview(review), hosts), compress_response=True, log_function=log_request)


def connection_limit():
    """Connections the CLI's server takes at once: ``MAX_CONNECTIONS``, fewer where the process's
    file limit would run out first (Tornado's accept then fails in a loop, logging each time)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):
        return MAX_CONNECTIONS
    return MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else max(4, min(MAX_CONNECTIONS, soft // 2))


def serve(review, host="127.0.0.1", port=DEFAULT_PORT, ready=None, allowed_hosts=()):
    """Serve ``review`` until interrupted; ``ready(url)`` is called once it listens. Slow clients
    are cut off (``guard.SERVER_LIMITS``) and connections beyond ``connection_limit()``
    closed at once."""
    import asyncio

    require("tornado")  # one line saying how to get it, not a traceback
    from tornado.ioloop import IOLoop
    from tornado.netutil import bind_sockets

    asyncio.set_event_loop(asyncio.new_event_loop())
    try:
        sockets = bind_sockets(port, address=host)
    except OSError as error:
        raise InputError("cannot listen on %s:%d: %s" % (host, port, error.strerror or error))
    names = list(allowed_hosts) + ([host] if host not in ("", "0.0.0.0", "::") else [])
    server = limited_server(application(review, names), connection_limit())
    server.add_sockets(sockets)
    bound = sockets[0].getsockname()[1]
    shown = "[%s]" % host if ":" in host else host
    if ready is not None:
        ready("http://%s:%d%s" % (shown, bound, PREFIX))
    try:
        IOLoop.current().start()
    finally:
        server.stop()


def limited_server(app, limit):
    """A Tornado HTTPServer for ``app`` with ``SERVER_LIMITS`` that closes connections beyond
    ``limit`` as soon as they are accepted (refusals logged rate-limited)."""
    from tornado.httpserver import HTTPServer

    class LimitedServer(HTTPServer):
        def handle_stream(self, stream, address):
            if len(self._connections) >= limit:  # HTTPServer's own set of open connections
                REFUSALS.refused("connections", "a connection: %d open already" % limit)
                stream.close()
                return
            super(LimitedServer, self).handle_stream(stream, address)

    return LimitedServer(app, max_body_size=64 * 1024, **SERVER_LIMITS)


@functools.lru_cache(maxsize=None)
def _handlers():
    """This page's handler classes, on ``handlers.tornado_handlers``' shared ones."""
    from tornado.ioloop import IOLoop

    shared = tornado_handlers()

    class ReviewHandler(shared.Guarded):
        """``source``: where the Review comes from (``review_model.CarReview``/``FixedReview``)."""

        async def run(self, method, *args):
            """``method(review, *args)`` on the source's thread (opening the review there too: nothing
            that reads the tub runs on the IOLoop); None, with the refusal sent, when it fails."""
            source = self.source
            try:
                return await IOLoop.current().run_in_executor(source.executor, lambda: method(source.get(), *args))
            except NotFound as error:
                self.fail(404, str(error))
            except PermissionError as error:
                self.fail(403, str(error))
            except TubBeingWritten as error:
                self.fail(409, str(error))
            except InputError as error:
                self.fail(400, str(error))
            return None

    class MetaHandler(ReviewHandler):
        async def get(self):
            meta = await self.run(Review.meta)
            if meta is not None:
                self.reply_json(meta)

    class TimelineHandler(ReviewHandler):
        async def get(self):
            data = await self.run(Review.timeline)
            if data is not None:
                self.reply(data, "application/octet-stream")

    class RecordHandler(ReviewHandler):
        async def get(self, index):
            fields = await self.run(Review.record, int(index))
            if fields is not None:
                self.reply_json(fields)

    class FrameHandler(ReviewHandler):
        async def get(self, index, view):
            data = await self.run(Review.picture, int(index), view)
            if data is not None:
                self.reply_jpeg(data, cache="no-cache")

    class DeletedHandler(shared.SmallBody, ReviewHandler):
        """The one write: only the page itself deletes (a request without Origin, from curl or
        another tool, is refused too), a small JSON body, an index in range."""

        max_body = MAX_POST_BYTES
        origin_required = True

        async def post(self):
            fields = self.body_fields(DELETED_FIELDS, '{"index": <record index>, "deleted": true|false}')
            if fields is None:
                return
            index, deleted = fields
            state = await self.run(Review.set_deleted, index, deleted)
            if state is not None:
                logger.info("review: record %d marked %s", index, "deleted" if state else "live")
                self.reply_json({"index": index, "deleted": state})

    return dict(redirect=shared.Redirect, page=shared.Page, meta=MetaHandler, timeline=TimelineHandler,
                record=RecordHandler, frame=FrameHandler, deleted=DeletedHandler)
