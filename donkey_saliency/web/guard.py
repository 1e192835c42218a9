"""The checks web requests pass, on both servers (the car's routes and ``donkey-saliency review``):
every request's Host (``AllowedHosts``, against DNS rebinding); a state-changing request's origin
and declared size before its body is read, and its body by one rule (``json_fields``: the car's
/saliency/drive_view and the review page's delete marks); the time limits on slow connections
(``SERVER_LIMITS``); refusals logged rate-limited (``REFUSALS``). Plain functions of the headers and
bodies: no tornado needed to import or test them (``handlers.py`` applies them)."""
import json
import logging
from urllib.parse import urlsplit


def same_origin(headers, host, origin_required=False):
    """Whether a request comes from a page of the host:port it was sent to (``host``: its Host
    header), by its ``Origin`` (or, without one, its ``Referer``). With neither, it comes from a
    script or curl, not from another site's page (browsers send Origin with every cross-site POST):
    allowed unless ``origin_required``, as for a write only the page itself makes."""
    claimed = headers.get("Origin")
    if not claimed and not origin_required:
        claimed = headers.get("Referer")
        if not claimed:
            return True
    if not claimed:
        return False
    try:
        parts = urlsplit(claimed)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc.lower() == (host or "").lower()


def json_fields(body, fields):
    """The values of a state-changing request's body, in ``fields``' order: ``body`` (bytes) must be
    one flat JSON object whose keys are exactly ``fields`` (an ordered list of (name, type)), each
    value of its type (a bool is no int). ValueError otherwise. A bracket beyond the object's own is
    refused before any parser sees the body: ``import donkeycar`` raises the recursion limit, and a
    deep body would crash the car's process."""
    text = body.decode("utf-8").strip()  # UnicodeDecodeError is a ValueError
    if not (text.startswith("{") and text.endswith("}")) or text.count("{") + text.count("[") != 1:
        raise ValueError("not one flat JSON object")
    values = json.loads(text)
    if sorted(values) != sorted(name for name, _ in fields):
        raise ValueError("keys %s, expected %s" % (sorted(values), [name for name, _ in fields]))
    for name, kind in fields:
        value = values[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ValueError("%s must be %s" % (name, kind.__name__))
    return [values[name] for name, _ in fields]


def declared_length(headers, limit):
    """The body size a request declares; ``limit + 1`` when the header is not a number (refused)."""
    try:
        return int(headers.get("Content-Length", "0"))
    except ValueError:
        return limit + 1


# --------------------------------------------------------------------------------------------
# Every request: the Host it was sent to (DNS rebinding)

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def host_name(host_header):
    """The lower-case name or address of a Host header, without its port (and an IPv6 address
    without brackets); "" when it is not one."""
    host = (host_header or "").strip().lower()
    if host.startswith("["):  # [v6 address] or [v6 address]:port
        name, bracket, rest = host[1:].partition("]")
        if not bracket:
            return ""
        port = rest[1:] if rest.startswith(":") else rest
    else:
        name, _, port = host.partition(":")
    if (port and not port.isdigit()) or not name:
        return ""
    return name.rstrip(".")


def _address(text):
    import ipaddress

    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def own_names():
    """This machine's names as a browser may know it: its hostname, that name with ``.local``
    (mDNS: donkeycar's own start-up line says ``<hostname>.local:8887``), its fully qualified name."""
    import socket

    names = set()
    for name in (socket.gethostname(), socket.getfqdn()):
        name = (name or "").lower().rstrip(".")
        if name:
            names.update((name, name.split(".")[0], name.split(".")[0] + ".local"))
    return names


class AllowedHosts(object):
    """The Host headers a server answers: loopback names and addresses, this machine's names, the
    address the request arrived at, and ``extra`` (names; ".example.com" also allows its
    subdomains; "*" turns the check off). A page of another site that rebinds its own name to this
    machine's address sends its own name as Host, and is refused: an address literal names the
    server the browser really connected to, a name the attacker's DNS answers for does not."""

    def __init__(self, extra=()):
        extra = [extra] if isinstance(extra, str) else extra  # one name given without a list
        extra = [str(name).strip().lower().rstrip(".") for name in (extra or ()) if str(name).strip()]
        self.any = "*" in extra
        self.suffixes = tuple(name for name in extra if name.startswith("."))
        self.names = set(LOOPBACK_NAMES) | own_names() | set(n for n in extra if not n.startswith("."))

    def allows(self, host_header, local_address=None):
        """Whether a request with this Host header, arriving at ``local_address``, is answered."""
        if self.any:
            return True
        name = host_name(host_header)
        if not name:
            return False
        address = _address(name)
        if address is not None:
            return address.is_loopback or (local_address is not None and address == _address(local_address))
        return (name in self.names or name.endswith(".localhost") or name.endswith(self.suffixes)
                or ("." + name) in self.suffixes)


def refuse_foreign_host(handler, allowed):
    """For a Tornado handler's ``prepare``: True (and a 403 sent, the refusal logged rate-limited)
    when the request's Host is not in ``allowed`` (an ``AllowedHosts``)."""
    request = handler.request
    try:
        local = request.connection.stream.socket.getsockname()[0]
    except (AttributeError, OSError, IndexError):
        local = None
    if allowed.allows(request.host, local):
        return False
    REFUSALS.refused("host", "Host %r (not this machine: add it to SALIENCY_ALLOWED_HOSTS / --allow-host if "
                             "you reach the car by that name)" % (request.host[:100],))
    handler.set_status(403)
    handler.set_header("Content-Type", "text/plain; charset=utf-8")
    handler.set_header("Connection", "close")
    handler.finish("Host not allowed")
    return True


# --------------------------------------------------------------------------------------------
# Slow connections and the log

IDLE_S = 30.0   # a connection that sends no (complete) request headers for this long is closed
BODY_S = 10.0   # a request body not received whole within this long: the connection is closed
SERVER_LIMITS = dict(idle_connection_timeout=IDLE_S, body_timeout=BODY_S)  # tornado HTTPServer options
REFUSAL_LOG_EVERY_S = 60.0


class RefusalLog(object):
    """Refused requests, logged at most one line per kind every ``every_s`` seconds (a flood of
    hostile requests must not flood the car's log), each line saying how many came meanwhile."""

    def __init__(self, log, every_s=REFUSAL_LOG_EVERY_S, clock=None):
        import threading
        import time

        self.log = log
        self.every_s = float(every_s)
        self.clock = clock or time.monotonic
        self.counts = {}  # kind -> refusals in all
        self._last = {}  # kind -> (time of the last line, count then)
        self._lock = threading.Lock()

    def refused(self, kind, detail):
        now = self.clock()
        with self._lock:
            count = self.counts[kind] = self.counts.get(kind, 0) + 1
            last = self._last.get(kind)
            if last is not None and now - last[0] < self.every_s:
                return False
            self._last[kind] = (now, count)
        since = count - last[1] - 1 if last is not None else 0
        self.log.warning("refused a request: %s%s", detail,
                         " (and %d more like it in the last %.0f s)" % (since, now - last[0]) if since else "")
        return True


REFUSALS = RefusalLog(logging.getLogger("donkey_saliency.web.live"))


def log_request(handler):
    """A Tornado ``log_function``: answered requests as Tornado logs them (INFO, tornado.access),
    refused and failed ones (4xx, 5xx: one WARNING line each in Tornado's own) through ``REFUSALS``."""
    status = handler.get_status()
    request = handler.request
    line = "%d %s %s (%s)" % (status, request.method, request.uri[:200], request.remote_ip)
    if status < 400:
        logging.getLogger("tornado.access").info("%s %.2fms", line, 1000.0 * request.request_time())
    else:
        REFUSALS.refused("status %d" % status, line)
