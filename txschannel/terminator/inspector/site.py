"""The inspector over HTTP/1.x: any method and path get the page, in the format
that ``?format=`` or the ``Accept`` header asks for (text, HTML or JSON).

Built on ``twisted.web``, so HTTP/1.0 and HTTP/1.1 (keep-alive, pipelining)
behave as Twisted's web server does; request bodies are counted and dropped.
"""

from __future__ import annotations

import json

from twisted.web import http, resource, server

from txschannel.terminator.inspector.describe import describe
from txschannel.terminator.inspector.html import render_html
from txschannel.terminator.inspector.text import render_text

__all__ = ["InspectorResource", "InspectorSite"]


_TYPES = ("text/plain", "text/html", "application/json")


def _choose(accept: str | None, requested: str | None) -> str:
    """The media type to answer with, from ``?format=`` or the Accept header.

    Each of our types gets the q value of the most specific Accept entry
    that matches it; the highest q wins, and ties go to the first of text,
    HTML, JSON (so ``*/*``, as curl sends, gets text).
    """
    if requested in ("text", "html", "json"):
        return {"text": "text/plain", "html": "text/html", "json": "application/json"}[requested]
    if not accept:
        return "text/plain"
    entries: list[tuple[str, float]] = []
    for item in accept.split(","):
        media, _, parameters = item.strip().partition(";")
        q = 1.0
        for parameter in parameters.split(";"):
            name, _, value = parameter.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        entries.append((media.strip().lower(), q))
    best, best_q = "text/plain", 0.0
    for candidate in _TYPES:
        patterns = {candidate: 2, candidate.split("/")[0] + "/*": 1, "*/*": 0}
        matches = [(patterns[media], q) for media, q in entries if media in patterns]
        if not matches:
            continue
        _, q = max(matches)
        if q > best_q:
            best, best_q = candidate, q
    return best


class InspectorResource(resource.Resource):
    """Answers every request, whatever its method and path, with the page."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def render(self, request: server.Request) -> bytes:
        """Describe ``request``'s connection in the negotiated format."""
        description = describe(request.channel.transport)
        description["http"] = {
            "method": request.method.decode("ascii", "replace"),
            "path": request.uri.decode("ascii", "replace"),
            "version": request.clientproto.decode("ascii", "replace"),
        }
        requested = request.args.get(b"format", [b""])[0].decode("ascii", "replace")
        accept = request.getHeader("accept")
        media = _choose(accept, requested or None)
        if media == "application/json":
            body = json.dumps(description, indent=2, sort_keys=True) + "\n"
        elif media == "text/html":
            body = render_html(description)
        else:
            body = render_text(description)
        headers = request.responseHeaders
        headers.setRawHeaders(b"content-type", [f"{media}; charset=utf-8".encode()])
        headers.setRawHeaders(b"vary", [b"accept"])
        headers.setRawHeaders(b"cache-control", [b"no-store"])
        # Nothing on the page is fetched or run: say so to the browser.
        headers.setRawHeaders(
            b"content-security-policy",
            [b"default-src 'none'; style-src 'unsafe-inline'; img-src data:"],
        )
        headers.setRawHeaders(b"x-content-type-options", [b"nosniff"])
        return body.encode("utf-8")


class _Discarded:
    """A request body the inspector does not keep: counted, then dropped.

    twisted.web keeps every body, in memory or (past 100 KB) in a temporary
    file, without a limit; the page never looks at it, so a client that
    POSTs without end would only fill memory or the disk.
    """

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)

    def tell(self) -> int:
        return self.size

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


class _InspectorRequest(server.Request):
    """A request whose body is discarded as it arrives (see :class:`_Discarded`)."""

    def gotLength(self, length: int | None) -> None:
        self.content = _Discarded()


class InspectorSite(server.Site):
    """The inspector as a factory: HTTP/1.0 and 1.1 only.

    Twisted's default channel switches to HTTP/2 when ALPN says ``h2`` and
    refuses any other ALPN value; the inspector speaks HTTP/1.x whatever was
    negotiated, so it uses the HTTP/1.x channel directly.

    The "what the client offered" part needs the ClientHello: serve it
    through ``SchannelFactory(..., keep_client_hello=True)``; elsewhere the
    page says it was not kept.
    """

    protocol = http.HTTPChannel  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            InspectorResource(), requestFactory=_InspectorRequest
        )
        # One line per request would double the per-connection log line.
        self.noisy = False

    def log(self, request: http.Request) -> None:
        """Requests are not logged: ``twist schannel`` logs each connection."""
