"""The inspector's HTML page: one self-contained document (inline style and SVG
ladder, no scripts, nothing fetched), readable on a phone and in dark mode,
made from a :func:`~txschannel.terminator.inspector.describe.describe` result.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from txschannel.peertext import printable
from txschannel.terminator.clienthello import (
    cipher_suite_code,
    group_code,
)
from txschannel.terminator.inspector.describe import flight_calls, status_code

__all__ = ["PRODUCT", "render_html"]


#: What the page calls itself.
PRODUCT = "txschannel inspector"


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
        label = f"{flight_calls(flight)} \u2192 {status}"
        pill_width = 16 + round(7.3 * len(label))
        kind = "OK" if status == "OK" else (
            "wait" if status in ("CONTINUE_NEEDED", "INCOMPLETE_MESSAGE") else "bad")
        x = min(right - pill_width / 2, width - 4 - pill_width)
        parts.append(
            f'<g><title>{_e(status_code(status) or status)}</title>'
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


def _hello_pairs(hello: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ClientHello's facts that are one value each, for a definition list."""
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
    return [
        ("versions", version_text),
        ("server name (SNI)", printable(hello["server_name"] or "(none sent)")),
        ("resumption offered", hello["resumption"] or "no"),
        ("session id", f"{hello['session_id_size']} bytes"),
        ("PSK modes", ", ".join(m["name"] for m in hello["psk_key_exchange_modes"]) or "(none)"),
        ("compression", ", ".join(m["name"] for m in hello["compression_methods"]) or "(none)"),
        ("GREASE values", str(grease) if grease else "none"),
        ("size", f"{hello['size']} bytes"),
    ]


def _hello_errors(hello: Mapping[str, Any]) -> str:
    """What could not be read of the ClientHello, if anything."""
    if not hello["errors"]:
        return ""
    return (
        '<h3>Could not be read whole</h3><ul class="errors">'
        + "".join(f"<li>{_e(error)}</li>" for error in hello["errors"])
        + "</ul>"
    )


def _ja4_section(hello: Mapping[str, Any]) -> str:
    return (
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
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in _hello_pairs(hello))
    shares = [
        f"{s['name']} ({s['size']} B)" if not s["grease"] else f"GREASE ({s['size']} B)"
        for s in hello["key_shares"]
    ]
    return (
        "<section><h2>What the client offered</h2>"
        f'<dl class="pairs">{dl}</dl>'
        "<h3>ALPN, in order</h3>" + _chips([printable(p) for p in hello["alpn"]])
        + "<h3>Key shares</h3>" + _chips(shares)
        + _hello_errors(hello)
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
        + _ja4_section(hello)
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
