"""The inspector: an HTTP/1.x page describing the connection it arrived on.

``twist schannel`` without ``--connect`` serves this. Any method and any path
get the same answer: what the security context of *this* connection
negotiated (protocol, cipher, key exchange group, ALPN, server name, client
certificate, session resumption), the handshake as a ladder of flights with
the status of each ``AcceptSecurityContext`` call, and, when the listener
keeps ClientHellos (``SchannelFactory(..., keep_client_hello=True)``), what
the client offered and its JA4 fingerprint.

The answer is plain text, HTML or JSON, chosen by the request's ``Accept``
header (or ``?format=text|html|json``); the three carry the same facts. The
HTML page is one self-contained document (inline style and SVG, nothing
fetched), readable on a phone and in dark mode.

It is built on ``twisted.web``, so HTTP/1.0 and HTTP/1.1 (keep-alive,
pipelining) behave as Twisted's web server does.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL
from twisted.web import http, resource, server

from txschannel.peertext import printable
from txschannel.status import Status
from txschannel.terminator.addresses import address_text
from txschannel.terminator.clienthello import (
    ClientHello,
    cipher_suite_code,
    cipher_suite_name,
    compression_name,
    extension_name,
    group_code,
    group_name,
    ja4,
    parse_client_hello,
    psk_mode_name,
    signature_scheme_name,
    version_name,
)

__all__ = [
    "InspectorResource",
    "InspectorSite",
    "describe",
    "describe_client_hello",
    "render_text",
    "render_html",
]

#: What the page calls itself.
PRODUCT = "txschannel inspector"

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


# -- the ClientHello -----------------------------------------------------------------


def _code(value: int, name: Callable[[int], str], width: int = 4) -> dict[str, Any]:
    text = name(value)
    return {"code": f"0x{value:0{width}x}", "name": text, "grease": text == "GREASE"}


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


def describe_client_hello(message: bytes) -> dict[str, Any]:
    """What the ClientHello *message* offered, as JSON-ready data.

    Every code comes as ``{"code": "0x1301", "name": ..., "grease": ...}``
    in the client's order; ``ja4``, ``ja4_r``, ``ja4_o`` and ``ja4_ro`` are
    its JA4 fingerprint in its four forms. Never raises: a hello that cannot
    be read whole is described as far as it goes, with ``errors``.
    """
    return _hello_facts(parse_client_hello(message))


def _hello_facts(hello: ClientHello) -> dict[str, Any]:
    return {
        "size": hello.size,
        "version": (
            _code(hello.legacy_version, version_name)
            if hello.legacy_version is not None else None
        ),
        "supported_versions": (
            [_code(v, version_name) for v in hello.supported_versions]
            if hello.supported_versions is not None else None
        ),
        "server_name": hello.server_name,
        "alpn": [_text(protocol) for protocol in hello.alpn],
        "cipher_suites": [_code(c, cipher_suite_name) for c in hello.cipher_suites],
        "groups": [_code(g, group_name) for g in hello.groups],
        "key_shares": [
            {**_code(share.group, group_name), "size": share.size}
            for share in hello.key_shares
        ],
        "signature_algorithms": [
            _code(a, signature_scheme_name) for a in hello.signature_algorithms
        ],
        "extensions": [
            {**_code(e.type, extension_name), "size": len(e.data)} for e in hello.extensions
        ],
        "psk_key_exchange_modes": [
            _code(m, psk_mode_name, 2) for m in hello.psk_key_exchange_modes
        ],
        "compression_methods": [_code(m, compression_name, 2) for m in hello.compression_methods],
        "session_id_size": len(hello.session_id),
        "resumption": hello.resumption,
        "early_data": hello.early_data,
        "ja4": ja4(hello),
        "ja4_r": ja4(hello, raw=True),
        "ja4_o": ja4(hello, original=True),
        "ja4_ro": ja4(hello, raw=True, original=True),
        "errors": list(hello.errors),
    }


# -- the handshake as flights ------------------------------------------------------


def _flights(steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ladder's calls grouped by flight: a flight ends with the call that
    answered it (a token) or finished the handshake. Calls that only took a
    partial flight (INCOMPLETE_MESSAGE, or CONTINUE_NEEDED with nothing to
    send) belong to the flight they started."""
    flights: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for step in steps:
        if current is None:
            current = {"calls": [], "bytes_in": 0, "bytes_out": 0}
        current["calls"].append(step["call"])
        current["bytes_in"] += step["bytes_in"]
        current["bytes_out"] += step["bytes_out"]
        current["status"] = step["status"]
        waiting = step["status"] in ("CONTINUE_NEEDED", "INCOMPLETE_MESSAGE")
        if step["bytes_out"] or not waiting:
            flights.append(current)
            current = None
    if current is not None:
        flights.append(current)
    return flights


def _messages(
    protocol: str,
    *,
    reused: bool,
    retry: bool,
    compatible: bool,
    requested: bool,
    presented: bool,
    ticket: bool,
) -> list[tuple[list[str], list[str]]]:
    """The handshake messages of each flight of a successful server-side
    handshake, (client's, server's), as the protocol defines them for these
    circumstances. *compatible*: TLS 1.3 middlebox compatibility mode (the
    client sent a session id, so both sides send a ChangeCipherSpec)."""
    if protocol == "TLSv1.3":
        ccs = ["ChangeCipherSpec"] if compatible else []
        request = ["CertificateRequest"] if requested and not reused else []
        proof = [] if reused else ["Certificate", "CertificateVerify"]
        answer = ["EncryptedExtensions", *request, *proof, "Finished"]
        if requested and not reused:
            client_proof = ["Certificate", "CertificateVerify"] if presented else ["Certificate"]
        else:
            client_proof = []
        if retry:
            return [
                (["ClientHello"], ["HelloRetryRequest", *ccs]),
                ([*ccs, "ClientHello"], ["ServerHello", *answer]),
                ([*client_proof, "Finished"], ["NewSessionTicket"]),
            ]
        return [
            (["ClientHello"], ["ServerHello", *ccs, *answer]),
            ([*ccs, *client_proof, "Finished"], ["NewSessionTicket"]),
        ]
    if reused:
        return [
            (["ClientHello"], ["ServerHello", "ChangeCipherSpec", "Finished"]),
            (["ChangeCipherSpec", "Finished"], []),
        ]
    return [
        (["ClientHello"], ["ServerHello", "Certificate", "ServerKeyExchange",
                           *(["CertificateRequest"] if requested else []), "ServerHelloDone"]),
        ([*(["Certificate"] if requested else []), "ClientKeyExchange",
          *(["CertificateVerify"] if presented else []), "ChangeCipherSpec", "Finished"],
         [*(["NewSessionTicket"] if ticket else []), "ChangeCipherSpec", "Finished"]),
    ]


def _requests_certificates(context: object) -> bool:
    try:
        openssl_context = context.credentials.openssl_context  # type: ignore[attr-defined]
        return bool(openssl_context.get_verify_mode() & SSL.VERIFY_PEER)
    except Exception:  # not our context, or no credentials: say no
        return False


def _name_flights(
    result: dict[str, Any], hello: ClientHello | None, requested: bool
) -> None:
    """Put message names on ``result["flights"]`` and decide ``hello_retry_request``."""
    flights = result["flights"]
    protocol = result.get("protocol")
    retry = False
    if protocol == "TLSv1.3":
        chosen = group_code(result["group"]) if result.get("group") else None
        if hello is not None and hello.key_shares and chosen is not None:
            retry = chosen not in {share.group for share in hello.key_shares}
        else:
            retry = len(flights) == 3
    result["hello_retry_request"] = retry
    server_side = all(call.startswith("accept") for f in flights for call in f["calls"])
    names = None
    if protocol in ("TLSv1.3", "TLSv1.2") and server_side:
        names = _messages(
            protocol,
            reused=bool(result.get("session_reused")),
            retry=retry,
            compatible=hello is not None and bool(hello.session_id),
            requested=requested,
            presented=result.get("client_certificate") is not None,
            ticket=hello is not None and hello.session_ticket is not None,
        )
    for number, flight in enumerate(flights):
        if names is not None and len(names) == len(flights):
            client, answer = names[number]
        else:
            client, answer = [f"flight {number + 1}"], ["reply"]
        flight["client"] = client
        flight["server"] = answer if flight["bytes_out"] else []


# -- describe ----------------------------------------------------------------------


def describe(transport: object) -> dict[str, Any]:
    """What *transport*'s security context negotiated, as JSON-ready data.

    *transport* is the transport an application protocol was given: a
    ``SchannelProtocol`` (or anything that passes attribute lookups on to
    one), or a plain transport, which is reported as ``"tls": false``.
    ``client_hello`` is :func:`describe_client_hello` of the context's kept
    ClientHello, or None when the listener does not keep them.
    Never raises for a transport without TLS or a failed handshake.
    """
    getPeer = getattr(transport, "getPeer", None)
    peer = address_text(getPeer()) if callable(getPeer) else None
    context = getattr(transport, "securityContext", None)
    result: dict[str, Any] = {"peer": peer, "tls": context is not None}
    if context is None:
        return result
    ladder = getattr(transport, "handshakeLadder", None) or []
    result["handshake"] = [
        {"call": f"{call} #{number}", "status": str(status), "code": _status_code(str(status)),
         "bytes_in": int(bytes_in), "bytes_out": int(bytes_out)}
        for number, (call, status, bytes_in, bytes_out) in enumerate(ladder, 1)
    ]
    result["flights"] = _flights(result["handshake"])
    message = getattr(context, "client_hello", None)
    hello = parse_client_hello(message) if isinstance(message, bytes) else None
    result["client_hello"] = _hello_facts(hello) if hello is not None else None
    established = bool(getattr(context, "established", False))
    attributes = None
    if established:
        try:
            attributes = context.attributes
        except Exception:  # a context deleted under us: report what we have
            attributes = None
    if attributes is None:
        result["established"] = False
        _name_flights(result, hello, False)
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
    _name_flights(result, hello, _requests_certificates(context))
    return result


def _status_code(name: str) -> str | None:
    try:
        return f"0x{Status[name].code:08X}"
    except KeyError:
        return None


# -- text ---------------------------------------------------------------------------


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


def _calls(flight: Mapping[str, Any]) -> str:
    calls = list(flight["calls"])
    if len(calls) == 1:
        return str(calls[0])
    return f"{calls[0]} to {calls[-1].rpartition(' ')[2]}"


def _flight_lines(description: Mapping[str, Any]) -> list[str]:
    lines = []
    for flight in description.get("flights", []):
        lines.append(f"  client --> {', '.join(flight['client'])} ({flight['bytes_in']} bytes)")
        lines.append(f"      server: {_calls(flight)} returned {flight['status']}")
        if flight["bytes_out"]:
            answer = ", ".join(flight["server"])
            lines.append(f"  client <-- {answer} ({flight['bytes_out']} bytes)")
    return lines


def _listing(items: Sequence[Mapping[str, Any]], extra: Callable[[Mapping[str, Any]], str]
             | None = None) -> list[str]:
    return [
        f"    {item['code']}  {item['name']}{extra(item) if extra else ''}" for item in items
    ]


def _hello_lines(hello: Mapping[str, Any]) -> list[str]:
    def names(items: Sequence[Mapping[str, Any]]) -> str:
        return ", ".join(item["name"] for item in items) or "(none)"

    versions = hello["supported_versions"]
    lines = [
        f"client hello ({hello['size']} bytes, as the server received it):",
        f"  {'version field:':<24}{hello['version']['name'] if hello['version'] else '?'}",
        f"  {'supported versions:':<24}"
        + (names(versions) if versions is not None else "(extension not sent)"),
        f"  {'server name (SNI):':<24}{printable(hello['server_name'] or '(none sent)')}",
        f"  {'ALPN offered:':<24}"
        + (", ".join(printable(p) for p in hello["alpn"]) or "(none)"),
        f"  {'resumption offered:':<24}{hello['resumption'] or 'no'}",
        f"  {'session id:':<24}{hello['session_id_size']} bytes",
        f"  {'PSK modes:':<24}{names(hello['psk_key_exchange_modes'])}",
        f"  {'compression:':<24}{names(hello['compression_methods'])}",
        f"  cipher suites ({len(hello['cipher_suites'])}):",
        *_listing(hello["cipher_suites"]),
        f"  supported groups ({len(hello['groups'])}):",
        *_listing(hello["groups"]),
        f"  key shares ({len(hello['key_shares'])}):",
        *_listing(hello["key_shares"], lambda item: f" ({item['size']} bytes)"),
        f"  signature algorithms ({len(hello['signature_algorithms'])}):",
        *_listing(hello["signature_algorithms"]),
        f"  extensions, in order ({len(hello['extensions'])}):",
        *_listing(hello["extensions"], lambda item: f" ({item['size']} bytes)"),
        "",
        f"  {'JA4:':<8}{hello['ja4']}",
        f"  {'JA4_r:':<8}{hello['ja4_r']}",
        f"  {'JA4_o:':<8}{hello['ja4_o']}",
        f"  {'JA4_ro:':<8}{hello['ja4_ro']}",
    ]
    if hello["errors"]:
        lines += ["", "  could not be read whole:"]
        lines += [f"    {printable(error)}" for error in hello["errors"]]
    return lines


def render_text(description: Mapping[str, Any]) -> str:
    """The plain-text page for a :func:`describe` result."""
    lines = ["txschannel inspector: this connection", ""]
    lines += [f"{name + ':':<20}{printable(str(value))}" for name, value in _rows(description)]
    ladder = _ladder_lines(description)
    if ladder:
        lines += ["", "handshake (AcceptSecurityContext calls):", *ladder]
    flights = _flight_lines(description)
    if flights:
        lines += ["", "handshake flights (message names follow from what was negotiated):"]
        if description.get("hello_retry_request"):
            lines.append("  (the server asked for another key share: HelloRetryRequest)")
        lines += flights
    if description.get("tls"):
        hello = description.get("client_hello")
        lines.append("")
        if hello is None:
            lines.append("client hello: not kept by this listener")
        else:
            lines += _hello_lines(hello)
    return "\n".join(lines) + "\n"


# -- HTML ---------------------------------------------------------------------------

_STYLE = """
:root{color-scheme:light dark;--bg:#f5f6f8;--card:#fff;--fg:#18202b;--muted:#5d6877;
--line:#dfe3ea;--accent:#1f5fd6;--accent-soft:#e7effd;--ok:#17803d;--ok-soft:#e3f4e8;
--wait:#9a5b00;--wait-soft:#fdf1dc;--bad:#b42318;--grease:#6d4fc2;--grease-soft:#efeafb;
--code:#eef1f5;--mono:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace}
@media (prefers-color-scheme:dark){:root{--bg:#0e1217;--card:#161c24;--fg:#e4e8ee;
--muted:#97a3b4;--line:#2a3340;--accent:#7aa7ff;--accent-soft:#1c2a44;--ok:#5fd08a;
--ok-soft:#163424;--wait:#f2b552;--wait-soft:#3a2b12;--bad:#ff8a80;--grease:#b9a2ff;
--grease-soft:#2a2143;--code:#1e252f}}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{background:var(--card);border-bottom:1px solid var(--line)}
.bar{max-width:980px;margin:0 auto;padding:14px 18px;display:flex;align-items:center;
gap:12px;flex-wrap:wrap}
.logo{width:30px;height:30px;border-radius:8px;background:var(--accent);color:#fff;
display:grid;place-items:center;font-weight:700;font-size:15px;flex:none}
.product{font-size:19px;font-weight:650;letter-spacing:-.01em;margin:0}
.tagline{color:var(--muted);font-size:13px;margin:0}
.formats{margin-left:auto;font-size:13px}
.formats a{color:var(--accent);text-decoration:none;margin-left:10px}
main{max-width:980px;margin:0 auto;padding:18px}
section{background:var(--card);border:1px solid var(--line);border-radius:12px;
padding:16px 18px;margin:0 0 16px}
h2{font-size:16px;margin:0 0 12px;font-weight:650}
h3{font-size:13px;margin:16px 0 6px;color:var(--muted);text-transform:uppercase;
letter-spacing:.05em;font-weight:600}
.summary{display:grid;gap:10px;grid-auto-flow:dense;
grid-template-columns:repeat(auto-fill,minmax(max(150px,calc((100% - 30px)/4)),1fr))}
.fact{border:1px solid var(--line);border-radius:10px;padding:8px 12px;min-width:0}
.fact .k{color:var(--muted);font-size:12px}
.fact .v{font-weight:600;overflow-wrap:anywhere}
.status{display:inline-block;border-radius:999px;padding:1px 9px;font-size:12px;
font-weight:600;font-family:var(--mono)}
.OK{background:var(--ok-soft);color:var(--ok)}
.CONTINUE_NEEDED,.INCOMPLETE_MESSAGE{background:var(--wait-soft);color:var(--wait)}
.note{color:var(--muted);font-size:13px;margin:8px 0 0}
.ladder{width:100%;max-width:560px;height:auto;display:block;margin:4px auto 0}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--muted);font-weight:600;font-size:12px}
td.code,code,.mono{font-family:var(--mono);font-size:13px;white-space:nowrap}
td.code{width:5.5em}
td.name{overflow-wrap:anywhere}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto}
.chips{display:flex;flex-wrap:wrap;gap:6px}
.chip{border:1px solid var(--line);border-radius:999px;padding:1px 10px;font-size:13px;
background:var(--code);overflow-wrap:anywhere}
.grease{background:var(--grease-soft);color:var(--grease);border-radius:4px;padding:0 5px;
font-size:11px;font-weight:700;letter-spacing:.04em;white-space:nowrap}
tr.is-grease td{color:var(--muted)}
.chosen{background:var(--accent-soft);color:var(--accent);border-radius:4px;padding:0 5px;
font-size:11px;font-weight:700;margin-left:6px;white-space:nowrap}
.ja4{font-family:var(--mono);font-size:17px;font-weight:600;background:var(--code);
border-radius:8px;padding:8px 12px;overflow-wrap:anywhere}
dl.pairs{display:grid;grid-template-columns:minmax(120px,max-content) 1fr;gap:4px 14px;margin:0}
dl.pairs dt{color:var(--muted)}
dl.pairs dd{margin:0;overflow-wrap:anywhere}
details{margin-top:10px}
summary{cursor:pointer;color:var(--accent);font-size:14px}
.raw{font-family:var(--mono);font-size:12px;overflow-wrap:anywhere;margin:6px 0 0}
.errors{color:var(--bad)}
.two{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:0 22px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:4px 18px 24px}
@media (min-width:360px){.fact.wide{grid-column:span 2}}
@media (max-width:520px){main{padding:10px}section{padding:12px;border-radius:10px}
.product{font-size:17px}.formats{margin-left:0;width:100%}.formats a{margin:0 12px 0 0}
.wide-only{display:none}th,td{padding:5px 6px}body{font-size:14px}}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
svg .lane{stroke:var(--line);stroke-width:2}
svg .who{fill:var(--fg);font-weight:650;font-size:14px}
svg .box{fill:var(--code);stroke:var(--line)}
svg .msg{fill:var(--fg);font-size:14px}
svg .size{fill:var(--muted);font-size:13px}
svg .arrow{stroke:var(--accent);stroke-width:2;fill:none}
svg .head{fill:var(--accent)}
svg .pill-OK{fill:var(--ok-soft);stroke:var(--ok)}
svg .pill-wait{fill:var(--wait-soft);stroke:var(--wait)}
svg .pill-bad{fill:var(--card);stroke:var(--bad)}
svg .pilltext{font-family:var(--mono);font-size:12px;font-weight:600;fill:var(--fg)}
svg .retry{fill:var(--wait);font-weight:650}
svg .resumed{fill:var(--ok);font-size:13px;font-weight:650}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _ladder_svg(description: Mapping[str, Any]) -> str:
    """The handshake as an inline SVG sequence diagram: client and server lanes,
    an arrow per flight with its messages and size, and each call's status."""
    flights = description.get("flights") or []
    if not flights:
        return ""
    left, right, width = 46, 374, 420
    line = 17
    parts: list[str] = []
    y = 58
    if description.get("session_reused"):
        offered = (description.get("client_hello") or {}).get("resumption")
        label = f"resumed session ({offered})" if offered else "resumed session"
        parts.append(
            f'<text class="resumed" x="{(left + right) // 2}" y="{y}" '
            f'text-anchor="middle">{_e(label)}</text>'
        )
        y += 26
    for flight in flights:
        for message in flight["client"]:
            css = "msg retry" if message == "HelloRetryRequest" else "msg"
            parts.append(f'<text class="{css}" x="{left + 10}" y="{y}">{_e(message)}</text>')
            y += line
        parts.append(
            f'<path class="arrow" d="M{left} {y - 6} L{right - 8} {y + 8}"/>'
            f'<path class="head" d="M{right} {y + 10} l-11 -8 l2 10 z"/>'
        )
        parts.append(
            f'<text class="size" x="{right - 12}" y="{y - 9}" text-anchor="end">'
            f'{flight["bytes_in"]} bytes</text>'
        )
        y += 34
        status = str(flight["status"])
        label = f"{_calls(flight)} \u2192 {status}"
        pill_width = 16 + round(7.3 * len(label))
        kind = "OK" if status == "OK" else (
            "wait" if status in ("CONTINUE_NEEDED", "INCOMPLETE_MESSAGE") else "bad")
        x = min(right - pill_width / 2, width - 4 - pill_width)
        parts.append(
            f'<g><title>{_e(_status_code(status) or status)}</title>'
            f'<rect class="pill-{kind}" x="{x:.0f}" y="{y - 15}" rx="11" width="{pill_width}" '
            f'height="22"/><text class="pilltext" x="{x + pill_width / 2:.0f}" y="{y}" '
            f'text-anchor="middle">{_e(label)}</text></g>'
        )
        y += 28
        if flight["bytes_out"]:
            for message in flight["server"]:
                css = "msg retry" if message == "HelloRetryRequest" else "msg"
                parts.append(
                    f'<text class="{css}" x="{right - 10}" y="{y}" text-anchor="end">'
                    f'{_e(message)}</text>'
                )
                y += line
            parts.append(
                f'<path class="arrow" d="M{right} {y - 6} L{left + 8} {y + 8}"/>'
                f'<path class="head" d="M{left} {y + 10} l11 -8 l-2 10 z"/>'
            )
            parts.append(
                f'<text class="size" x="{left + 12}" y="{y - 9}">'
                f'{flight["bytes_out"]} bytes</text>'
            )
            y += 40
        else:
            y += 10
    height = y + 4
    title = "TLS handshake: client and server flights with the status of each call"
    head = (
        f'<svg class="ladder" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>'
        f'<line class="lane" x1="{left}" y1="34" x2="{left}" y2="{height}"/>'
        f'<line class="lane" x1="{right}" y1="34" x2="{right}" y2="{height}"/>'
        f'<rect class="box" x="{left - 40}" y="4" width="80" height="28" rx="7"/>'
        f'<text class="who" x="{left}" y="23" text-anchor="middle">client</text>'
        f'<rect class="box" x="{right - 42}" y="4" width="84" height="28" rx="7"/>'
        f'<text class="who" x="{right}" y="23" text-anchor="middle">server</text>'
    )
    return head + "".join(parts) + "</svg>"


def _fact(key: str, value: object, wide: bool = False) -> str:
    css = "fact wide" if wide else "fact"
    return (
        f'<div class="{css}"><div class="k">{_e(key)}</div>'
        f'<div class="v">{_e(value)}</div></div>'
    )


def _summary(description: Mapping[str, Any]) -> str:
    if not description.get("tls"):
        facts = [_fact("peer", description.get("peer")), _fact("TLS", "no (plain connection)")]
    elif not description.get("established"):
        facts = [_fact("peer", description.get("peer")), _fact("TLS", "handshake not finished")]
    else:
        client = description.get("client_certificate")
        facts = [
            _fact("protocol", description["protocol"]),
            _fact("cipher", description["cipher"], wide=True),
            _fact("strength", f"{description['cipher_bits']} bits"),
            _fact("key exchange group", description["group"] or "(not reported)", wide=True),
            _fact("ALPN", printable(description["alpn"] or "(none)")),
            _fact("server name (SNI)", printable(description["server_name"] or "(none sent)")),
            _fact("session reused", "yes" if description["session_reused"] else "no"),
            _fact("client certificate", client["subject"] if client else "(none)"),
            # Wide: an IPv6 address and port is long, and with it the twelve
            # cells fill every row of the (at most four) columns.
            _fact("peer", description.get("peer"), wide=True),
        ]
    return '<section><h2>This connection</h2><div class="summary">' + "".join(facts) + (
        "</div></section>"
    )


def _handshake_section(description: Mapping[str, Any]) -> str:
    steps = description.get("handshake") or []
    if not steps:
        return ""
    rows = "".join(
        f'<tr><td class="mono">{_e(step["call"])}</td>'
        f'<td><span class="status {_e(step["status"])}">{_e(step["status"])}</span></td>'
        f'<td class="code wide-only">{_e(step.get("code") or "")}</td>'
        f'<td class="num">{_e(step["bytes_in"])}</td><td class="num">{_e(step["bytes_out"])}</td>'
        "</tr>"
        for step in steps
    )
    notes = []
    if description.get("session_reused"):
        notes.append("The session was resumed: no certificate was sent.")
    if description.get("hello_retry_request"):
        notes.append(
            "The client sent no key share for a group the server accepts, so the server "
            "answered with a HelloRetryRequest and the client sent a second ClientHello."
        )
    notes.append(
        "Sizes and statuses are measured; message names follow from what was "
        "negotiated (each flight reaches OpenSSL whole)."
    )
    return (
        "<section><h2>Handshake</h2>"
        + _ladder_svg(description)
        + "".join(f'<p class="note">{_e(note)}</p>' for note in notes)
        + "<h3>AcceptSecurityContext calls</h3>"
        '<div class="scroll"><table><tr><th>call</th><th>status</th><th class="wide-only">code</th>'
        f'<th class="num">bytes in</th><th class="num">bytes out</th></tr>{rows}'
        "</table></div></section>"
    )


def _breakable(name: str) -> str:
    """*name* escaped, with line-break opportunities after its underscores."""
    return _e(name).replace("_", "_<wbr>")


def _badges(item: Mapping[str, Any], chosen: str | None = None) -> str:
    badges = ""
    if item.get("grease"):
        badges += '<span class="grease">GREASE</span>'
    if chosen is not None and item["code"] == chosen:
        badges += '<span class="chosen">chosen</span>'
    return badges


def _code_table(
    items: Sequence[Mapping[str, Any]], chosen: str | None = None, size: bool = False
) -> str:
    if not items:
        return '<p class="note">(none)</p>'
    rows = "".join(
        f'<tr class="{"is-grease" if item.get("grease") else ""}">'
        f'<td class="code">{_e(item["code"])}</td>'
        f'<td class="name">{_breakable(item["name"]) if not item.get("grease") else ""}'
        f"{_badges(item, chosen)}</td>"
        + (f'<td class="num">{_e(item["size"])}&nbsp;B</td>' if size else "")
        + "</tr>"
        for item in items
    )
    return f'<div class="scroll"><table>{rows}</table></div>'


def _chips(values: Sequence[str]) -> str:
    if not values:
        return '<span class="note">(none)</span>'
    return '<div class="chips">' + "".join(
        f'<span class="chip">{_e(value)}</span>' for value in values
    ) + "</div>"


def _chosen_codes(description: Mapping[str, Any]) -> tuple[str | None, str | None]:
    suite = cipher_suite_code(description.get("cipher") or "")
    group = group_code(description.get("group") or "")
    return (
        f"0x{suite:04x}" if suite is not None else None,
        f"0x{group:04x}" if group is not None else None,
    )


def _hello_section(description: Mapping[str, Any]) -> str:
    if not description.get("tls"):
        return ""
    hello = description.get("client_hello")
    if hello is None:
        return (
            "<section><h2>What the client offered</h2><p class=\"note\">This listener does "
            "not keep ClientHellos (keep_client_hello).</p></section>"
        )
    suite, group = _chosen_codes(description)
    versions = hello["supported_versions"]
    version_text = (
        ", ".join(v["name"] for v in versions if not v["grease"])
        if versions is not None
        else f"{hello['version']['name'] if hello['version'] else '?'} (no supported_versions)"
    )
    grease = sum(
        1
        for key in ("cipher_suites", "groups", "signature_algorithms", "extensions",
                    "key_shares", "supported_versions")
        for item in hello.get(key) or []
        if item["grease"]
    )
    pairs = [
        ("versions", version_text),
        ("server name (SNI)", printable(hello["server_name"] or "(none sent)")),
        ("resumption offered", hello["resumption"] or "no"),
        ("session id", f"{hello['session_id_size']} bytes"),
        ("PSK modes", ", ".join(m["name"] for m in hello["psk_key_exchange_modes"]) or "(none)"),
        ("compression", ", ".join(m["name"] for m in hello["compression_methods"]) or "(none)"),
        ("GREASE values", str(grease) if grease else "none"),
        ("size", f"{hello['size']} bytes"),
    ]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in pairs)
    errors = ""
    if hello["errors"]:
        errors = (
            '<h3>Could not be read whole</h3><ul class="errors">'
            + "".join(f"<li>{_e(error)}</li>" for error in hello["errors"])
            + "</ul>"
        )
    shares = [
        f"{s['name']} ({s['size']} B)" if not s["grease"] else f"GREASE ({s['size']} B)"
        for s in hello["key_shares"]
    ]
    return (
        "<section><h2>What the client offered</h2>"
        f'<dl class="pairs">{dl}</dl>'
        "<h3>ALPN, in order</h3>" + _chips([printable(p) for p in hello["alpn"]])
        + "<h3>Key shares</h3>" + _chips(shares)
        + errors
        + f"<h3>Cipher suites ({len(hello['cipher_suites'])})</h3>"
        + _code_table(hello["cipher_suites"], suite)
        + '<div class="two"><div>'
        f"<h3>Supported groups ({len(hello['groups'])})</h3>"
        + _code_table(hello["groups"], group)
        + "</div><div>"
        + f"<h3>Signature algorithms ({len(hello['signature_algorithms'])})</h3>"
        + _code_table(hello["signature_algorithms"])
        + "</div></div>"
        f"<h3>Extensions, in order ({len(hello['extensions'])})</h3>"
        + _code_table(hello["extensions"], size=True)
        + "</section>"
        "<section><h2>JA4 fingerprint</h2>"
        f'<div class="ja4">{_e(hello["ja4"])}</div>'
        '<p class="note">FoxIO\'s JA4 of this ClientHello: protocol, version, SNI, '
        "counts and ALPN, then hashes of the cipher suites and of the extensions "
        "with the signature algorithms.</p>"
        "<details><summary>raw and original-order forms</summary>"
        + "".join(
            f'<p class="raw"><b>{_e(name)}</b> {_e(hello[key])}</p>'
            for name, key in (("JA4_r", "ja4_r"), ("JA4_o", "ja4_o"), ("JA4_ro", "ja4_ro"))
        )
        + "</details></section>"
    )


def _certificate_section(description: Mapping[str, Any]) -> str:
    client = description.get("client_certificate")
    if not client:
        return ""
    pairs = [
        ("subject", client["subject"]),
        ("issuer", client["issuer"]),
        ("names", ", ".join(client["subject_alt_names"]) or "(none)"),
        ("valid until", client["not_after"]),
        ("SHA-256", client["sha256"]),
    ]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in pairs)
    return f'<section><h2>Client certificate</h2><dl class="pairs">{dl}</dl></section>'


def _request_section(description: Mapping[str, Any]) -> str:
    request = description.get("http")
    if not request:
        return ""
    pairs = [("method", request["method"]), ("path", request["path"]),
             ("version", request["version"])]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in pairs)
    return f'<section><h2>Your request</h2><dl class="pairs">{dl}</dl></section>'


def render_html(description: Mapping[str, Any]) -> str:
    """The HTML page for a :func:`describe` result: one self-contained document
    (inline style and SVG, no scripts, nothing fetched), light or dark as the
    reader's system prefers."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="color-scheme" content="light dark">'
        f"<title>{_e(PRODUCT)}</title><style>{_STYLE}</style></head>\n<body>"
        '<header><div class="bar"><div class="logo" aria-hidden="true">tx</div><div>'
        f'<p class="product">{_e(PRODUCT)}</p>'
        '<p class="tagline">What this TLS connection negotiated, and what your client '
        "offered</p></div>"
        '<nav class="formats"><a href="?format=text">text</a>'
        '<a href="?format=json">JSON</a></nav></div></header>\n<main>'
        + _summary(description)
        + _handshake_section(description)
        + _hello_section(description)
        + _certificate_section(description)
        + _request_section(description)
        + "</main><footer>txschannel: the Schannel security-context model for Twisted"
        "</footer></body></html>\n"
    )


# -- HTTP ----------------------------------------------------------------------------


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
