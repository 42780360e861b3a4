"""The inspector: an HTTP/1.x page describing the connection it arrived on.

``twist schannel`` without ``--connect`` serves this. Any method and any path
get the same answer: what the security context of *this* connection
negotiated (protocol, cipher, key exchange group, ALPN, server name, client
certificate, session resumption) and the status sequence of its handshake.
The answer is plain text, HTML or JSON, chosen by the request's ``Accept``
header (or ``?format=text|html|json``).

It is built on ``twisted.web``, so HTTP/1.0 and HTTP/1.1 (keep-alive,
pipelining) behave as Twisted's web server does.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.web import http, resource, server

__all__ = ["InspectorResource", "InspectorSite", "describe", "render_text", "render_html"]

_TYPES = ("text/plain", "text/html", "application/json")


def _certificate(certificate: x509.Certificate) -> dict[str, Any]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = [str(value) for value in extension.value.get_values_for_type(x509.DNSName)]
        names += [str(value) for value in extension.value.get_values_for_type(x509.IPAddress)]
        names += [str(v) for v in extension.value.get_values_for_type(x509.RFC822Name)]
        names += [
            str(v) for v in extension.value.get_values_for_type(x509.UniformResourceIdentifier)
        ]
    except x509.ExtensionNotFound:
        names = []
    return {
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "subject_alt_names": names,
        "not_after": certificate.not_valid_after_utc.isoformat(),
        "sha256": certificate.fingerprint(hashes.SHA256()).hex(":").upper(),
    }


def _address(address: object) -> str:
    """``host:port``, ``[v6]:port`` or ``unix:path`` for a Twisted address."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    name = getattr(address, "name", None)
    if name is not None:
        return f"unix:{name.decode() if isinstance(name, bytes) else name}"
    return str(address)


def describe(transport: object) -> dict[str, Any]:
    """What *transport*'s security context negotiated, as JSON-ready data.

    *transport* is the transport an application protocol was given: a
    ``SchannelProtocol`` (or anything that passes attribute lookups on to
    one), or a plain transport, which is reported as ``"tls": false``.
    Never raises for a transport without TLS or a failed handshake.
    """
    getPeer = getattr(transport, "getPeer", None)
    peer = _address(getPeer()) if callable(getPeer) else None
    context = getattr(transport, "securityContext", None)
    result: dict[str, Any] = {"peer": peer, "tls": context is not None}
    if context is None:
        return result
    ladder = getattr(transport, "handshakeLadder", None) or []
    result["handshake"] = [
        {"call": f"{call} #{number}", "status": str(status), "bytes_in": int(bytes_in),
         "bytes_out": int(bytes_out)}
        for number, (call, status, bytes_in, bytes_out) in enumerate(ladder, 1)
    ]
    if not getattr(context, "established", False):
        result["established"] = False
        return result
    try:
        attributes = context.attributes
    except Exception:  # a context deleted under us: report what we have
        result["established"] = False
        return result
    result.update(
        established=True,
        protocol=attributes.protocol,
        cipher=attributes.cipher,
        cipher_bits=attributes.cipher_bits,
        group=attributes.group,
        alpn=attributes.alpn,
        server_name=attributes.server_name,
        session_reused=attributes.session_reused,
        client_certificate=(
            _certificate(attributes.peer_certificate)
            if attributes.peer_certificate is not None
            else None
        ),
    )
    return result


def _rows(description: Mapping[str, Any]) -> list[tuple[str, str]]:
    if not description.get("tls"):
        return [("peer", str(description.get("peer"))), ("TLS", "no (plain connection)")]
    rows = [("peer", str(description.get("peer")))]
    if not description.get("established"):
        return [*rows, ("TLS", "handshake not finished")]
    client = description.get("client_certificate")
    rows += [
        ("protocol", description["protocol"]),
        ("cipher", f"{description['cipher']} ({description['cipher_bits']} bits)"),
        ("key exchange group", description["group"] or "(not reported)"),
        ("ALPN", description["alpn"] or "(none)"),
        ("server name (SNI)", description["server_name"] or "(none sent)"),
        ("client certificate", client["subject"] if client else "(none)"),
        ("session reused", "yes" if description["session_reused"] else "no"),
    ]
    if client:
        rows += [
            ("client issuer", client["issuer"]),
            ("client SHA-256", client["sha256"]),
        ]
    return rows


def _ladder_lines(description: Mapping[str, Any]) -> list[str]:
    return [
        f"  {step['call']:<14}{step['status']:<24}in {step['bytes_in']:>6}  "
        f"out {step['bytes_out']:>6}"
        for step in description.get("handshake", [])
    ]


def render_text(description: Mapping[str, Any]) -> str:
    """The plain-text page for a :func:`describe` result."""
    lines = ["txschannel inspector: this connection", ""]
    lines += [f"{name + ':':<20}{value}" for name, value in _rows(description)]
    ladder = _ladder_lines(description)
    if ladder:
        lines += ["", "handshake (AcceptSecurityContext calls):", *ladder]
    return "\n".join(lines) + "\n"


def render_html(description: Mapping[str, Any]) -> str:
    """The HTML page for a :func:`describe` result."""
    rows = "\n".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
        for name, value in _rows(description)
    )
    steps = "\n".join(
        "<tr>" + "".join(
            f"<td>{html.escape(str(step[key]))}</td>"
            for key in ("call", "status", "bytes_in", "bytes_out")
        ) + "</tr>"
        for step in description.get("handshake", [])
    )
    ladder = (
        "<h2>Handshake</h2>\n<table>\n<tr><th>call</th><th>status</th><th>bytes in</th>"
        f"<th>bytes out</th></tr>\n{steps}\n</table>\n"
        if steps
        else ""
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        "<title>txschannel inspector</title></head>\n<body>\n"
        "<h1>This connection</h1>\n<table>\n"
        f"{rows}\n</table>\n{ladder}</body></html>\n"
    )


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
