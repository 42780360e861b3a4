"""``python -m txschannel probe``: one handshake, shown as Schannel's ladder.

A diagnostic in the spirit of ``openssl s_client -brief``, built on the
sans-IO :class:`~txschannel.ClientContext` and a plain blocking socket, so
that what it prints is exactly the loop the reference text describes: each
``initialize`` call, the status it returned and the token sizes in and out,
then what was negotiated and the certificate chain the server sent.

A TLS 1.3 server gives its verdict on the client's certificate only after
the client's last handshake message, so the client's ``initialize`` says OK
before the server has judged it. The probe therefore waits briefly for the
server's first records after the handshake and decrypts them: a session
ticket or data means the server accepted the client, an alert (such as
certificate_required) is a failure with its status.

Exit status: 0 when the handshake returned OK and the server did not refuse
the client after it; 1 when it failed (the status name, e.g.
``WRONG_PRINCIPAL``, is printed); 2 for a bad command line; 3 when the
server could not be reached or went silent.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from txschannel.context import Attributes, ClientContext
from txschannel.credentials import Credentials, read_passphrase
from txschannel.status import SecurityError, Status

__all__ = [
    "EXIT_OK",
    "EXIT_HANDSHAKE_FAILED",
    "EXIT_USAGE",
    "EXIT_UNREACHABLE",
    "ANSWER_WAIT",
    "Rung",
    "Probe",
    "parse_address",
    "add_arguments",
    "run",
]

EXIT_OK = 0
EXIT_HANDSHAKE_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

_RECEIVE_SIZE = 65536
#: Seconds to wait, after a TLS 1.3 handshake, for the server's first
#: records: its verdict on the client (at most --timeout).
ANSWER_WAIT = 1.0


@dataclass(frozen=True)
class Rung:
    """One call of the handshake ladder: ``initialize``, then ``decrypt``.

    :ivar call: 1 for the first call (no input), then 2, 3, ...
    :ivar status: the status name the call returned, or the error's.
    :ivar bytes_in: the size of the input buffer (``extra`` + new bytes).
    :ivar bytes_out: the size of the token it returned.
    :ivar kind: ``"initialize"`` for the handshake, ``"decrypt"`` for the
        server's first records after it.
    """

    call: int
    status: str
    bytes_in: int
    bytes_out: int
    kind: str = "initialize"


@dataclass
class Probe:
    """The outcome of :func:`run_probe`: the ladder, then attributes or an error.

    :ivar answer: what the server sent after a TLS 1.3 handshake (a session
        ticket, data, close_notify, nothing), when it did not refuse.
    :ivar error: why the handshake failed, or why the server refused the
        client after it (then :attr:`attributes` is set too).
    """

    ladder: list[Rung] = field(default_factory=list)
    attributes: Attributes | None = None
    error: SecurityError | None = None
    answer: str | None = None


def parse_address(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6 addresses).

    :raises ValueError: no port, or a port that is not 1-65535.
    """
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"{text!r}: write IPv6 addresses as [ADDRESS]:PORT")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            raise ValueError(f"{text!r}: expected HOST:PORT, e.g. localhost:443")
        if ":" in host:
            raise ValueError(f"{text!r}: write IPv6 addresses as [ADDRESS]:PORT")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def run_probe(
    sock: socket.socket,
    credentials: Credentials,
    server_name: str,
    *,
    alpn: tuple[str, ...] | None = None,
    answer_wait: float = ANSWER_WAIT,
) -> Probe:
    """Drive one client handshake over the connected blocking *sock*.

    After a TLS 1.3 handshake, read what the server sends within
    *answer_wait* seconds, so that a refusal of the client (an alert after
    the client's Finished) is reported as the error it is.

    :returns: the ladder, and the attributes (or the :class:`SecurityError`).
    :raises OSError: the socket failed or timed out.
    :raises EOFError: the server closed before the handshake ended.
    """
    probe = Probe()
    context = ClientContext(credentials, server_name, alpn=alpn)
    buffer = b""
    try:
        while True:
            call = len(probe.ladder) + 1
            try:
                step = context.initialize(buffer)
            except SecurityError as error:
                probe.ladder.append(Rung(call, error.status.name, len(buffer), len(error.token)))
                if error.token:
                    sock.sendall(error.token)
                probe.error = error
                return probe
            probe.ladder.append(Rung(call, step.status.name, len(buffer), len(step.token)))
            if step.token:
                sock.sendall(step.token)
            if step.status is Status.OK:
                probe.attributes = context.attributes
                if probe.attributes.protocol == "TLSv1.3" and answer_wait > 0:
                    _await_answer(sock, context, step.extra, probe, answer_wait)
                if probe.error is None:
                    closing = context.shutdown()
                    if closing:
                        sock.sendall(closing)
                return probe
            received = sock.recv(_RECEIVE_SIZE)
            if not received:
                raise EOFError(
                    f"the server closed the connection after {call} initialize call(s), "
                    "before the handshake ended"
                )
            buffer = step.extra + received
    finally:
        context.delete()


def _await_answer(
    sock: socket.socket, context: ClientContext, buffer: bytes, probe: Probe, wait: float
) -> None:
    """Decrypt the server's first records after the handshake, for *wait* seconds at most.

    Sets ``probe.error`` when the server sent an alert, else ``probe.answer``.
    """
    deadline = time.monotonic() + wait
    previous_timeout = sock.gettimeout()
    call = 0
    try:
        while True:
            if buffer:
                call += 1
                try:
                    result = context.decrypt(buffer)
                except SecurityError as error:
                    probe.ladder.append(
                        Rung(call, error.status.name, len(buffer), len(error.token), "decrypt")
                    )
                    if error.token:
                        sock.sendall(error.token)
                    probe.error = error
                    return
                probe.ladder.append(
                    Rung(call, result.status.name, len(buffer), len(result.token), "decrypt")
                )
                if result.token:
                    sock.sendall(result.token)
                if result.status is Status.CONTEXT_EXPIRED:
                    probe.answer = "close_notify (the server closed the connection at once)"
                    return
                if result.status is Status.OK:
                    # TLS 1.3 tickets come from the client's Finished, so
                    # the server sends them only once it accepted the client.
                    probe.answer = (
                        f"{len(result.data)} bytes of application data" if result.data
                        else "a session ticket (the server accepted the client)"
                    )
                    return
                buffer = result.extra
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                probe.answer = f"nothing within {wait:g} s (no refusal)"
                return
            sock.settimeout(remaining)
            try:
                received = sock.recv(_RECEIVE_SIZE)
            except TimeoutError:
                probe.answer = f"nothing within {wait:g} s (no refusal)"
                return
            if not received:
                probe.answer = "none: the server closed the connection without a word"
                return
            buffer += received
    finally:
        sock.settimeout(previous_timeout)


def _fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def _print_ladder(ladder: Sequence[Rung], out: TextIO) -> None:
    print(f"  {'call':<16}{'status':<32}{'bytes in':>9}{'bytes out':>10}", file=out)
    for rung in ladder:
        label = f"{rung.kind} #{rung.call}"
        status = getattr(Status, rung.status, None)
        shown = str(status) if isinstance(status, Status) else rung.status
        print(f"  {label:<16}{shown:<32}{rung.bytes_in:>9}{rung.bytes_out:>10}", file=out)


def _print_attributes(attributes: Attributes, answer: str | None, out: TextIO) -> None:
    print("negotiated:", file=out)
    rows = [
        ("protocol", attributes.protocol),
        ("cipher", f"{attributes.cipher} ({attributes.cipher_bits} bits)"),
        ("key exchange group", attributes.group or "(none reported)"),
        ("ALPN", attributes.alpn or "(none)"),
        ("server name", attributes.server_name or "(none)"),
        ("session reused", "yes" if attributes.session_reused else "no"),
    ]
    if answer is not None:
        rows.append(("server's answer", answer))
    for name, value in rows:
        print(f"  {name + ':':<20}{value}", file=out)
    chain = attributes.peer_chain or (
        (attributes.peer_certificate,) if attributes.peer_certificate is not None else ()
    )
    print(f"certificate chain ({len(chain)} sent by the server):", file=out)
    for depth, certificate in enumerate(chain):
        print(f"  {depth} subject: {certificate.subject.rfc4514_string()}", file=out)
        print(f"    issuer:  {certificate.issuer.rfc4514_string()}", file=out)
        print(
            f"    valid:   {certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} to "
            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
            file=out,
        )
        print(f"    sha256:  {_fingerprint(certificate)}", file=out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``probe`` arguments to *parser*."""
    parser.add_argument("address", metavar="HOST:PORT", help="where to connect")
    parser.add_argument(
        "--servername",
        metavar="NAME",
        help="the name the certificate must match, also sent as SNI (default: HOST)",
    )
    parser.add_argument(
        "--cacert",
        metavar="FILE",
        default="system",
        help="PEM file or folder of trust roots (default: the system's store)",
    )
    parser.add_argument(
        "--certificate",
        metavar="FILE",
        help="PEM file with a client certificate to present (and its key, unless "
        "--private-key is given)",
    )
    parser.add_argument(
        "--private-key",
        metavar="FILE",
        help="PEM file with the client certificate's private key",
    )
    parser.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help="file holding the passphrase of an encrypted client key",
    )
    parser.add_argument(
        "--alpn",
        metavar="PROTOCOLS",
        action="append",
        default=[],
        help="ALPN protocols to offer, comma separated or repeated (e.g. h2,http/1.1)",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=10.0,
        help="give up when the server is silent this long (default: 10)",
    )


def run(
    arguments: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run the probe that *arguments* describe and return the exit status.

    The ladder and the parameters go to *out* (default: stdout), the one-line
    error, if any, to *err* (default: stderr).
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        host, port = parse_address(arguments.address)
        alpn = tuple(p for item in arguments.alpn for p in item.split(",") if p)
        credentials = _client_credentials(arguments, alpn)
    except ValueError as e:
        print(f"probe: {e}", file=err)
        return EXIT_USAGE
    server_name = arguments.servername or host
    client = ""
    if arguments.certificate is not None:
        client = f", client certificate {arguments.certificate}"
    print(f"probe {host}:{port}, server name {server_name!r}, trust roots {arguments.cacert}"
          f"{client}", file=out)
    result = _reach(host, port, credentials, server_name, alpn, arguments.timeout, err)
    if result is None:
        return EXIT_UNREACHABLE
    return _report(result, out, err)


def _client_credentials(arguments: argparse.Namespace, alpn: tuple[str, ...]) -> Credentials:
    """The client credentials the command line asks for.

    :raises ValueError: a key or passphrase file without ``--certificate``,
        or a file that cannot be used (the message names it).
    """
    for option in ("private_key", "passphrase_file"):
        if getattr(arguments, option) is not None and arguments.certificate is None:
            raise ValueError(f"--{option.replace('_', '-')} needs --certificate FILE")
    try:
        passphrase = (
            None if arguments.passphrase_file is None
            else read_passphrase(arguments.passphrase_file)
        )
        return Credentials.client(
            trust_roots=arguments.cacert,
            alpn=alpn,
            certificate=arguments.certificate,
            private_key=arguments.private_key,
            passphrase=passphrase,
        )
    except TypeError as e:
        # The message names the file (trust roots, certificate, key, passphrase).
        raise ValueError(str(e)) from None


def _reach(
    host: str,
    port: int,
    credentials: Credentials,
    server_name: str,
    alpn: tuple[str, ...],
    timeout: float,
    err: TextIO,
) -> Probe | None:
    """Connect and run the probe; ``None``, with the one-line reason on
    *err*, when the server could not be reached or went silent."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            return run_probe(
                sock, credentials, server_name, alpn=alpn or None,
                answer_wait=min(ANSWER_WAIT, timeout),
            )
    except EOFError as e:
        print(f"error: {host}:{port}: {e}", file=err)
    except TimeoutError:
        print(f"error: {host}:{port}: no answer within {timeout:g} s", file=err)
    except OSError as e:
        print(f"error: cannot reach {host}:{port}: {e.strerror or e}", file=err)
    return None


def _report(result: Probe, out: TextIO, err: TextIO) -> int:
    """Print the ladder, what was negotiated and any error; the exit status."""
    _print_ladder(result.ladder, out)
    if result.attributes is not None:
        _print_attributes(result.attributes, result.answer, out)
    if result.error is not None:
        after = " after the handshake" if result.attributes is not None else ""
        print(f"error: {result.error.status}{after}: {result.error.reason}", file=err)
        return EXIT_HANDSHAKE_FAILED
    return EXIT_OK
