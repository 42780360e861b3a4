"""The inspector's plain-text page, made from a
:func:`~txschannel.terminator.inspector.describe.describe` result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from txschannel.peertext import printable
from txschannel.terminator.inspector.describe import flight_calls

__all__ = ["render_text"]


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


def _flight_lines(description: Mapping[str, Any]) -> list[str]:
    lines = []
    for flight in description.get("flights", []):
        lines.append(f"  client --> {', '.join(flight['client'])} ({flight['bytes_in']} bytes)")
        lines.append(f"      server: {flight_calls(flight)} returned {flight['status']}")
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
