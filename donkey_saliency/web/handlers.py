"""The Tornado handlers both web pages build on: the car's live routes (``live.py``) and the review
page (``review.py``, on its own server or mounted on the car).

Every route answers only a Host in its ``hosts`` (``guard.AllowedHosts``: DNS rebinding). Replies are
a fixed page file (read once, when the routes are made: nothing from a request names a file), JSON
or JPEG bytes (``no-store`` unless a route says otherwise); refusals are JSON ``{"error": why}``. A request that
changes something (``SmallBodyHandler``) comes from a page of the same host, is refused from its
headers before a large body is read, and its body is read by ``guard.json_fields``.

Tornado is imported when a server first asks for the classes (``tornado_handlers``): the package
itself imports with numpy alone.
"""
import functools
import json
import os

from .guard import declared_length, json_fields, refuse_foreign_host, same_origin

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


def read_page(name):
    """The bytes of a page shipped in the package (``static/<name>``)."""
    with open(os.path.join(STATIC, name), "rb") as handle:
        return handle.read()


@functools.lru_cache(maxsize=None)
def tornado_handlers():
    """The shared handler classes, built once: ``.Guarded``, ``.Page``, ``.Redirect``, ``.SmallBody``."""
    import types

    from tornado.web import RedirectHandler, RequestHandler, stream_request_body

    class GuardedHandler(RequestHandler):
        """Answers only a Host in ``hosts``; the route's other keyword arguments become attributes
        (``web=...`` gives ``self.web``)."""

        def initialize(self, hosts, **context):
            self.hosts = hosts
            self.__dict__.update(context)

        def prepare(self):
            refuse_foreign_host(self, self.hosts)

        def reply(self, data, content_type, cache="no-store"):
            self.set_header("Content-Type", content_type)
            self.set_header("Cache-Control", cache)
            self.finish(data)

        def reply_json(self, value, status=200):
            self.set_status(status)
            self.reply(json.dumps(value), "application/json")

        def reply_jpeg(self, data, cache="no-store"):
            self.reply(data, "image/jpeg", cache)

        def fail(self, status, message):
            self.reply_json({"error": message}, status)

    class PageHandler(GuardedHandler):
        """A fixed page: ``page`` (bytes, from ``read_page``)."""

        def get(self):
            self.reply(self.page, "text/html; charset=utf-8", cache="no-cache")

    class GuardedRedirect(RedirectHandler):
        def initialize(self, url, hosts):
            super(GuardedRedirect, self).initialize(url)
            self.hosts = hosts

        def prepare(self):
            refuse_foreign_host(self, self.hosts)

    @stream_request_body
    class SmallBodyHandler(GuardedHandler):
        """A request that changes something: sent by a page of the host it was sent to (with
        ``origin_required``, only one that says so in an Origin header), with a body of at most
        ``max_body`` bytes. The body is streamed to us, so ``prepare`` refuses a large one from
        its headers before reading it; a chunked one is cut off by Tornado at the same size."""

        max_body = 256
        origin_required = False

        def prepare(self):
            self.body = bytearray()
            if refuse_foreign_host(self, self.hosts):
                return
            if not same_origin(self.request.headers, self.request.host, origin_required=self.origin_required):
                self.refuse(403, "cross-origin request refused")
            elif declared_length(self.request.headers, self.max_body) > self.max_body:
                self.refuse(413, "body over %d bytes" % self.max_body)
            else:
                self.request.connection.set_max_body_size(self.max_body)

        def refuse(self, status, message):
            self.set_header("Connection", "close")  # the body stays unread
            self.fail(status, message)

        def data_received(self, chunk):
            if not self._finished:
                self.body.extend(chunk)

        def body_fields(self, fields, expected):
            """``guard.json_fields`` of the body, or None with a 400 saying ``expected``."""
            try:
                return json_fields(bytes(self.body), fields)
            except ValueError:
                self.fail(400, "expected " + expected)
                return None

    return types.SimpleNamespace(Guarded=GuardedHandler, Page=PageHandler, Redirect=GuardedRedirect,
                                 SmallBody=SmallBodyHandler)
