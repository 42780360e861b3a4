"""What the inspector says about a connection, as JSON-ready data.

:func:`describe` reads the security context of a connection: what was
negotiated, the handshake as the ``AcceptSecurityContext`` calls and as
flights of named messages, the client certificate and, when the listener kept
it, the ClientHello (:func:`describe_client_hello`, with its JA4). The text
and HTML pages (:mod:`~txschannel.terminator.inspector.text`,
:mod:`~txschannel.terminator.inspector.html`) and the JSON answer all show
this one description.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL

from txschannel.status import Status
from txschannel.terminator.addresses import address_text
from txschannel.terminator.clienthello import (
    ClientHello,
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

__all__ = ["describe", "describe_client_hello", "flight_calls", "status_code"]


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
        {"call": f"{call} #{number}", "status": str(status), "code": status_code(str(status)),
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


def status_code(name: str) -> str | None:
    """The hex code of SSPI status *name* (``0x00090312``), or None for a name it does not know."""
    try:
        return f"0x{Status[name].code:08X}"
    except KeyError:
        return None


def flight_calls(flight: Mapping[str, Any]) -> str:
    """The calls of one flight, as a ladder shows them: ``accept #1`` or ``accept #1 to #3``."""
    calls = list(flight["calls"])
    if len(calls) == 1:
        return str(calls[0])
    return f"{calls[0]} to {calls[-1].rpartition(' ')[2]}"
