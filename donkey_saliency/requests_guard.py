"""Checks every state-changing web request passes before its body is read (the car's
/saliency/drive_view and the review page's delete marks): where it comes from, and how big it says
it is. Plain functions of the headers: no tornado needed to import or test them."""
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


def declared_length(headers, limit):
    """The body size a request declares; ``limit + 1`` when the header is not a number (refused)."""
    try:
        return int(headers.get("Content-Length", "0"))
    except ValueError:
        return limit + 1
