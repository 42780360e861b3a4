"""The security context: Schannel's handshake loop as a sans-IO API.

A context takes bytes the peer sent and returns bytes to send back; it never
touches a socket, a clock or Twisted. The handshake is driven the way SSPI
drives it::

    step = client.initialize()             # token = ClientHello
    while step.status is not Status.OK:
        send(step.token)
        step = client.initialize(step.extra + receive())
    send(step.token)

OpenSSL (through pyOpenSSL memory BIOs) does the cryptography. This module
decides what OpenSSL sees: only complete TLS records, one at a time, so
that the bytes after the last handshake record are returned to the caller
untouched (``extra``), exactly as Schannel's SECBUFFER_EXTRA.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import SSL

from txschannel import _openssl
from txschannel.credentials import (
    GROUPS,
    Credentials,
    NoCommonProtocol,
    Verification,
    group_allowed,
    verify_error_status,
    verify_error_text,
)
from txschannel.records import (
    HEADER_SIZE,
    MAX_CLIENT_HELLO_WIRE,
    MAX_PLAINTEXT,
    MAX_RECORD_PAYLOAD,
    Framing,
    FramingError,
    RecordScanner,
    first_message_missing,
    frame,
    handshake_message,
)
from txschannel.status import SecurityError, Status

__all__ = [
    "Attributes",
    "ClientContext",
    "SecurityContext",
    "ServerContext",
    "Step",
    "StreamSizes",
    "Unwrapped",
]

#: A fatal unexpected_message alert in the clear: what to tell a peer whose
#: bytes are not TLS at all, before any keys exist.
_PLAINTEXT_UNEXPECTED_MESSAGE = b"\x15\x03\x03\x00\x02\x02\x0a"
_RECORD_OVERHEAD = 5 + 8 + 16 + 1 + 64  # header, explicit nonce, tag, type, slack
_RECV_SIZE = MAX_PLAINTEXT + 1024
# The engine's functions (pyOpenSSL's internals or its public API only: see
# txschannel._openssl), bound once: the per-record paths call them directly.
_drain = _openssl.engine.drain
_write_input = _openssl.engine.write_input
_handshake_records = _openssl.engine.handshake_records
_do_handshake = _openssl.engine.handshake
_encrypt = _openssl.engine.encrypt
_read_records = _openssl.engine.read_records
_read_available = _openssl.engine.read_available
_fresh_buffers = _openssl.engine.fresh_buffers


class Step(NamedTuple):
    """The result of one ``initialize`` or ``accept`` call.

    :ivar status: OK, CONTINUE_NEEDED or INCOMPLETE_MESSAGE.
    :ivar token: bytes to send to the peer now (possibly empty), whatever
        the status.
    :ivar extra: the input bytes that were not consumed. Before OK, a partial
        record; after OK, whatever followed the handshake (for ``decrypt``).
        Always put newly received bytes *after* these.
    :ivar missing: bytes the next record still needs (0 when not waiting).
    """

    status: Status
    token: bytes
    extra: bytes
    missing: int


class Unwrapped(NamedTuple):
    """The result of one ``decrypt`` call.

    :ivar status: OK (at least one record was consumed), INCOMPLETE_MESSAGE
        (no complete record yet) or CONTEXT_EXPIRED (the peer sent
        close_notify).
    :ivar data: the plaintext of every complete record.
    :ivar extra: the unconsumed input: a partial record, or after
        CONTEXT_EXPIRED whatever followed the close_notify.
    :ivar missing: bytes the next record still needs (0 when unknown).
    :ivar token: bytes to send to the peer (e.g. a TLS 1.3 KeyUpdate reply).
    """

    status: Status
    data: bytes
    extra: bytes
    missing: int
    token: bytes


class StreamSizes(NamedTuple):
    """SSPI's SecPkgContext_StreamSizes: framing cost of one record."""

    header: int
    trailer: int
    maximum_message: int


@dataclass(frozen=True)
class Attributes:
    """What was negotiated (SSPI's QueryContextAttributes).

    ``peer_certificate`` and ``peer_chain`` are ``cryptography``
    certificates; the chain is as the peer sent it, leaf first.
    """

    protocol: str
    cipher: str
    cipher_bits: int
    alpn: str | None
    server_name: str | None
    peer_certificate: x509.Certificate | None
    peer_chain: tuple[x509.Certificate, ...]
    session_reused: bool
    stream_sizes: StreamSizes
    group: str | None


class _State(enum.Enum):
    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    DEAD = "dead"
    DELETED = "deleted"


# The members read on every handshake step and record, as module globals: on
# Python 3.11 ``Status.OK`` goes through EnumType.__getattr__'s slow path, a
# read about ten times as costly as a global's (some 800 instructions), and a
# server's handshake read them about fourteen times.
_HANDSHAKE = _State.HANDSHAKE
_ESTABLISHED = _State.ESTABLISHED
_DEAD = _State.DEAD
_DELETED = _State.DELETED
_OK = Status.OK
_CONTINUE_NEEDED = Status.CONTINUE_NEEDED
_INCOMPLETE_MESSAGE = Status.INCOMPLETE_MESSAGE
_CONTEXT_EXPIRED = Status.CONTEXT_EXPIRED

# OpenSSL reason strings (lower case, substrings) mapped to the most specific
# status. Checked in order: the first match wins.
_REASONS: tuple[tuple[str, Status], ...] = (
    ("certificate expired", Status.CERT_EXPIRED),
    ("unknown ca", Status.UNTRUSTED_ROOT),
    ("certificate required", Status.NO_CREDENTIALS),
    ("peer did not return a certificate", Status.NO_CREDENTIALS),
    ("no application protocol", Status.APPLICATION_PROTOCOL_MISMATCH),
    ("bad certificate", Status.CERT_UNKNOWN),
    ("unsupported certificate", Status.CERT_UNKNOWN),
    ("certificate revoked", Status.CERT_UNKNOWN),
    ("certificate unknown", Status.CERT_UNKNOWN),
    ("certificate verify failed", Status.CERT_UNKNOWN),
    ("bad record mac", Status.MESSAGE_ALTERED),
    ("decryption failed", Status.MESSAGE_ALTERED),
    ("digest check failed", Status.MESSAGE_ALTERED),
    ("decrypt error", Status.MESSAGE_ALTERED),
    ("protocol version", Status.ALGORITHM_MISMATCH),
    ("unsupported protocol", Status.ALGORITHM_MISMATCH),
    ("no protocols available", Status.ALGORITHM_MISMATCH),
    ("version too low", Status.ALGORITHM_MISMATCH),
    ("wrong ssl version", Status.ALGORITHM_MISMATCH),
    ("no shared cipher", Status.ALGORITHM_MISMATCH),
    ("no cipher", Status.ALGORITHM_MISMATCH),
    ("no shared signature", Status.ALGORITHM_MISMATCH),
    ("no suitable", Status.ALGORITHM_MISMATCH),
    ("insufficient security", Status.ALGORITHM_MISMATCH),
    ("handshake failure", Status.ALGORITHM_MISMATCH),
    ("internal error", Status.INTERNAL_ERROR),
)


def _diagnosis(
    error: SSL.Error, verification: Verification, connection: SSL.Connection
) -> tuple[Status, str]:
    """The status and reason of OpenSSL's *error* on *connection*: what
    our verification found, else the most specific status its reasons map to."""
    reason = _openssl_reason(error)
    failure = verification.failure
    if failure is not None:
        status, detail = failure
        reason = f"{detail} ({reason})"
    else:
        status = _status_for(reason)
        if "certificate verify failed" in reason.lower():
            # Judged by someone else's callback (a Twisted creator's, or
            # OpenSSL's default): OpenSSL still knows why.
            errno = _openssl.verify_result(connection)
            if errno:
                status = verify_error_status(errno)
                reason = f"{verify_error_text(errno)} ({reason})"
    if (
        status is Status.ALGORITHM_MISMATCH
        and verification.certificate_requested
        and "handshake failure" in reason.lower()
        and connection.get_certificate() is None
    ):
        # TLS 1.2 has no certificate_required alert: servers refuse a
        # client without a certificate with handshake_failure.
        status = Status.NO_CREDENTIALS
        reason = (
            "the server asked for a client certificate and these credentials "
            f"have none ({reason})"
        )
    return status, reason


def _alert_for_garbage(
    connection: SSL.Connection, garbage: memoryview, held: int, established: bool
) -> bytes:
    """Let OpenSSL judge bytes that are not TLS, so that its alert (if any,
    and encrypted if keys exist) is what the peer gets.

    Only the bad record on is shown to OpenSSL: the whole records before
    it must not be decrypted here, where their plaintext would be lost.
    *held*: how many of the bad header's first bytes OpenSSL has already
    (:meth:`SecurityContext.feed` gives it every byte as it comes). A header
    shorter than 5 bytes is padded so that OpenSSL judges it now.
    """
    data = bytes(garbage)
    if held + len(data) < HEADER_SIZE:
        data += bytes(HEADER_SIZE - held - len(data))
    try:
        connection.bio_write(data)
        if established:
            connection.recv(_RECV_SIZE)
        else:
            connection.do_handshake()
    except SSL.Error:
        pass
    token = _drain(connection, 4096)
    if not token and not established:
        token = _PLAINTEXT_UNEXPECTED_MESSAGE
    return token


def _openssl_reason(error: SSL.Error) -> str:
    parts = []
    for item in error.args[0] if error.args and isinstance(error.args[0], list) else []:
        if isinstance(item, tuple) and item:
            parts.append(str(item[-1]))
    return "; ".join(parts) or "OpenSSL reported an error without a reason"


def _status_for(reason: str) -> Status:
    lowered = reason.lower()
    for needle, status in _REASONS:
        if needle in lowered:
            return status
    return Status.ILLEGAL_MESSAGE


class SecurityContext:
    """One TLS connection's state; use :class:`ClientContext` or :class:`ServerContext`.

    The context consumes only complete TLS records and never keeps a partial
    one: whatever it did not consume comes back as ``extra``. Any error is
    raised as :class:`SecurityError`, after which the context is dead and
    should be :meth:`delete`\\ d.
    """

    _is_client: bool
    #: A server that has not yet handed a ClientHello to OpenSSL.
    _awaiting_hello = False
    #: A client that asked to resume a session.
    _offered_session = False

    def __init__(
        self,
        credentials: Credentials,
        target_name: str | None = None,
        *,
        alpn: tuple[str | bytes, ...] | None = None,
        app_data: object | None = None,
    ) -> None:
        if credentials.is_client != self._is_client:
            role = "client" if credentials.is_client else "server"
            wanted = "client" if self._is_client else "server"
            raise ValueError(
                f"{type(self).__name__} needs {wanted} credentials, not {role} credentials"
            )
        self._credentials = credentials
        self._target_name = target_name
        self._state = _HANDSHAKE
        self._started = False
        self._closed_by_peer = False
        self._closed_by_us = False
        self._scanner: RecordScanner | None = None
        self._twisted_failure: str | None = None
        self._connection: SSL.Connection | None
        self._verification = Verification(target_name, credentials.manual_validation)
        if alpn is not None:
            self._verification.alpn = tuple(
                p.encode("ascii") if isinstance(p, str) else bytes(p) for p in alpn
            )
        creator = credentials.creator
        if creator is not None:
            # Twisted's creators expect a TLS "protocol" (see
            # txschannel.creators); a name mismatch comes back through
            # _twisted_refused.
            self._connection = creator.connection(self._twisted_refused, app_data)
        else:
            self._connection = SSL.Connection(credentials.openssl_context, None)
            self._connection.set_app_data(self._verification)
        self._configure(self._connection)

    def _configure(self, connection: SSL.Connection) -> None:
        raise NotImplementedError

    # -- state ------------------------------------------------------------

    @property
    def established(self) -> bool:
        """True once the handshake has returned OK (and until delete())."""
        return self._state is _ESTABLISHED

    @property
    def credentials(self) -> Credentials:
        """The credentials this context was made from."""
        return self._credentials

    @property
    def target_name(self) -> str | None:
        """The name the peer's certificate is checked against (client side)."""
        return self._target_name

    @property
    def openssl_connection(self) -> SSL.Connection | None:
        """The ``OpenSSL.SSL.Connection`` under the context, for APIs that
        take one (Twisted's ``ISystemHandle``, ``Certificate.peerFromTransport``);
        ``None`` after :meth:`delete`. Reading it is fine; driving it
        (reads, writes, handshakes) goes behind the context's back."""
        return self._connection

    @property
    def session_reused(self) -> bool:
        """Whether the handshake resumed a session: what
        ``attributes.session_reused`` says, without building the attributes.

        :raises SecurityError: INVALID_HANDLE before the handshake is done,
            after delete() or after an error.
        """
        return self._session_reused(self._established_connection("session_reused"))

    def _alive(self) -> SSL.Connection:
        if self._state is _DELETED:
            raise SecurityError(Status.INVALID_HANDLE, "the security context was deleted")
        if self._state is _DEAD:
            raise SecurityError(
                Status.INVALID_HANDLE, "the security context failed earlier and must be deleted"
            )
        assert self._connection is not None
        return self._connection

    def delete(self) -> None:
        """Free the context (DeleteSecurityContext); later calls raise INVALID_HANDLE."""
        self._keep_session()
        self._state = _DELETED
        self._connection = None

    def _keep_session(self) -> None:
        # OpenSSL marks the session of a connection freed without a
        # close_notify as not resumable (on both sides), so a TLS 1.2
        # context deleted or dropped without shutdown() would spoil
        # resumption for the next context to the same target. An
        # established, unfailed context's session is good: say it closed.
        connection = self._connection
        if connection is not None and self._state is _ESTABLISHED:
            connection.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)

    def __del__(self) -> None:
        try:
            if getattr(self, "_connection", None) is not None:
                self._keep_session()
        except Exception:
            # Never complain from a finalizer (e.g. a test's fake connection).
            pass

    # -- the handshake loop ----------------------------------------------

    def _handshake(self, data: bytes | bytearray | memoryview) -> Step:
        connection = self._alive()
        if self._state is _ESTABLISHED:
            return Step(_OK, b"", bytes(data), 0)
        view = memoryview(data)
        first_call = not self._started and self._is_client
        self._started = True
        framing = self._frame(view)
        consumed = 0
        done = False
        if first_call and not framing.ends:
            done = self._drive(connection)
        if framing.ends and self._awaiting_hello:
            # (Only a server waits for a ClientHello.)
            server: ServerContext = self  # type: ignore[assignment]
            view, framing, missing = server._take_hello(connection, view, framing)
            if missing:
                return Step(_INCOMPLETE_MESSAGE, b"", bytes(view), missing)
        if framing.ends:
            consumed, done = _handshake_records(connection, view, framing.ends, self._drive)
        token = _drain(connection, 4096)
        extra = bytes(view[consumed:])
        if done:
            if self._credentials.observes_handshakes:
                self._check_group(connection)
            self._state = _ESTABLISHED
            self._on_established(connection)
            return Step(_OK, token, extra, 0)
        if extra:
            # A partial record: the caller must come back with more of it.
            return Step(_INCOMPLETE_MESSAGE, token, extra, framing.missing)
        if not framing.ends and not token:
            # Nothing to work on and nothing to say (a server given no
            # bytes, a client called again with none): waiting for a header.
            return Step(_INCOMPLETE_MESSAGE, token, extra, HEADER_SIZE)
        return Step(_CONTINUE_NEEDED, token, extra, 0)

    def _frame(self, view: memoryview) -> Framing:
        try:
            return frame(view)
        except FramingError as e:
            error = self._fail(e.status, e.reason, self._alert_for_garbage(view[e.offset :]))
        # Raised outside the except block, so that the error does not carry
        # the FramingError (and its frames) as __context__: a transport that
        # keeps the error would otherwise keep this context's memory alive.
        raise error

    def _alert_for_garbage(self, garbage: memoryview, held: int = 0) -> bytes:
        """The alert for bytes that are not TLS (see :func:`_alert_for_garbage`)."""
        return _alert_for_garbage(
            self._alive(), garbage, held, self._state is _ESTABLISHED
        )

    def _drive(self, connection: SSL.Connection) -> bool:
        # Errors are raised after the except blocks (see _frame).
        error: SecurityError | None
        try:
            if not _do_handshake(connection):
                return False
        except SSL.WantReadError:
            return False
        except SSL.ZeroReturnError:
            error = self._fail(
                Status.ILLEGAL_MESSAGE,
                "the peer closed the connection (close_notify) during the handshake",
                self._drain(connection),
            )
        except NoCommonProtocol as e:
            error = self._fail(
                Status.APPLICATION_PROTOCOL_MISMATCH, str(e), self._drain(connection)
            )
        except SSL.Error as e:
            error = self._fail_openssl(e)
        else:
            error = None
        if error is not None:
            raise error
        if self._twisted_failure is not None:
            raise self._fail(Status.WRONG_PRINCIPAL, self._twisted_failure, b"")
        return True

    def _on_established(self, connection: SSL.Connection) -> None:
        pass

    def _twisted_refused(self, reason: str) -> None:
        """A Twisted creator's verification refused the peer (see _drive)."""
        self._twisted_failure = reason

    def _check_group(self, connection: SSL.Connection) -> None:
        # The public path cannot give OpenSSL our list of groups (its default
        # list offers more, some weaker): a handshake that settled on one
        # outside GROUPS is refused here, before any data is exchanged.
        group = connection.get_group_name()
        if not group_allowed(group):
            names = ", ".join(g.decode() for g in GROUPS)
            raise self._fail(
                Status.ALGORITHM_MISMATCH,
                f"the key exchange group {group} is not one of {names}",
                b"",
            )

    # -- errors -----------------------------------------------------------

    def _fail_openssl(self, error: SSL.Error) -> SecurityError:
        connection = self._alive()
        if self._twisted_failure is not None:
            status, reason = Status.WRONG_PRINCIPAL, self._twisted_failure
        else:
            status, reason = _diagnosis(error, self._verification, connection)
        return self._fail(status, reason, self._drain(connection))

    def _fail(self, status: Status, reason: str, token: bytes) -> SecurityError:
        self._state = _DEAD
        if self._is_client:
            self._credentials.sessions.forget(self._target_name)
        return SecurityError(status, reason, token)

    @staticmethod
    def _drain(connection: SSL.Connection) -> bytes:
        """Everything OpenSSL has written for the peer, as one bytes object."""
        return _drain(connection, 4096)

    # -- traffic ----------------------------------------------------------

    def _established_connection(self, operation: str) -> SSL.Connection:
        # The common case first, in one test: this runs once per record.
        if self._state is _ESTABLISHED and self._connection is not None:
            return self._connection
        connection = self._alive()
        if self._state is not _ESTABLISHED:
            raise SecurityError(
                Status.INVALID_HANDLE, f"{operation}() before the handshake returned OK"
            )
        return connection

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """Encrypt *data* (any size) into TLS records to send to the peer.

        :raises SecurityError: INVALID_HANDLE before the handshake is done,
            after delete() or after an error; CONTEXT_EXPIRED after shutdown().
        """
        connection = self._established_connection("encrypt")
        if self._closed_by_us:
            raise SecurityError(_CONTEXT_EXPIRED, "encrypt() after shutdown()")
        size = len(data)
        if not size:
            return b""
        # Raised outside the except blocks (see _frame).
        error: SecurityError
        try:
            return _encrypt(
                connection, data, size, size + (size // MAX_PLAINTEXT + 1) * _RECORD_OVERHEAD
            )
        except SSL.Error as e:
            error = self._fail_openssl(e)
        except _openssl.ShortWrite as e:
            error = self._fail(Status.INTERNAL_ERROR, str(e), b"")
        raise error

    def release_buffers(self) -> bool:
        """Give back the memory of OpenSSL's buffers between this context and
        its caller; whether it could.

        OpenSSL keeps the largest piece each of them ever held (a
        handshake's flights, a 64 KiB write or read) for the connection's
        life. Call this when the connection has gone quiet after moving
        large pieces: the next ones grow the buffers again. It does nothing
        (False) before the handshake returned OK, after :meth:`delete`, and
        on the public pyOpenSSL path (``TXSCHANNEL_PUBLIC_API``), which
        cannot replace them. Nothing is ever lost: both are empty between
        calls, and a buffer that is not is kept.
        """
        if self._state is not _ESTABLISHED or self._connection is None:
            return False
        return _fresh_buffers(self._connection)

    def decrypt(self, data: bytes | bytearray | memoryview) -> Unwrapped:
        """Decrypt every complete record in *data*.

        Post-handshake messages (TLS 1.3 session tickets, KeyUpdate) are
        handled here; a reply, if any, is returned as ``token``.

        :raises SecurityError: MESSAGE_ALTERED for a record that fails its
            integrity check, ILLEGAL_MESSAGE for bytes that are not TLS, the
            mapped status of a fatal alert from the peer, INVALID_HANDLE
            before the handshake is done or after delete().
        """
        connection = self._established_connection("decrypt")
        view = memoryview(data)
        if self._closed_by_peer:
            # Nothing after close_notify is TLS we may read, so not judged.
            return Unwrapped(_CONTEXT_EXPIRED, b"", bytes(view), 0, b"")
        bad: FramingError | None = None
        try:
            framing = frame(view)
        except FramingError as e:
            # Decrypt the whole records before the bad header first: if one
            # of them is close_notify, what follows is not ours to judge.
            bad = e.with_traceback(None)
            framing = frame(view[: e.offset])
        complete = framing.complete
        status = _OK if complete else _INCOMPLETE_MESSAGE
        plaintext = b""
        consumed = complete
        if complete:
            plaintext, unread, reads = self._read(
                connection, len(framing.ends), complete, view, framing.ends
            )
            if unread is not None:
                # close_notify: the records after it were not read.
                self._closed_by_peer = True
                status = _CONTEXT_EXPIRED
                consumed = complete - unread
                if reads + 1 < sum(1 for end in framing.ends if end <= consumed):
                    # A ticket came in the same input as the close_notify (a
                    # server that answers and closes at once): keep it too.
                    self._after_handshake_message(connection)
            elif reads < len(framing.ends):
                # A record gave no application data: a post-handshake
                # message (ticket, KeyUpdate) or an empty record.
                _flush_key_update(connection)
                self._after_handshake_message(connection)
            elif bad is None:
                # Application data only: OpenSSL had nothing to answer.
                extra = bytes(view[consumed:]) if consumed < len(view) else b""
                return Unwrapped(status, plaintext, extra, framing.missing, b"")
        if bad is not None and status is not _CONTEXT_EXPIRED:
            raise self._fail(bad.status, bad.reason, self._alert_for_garbage(view[bad.offset :]))
        token = self._drain(connection)
        if status is _CONTEXT_EXPIRED:
            missing = 0
        elif status is _INCOMPLETE_MESSAGE and not framing.missing:
            missing = HEADER_SIZE
        else:
            missing = framing.missing
        return Unwrapped(status, plaintext, bytes(view[consumed:]), missing, token)

    def feed(self, data: bytes) -> tuple[bytes, bytes, bool]:
        """decrypt() for a transport that owns the stream: (plaintext, token, closed).

        Every byte goes to OpenSSL as it arrives, a partial record included,
        instead of coming back as ``extra`` to be joined to the next bytes
        (a copy of all of them, every time); a :class:`RecordScanner` counts
        the records that end in each piece. *closed*: the peer's
        close_notify came (what followed it is dropped). Statuses, alerts
        and post-handshake messages are handled as decrypt() handles them.
        A context fed this way must not be given to decrypt() afterwards:
        OpenSSL holds the partial record that decrypt() expects back.

        :raises SecurityError: as decrypt() raises it.
        """
        connection = self._established_connection("decrypt")
        if self._closed_by_peer:
            return b"", b"", True
        scanner = self._scanner
        if scanner is None:
            scanner = self._scanner = RecordScanner()
        bad: FramingError | None = None
        try:
            count = scanner.feed(data)
        except FramingError as e:
            bad = e.with_traceback(None)
            count = e.whole
        # Up to a bad header only: OpenSSL must not judge it while reading
        # the whole records before it (see _alert_for_garbage).
        size = len(data) if bad is None else max(bad.offset, 0)
        if size:
            try:
                _write_input(connection, data, size)
            except _openssl.ShortWrite as e:
                raise self._fail(Status.INTERNAL_ERROR, str(e), b"") from None
        if not count and bad is None:
            return b"", b"", False
        plaintext = b""
        unread: int | None = None
        reads = count
        if count:
            # The records ending here hold at most these bytes and one record
            # begun earlier; their plaintext is shorter still.
            limit = min(count * MAX_PLAINTEXT, size + HEADER_SIZE + MAX_RECORD_PAYLOAD)
            # (The engine directly, not through _read: one Python call less
            # per piece of the stream.)
            error: SecurityError | None = None
            try:
                plaintext, unread, reads = _read_available(connection, count, limit)
            except SSL.Error as e:
                error = self._fail_openssl(e)
            if error is not None:
                raise error
        if unread is not None:
            self._closed_by_peer = True
            if reads + 1 < count:
                # A ticket came in the same piece as the close_notify (a
                # server that answers and closes at once): keep it too.
                self._after_handshake_message(connection)
            return plaintext, self._drain(connection), True
        if bad is not None:
            garbage = memoryview(data)[max(bad.offset, 0) :]
            alert = self._alert_for_garbage(garbage, held=max(-bad.offset, 0))
            raise self._fail(bad.status, bad.reason, alert)
        if reads < count:
            _flush_key_update(connection)
            self._after_handshake_message(connection)
            return plaintext, self._drain(connection), False
        return plaintext, b"", False

    def _read(
        self,
        connection: SSL.Connection,
        count: int,
        limit: int,
        records: memoryview | None = None,
        ends: list[int] | None = None,
    ) -> tuple[bytes, int | None, int]:
        """Decrypt *count* whole records, given here as the first *limit*
        bytes of *records* (ending at *ends*) or already in OpenSSL's input
        (see _read_records).

        :raises SecurityError: what OpenSSL's error maps to.
        """
        # Raised outside the except block (see _frame).
        error: SecurityError
        try:
            if records is not None and ends is not None:
                return _read_records(connection, records, ends, limit, count)
            return _read_available(connection, count, limit)
        except SSL.Error as e:
            error = self._fail_openssl(e)
        raise error

    def _after_handshake_message(self, connection: SSL.Connection) -> None:
        pass

    def shutdown(self) -> bytes:
        """Return the close_notify token to send (ApplyControlToken + one more call).

        Before the handshake is done there is nothing to close politely and
        the token is empty. Calling it twice returns an empty token. Later
        ``encrypt`` calls raise CONTEXT_EXPIRED; ``decrypt`` still reads
        what the peer sends until its own close_notify.

        :raises SecurityError: INVALID_HANDLE after delete() or an error.
        """
        connection = self._alive()
        if self._closed_by_us or self._state is not _ESTABLISHED:
            self._closed_by_us = True
            return b""
        self._closed_by_us = True
        try:
            connection.shutdown()
        except SSL.Error:
            pass
        return self._drain(connection)

    # -- attributes -------------------------------------------------------

    @property
    def attributes(self) -> Attributes:
        """The negotiated parameters (QueryContextAttributes).

        :raises SecurityError: INVALID_HANDLE before the handshake is done or
            after delete().
        """
        connection = self._established_connection("attributes")
        if self._is_client:
            server_name = self._target_name
        else:
            raw = connection.get_servername()
            server_name = raw.decode("ascii", "replace") if raw else None
        return _attributes(connection, server_name, self._session_reused(connection))

    def channel_binding(self, kind: str) -> bytes:
        """Channel-binding data (RFC 5929, RFC 9266) for *kind*.

        :param kind: ``"tls-exporter"``, ``"tls-server-end-point"`` or
            ``"tls-unique"`` (TLS 1.2 only: RFC 9266 retires it for 1.3).
        :raises ValueError: unknown *kind*, or one the protocol does not allow.
        :raises SecurityError: INVALID_HANDLE before the handshake is done.
        """
        connection = self._established_connection("channel_binding")
        return _channel_binding(
            connection, kind, self._is_client, lambda: self._session_reused(connection)
        )

    def _session_reused(self, connection: SSL.Connection) -> bool:
        """Whether the handshake resumed a session (SSL_session_reused)."""
        reused = _openssl.session_reused(connection)
        if reused is not None:
            return reused
        # The public path: the credentials' info callback saw whether a
        # certificate crossed (a resumed handshake sends none).
        if self._credentials.observes_handshakes:
            return not self._verification.full_handshake
        # A Twisted object's context, whose callbacks are its own: a client
        # that offered a session and verified no chain this time resumed.
        return (
            self._offered_session
            and connection.get_verified_chain() is None
            and connection.get_peer_certificate() is not None
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state.value} target={self._target_name!r}>"


def _attributes(
    connection: SSL.Connection, server_name: str | None, reused: bool
) -> Attributes:
    """:attr:`SecurityContext.attributes` of an established *connection*."""
    protocol = connection.get_protocol_version_name()
    cipher = connection.get_cipher_name() or ""
    alpn = connection.get_alpn_proto_negotiated()
    chain = connection.get_peer_cert_chain(as_cryptography=True) or []
    return Attributes(
        protocol=protocol,
        cipher=cipher,
        cipher_bits=connection.get_cipher_bits() or 0,
        alpn=alpn.decode("ascii", "replace") if alpn else None,
        server_name=server_name,
        peer_certificate=connection.get_peer_certificate(as_cryptography=True),
        peer_chain=tuple(chain),
        session_reused=reused,
        stream_sizes=_stream_sizes(protocol, cipher),
        group=connection.get_group_name(),
    )


def _channel_binding(
    connection: SSL.Connection, kind: str, is_client: bool, reused: Callable[[], bool]
) -> bytes:
    """:meth:`SecurityContext.channel_binding` of an established *connection*.

    :raises ValueError: unknown *kind*, or one the protocol does not allow.
    """
    if kind == "tls-exporter":
        return connection.export_keying_material(b"EXPORTER-Channel-Binding", 32)
    if kind == "tls-server-end-point":
        if is_client:
            certificate = connection.get_peer_certificate(as_cryptography=True)
        else:
            own = connection.get_certificate()
            certificate = own.to_cryptography() if own is not None else None
        if certificate is None:
            raise ValueError("tls-server-end-point: no server certificate")
        return _end_point_hash(certificate)
    if kind == "tls-unique":
        if connection.get_protocol_version_name() == "TLSv1.3":
            raise ValueError("tls-unique is not defined for TLS 1.3 (RFC 9266); "
                             "use tls-exporter")
        # The first Finished message of the handshake: the client's in a
        # full handshake, the server's in a resumed one.
        ours_first = is_client != reused()
        finished = connection.get_finished() if ours_first else connection.get_peer_finished()
        if finished is None:
            raise ValueError("tls-unique: no Finished message yet")
        return finished
    raise ValueError(
        f"unknown channel binding {kind!r}: use tls-exporter, tls-server-end-point "
        "or tls-unique"
    )


def _stream_sizes(protocol: str, cipher: str) -> StreamSizes:
    if protocol == "TLSv1.3":
        return StreamSizes(HEADER_SIZE, 17, MAX_PLAINTEXT)
    if "GCM" in cipher or "CCM" in cipher:
        return StreamSizes(HEADER_SIZE + 8, 16, MAX_PLAINTEXT)
    return StreamSizes(HEADER_SIZE, 16, MAX_PLAINTEXT)


def _end_point_hash(certificate: x509.Certificate) -> bytes:
    algorithm = certificate.signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashlib.new(algorithm.name)
    digest.update(certificate.public_bytes(serialization.Encoding.DER))
    return digest.digest()


class ClientContext(SecurityContext):
    """The connecting side (InitializeSecurityContext).

    :param credentials: from :meth:`Credentials.client`.
    :param target_name: the host name (or IP address) the server's
        certificate must match; it is also sent as SNI (host names only).
        Required unless the credentials use ``manual_validation``.
    :param alpn: protocols to offer on this connection instead of the
        credentials' list.
    :param app_data: for credentials from :meth:`Credentials.from_twisted`:
        the object Twisted's creator sees as the TLS protocol (it reads
        ``.factory.wrappedFactory`` for ALPN); ignored otherwise.
    :raises ValueError: server credentials, or no *target_name* where one is
        needed, or a *target_name* that is not a valid host name.
    """

    _is_client = True

    def __init__(
        self,
        credentials: Credentials,
        target_name: str | None = None,
        *,
        alpn: tuple[str | bytes, ...] | None = None,
        app_data: object | None = None,
    ) -> None:
        if target_name is None:
            target_name = credentials.hostname
        if target_name is None and not credentials.manual_validation:
            raise ValueError(
                "target_name is required to check the server's certificate "
                "(or use Credentials.client(manual_validation=True))"
            )
        super().__init__(credentials, target_name, alpn=alpn, app_data=app_data)

    def _configure(self, connection: SSL.Connection) -> None:
        connection.set_connect_state()
        name = self._target_name
        from_twisted = self._credentials.creator is not None
        if name is not None and not from_twisted:
            if not _is_ip_address(name):
                connection.set_tlsext_host_name(_a_label(name))
            if not self._credentials.manual_validation:
                _check_name_in_openssl(connection, name)
        elif name is not None and name == self._credentials.hostname:
            # A Twisted creator checks the name in its own callback; OpenSSL
            # checking it too only changes the alert to bad_certificate.
            _check_name_in_openssl(connection, name)
        if self._verification.alpn is not None:
            connection.set_alpn_protos(list(self._verification.alpn))
        session = self._credentials.sessions.get(name)
        if session is not None:
            connection.set_session(session)
            self._offered_session = True

    def initialize(self, data: bytes | bytearray | memoryview = b"") -> Step:
        """One InitializeSecurityContext call.

        The first call takes no input and returns the ClientHello as token.
        Later calls take ``step.extra`` followed by the bytes received since.

        :raises SecurityError: the handshake failed; send ``error.token``.
        """
        return self._handshake(data)

    def _on_established(self, connection: SSL.Connection) -> None:
        if connection.get_protocol_version_name() != "TLSv1.3":
            self._credentials.sessions.remember(self._target_name, connection.get_session())

    def _after_handshake_message(self, connection: SSL.Connection) -> None:
        # TLS 1.3 session tickets arrive after the handshake: only now is
        # the session worth keeping for the next context to this target.
        self._credentials.sessions.remember(self._target_name, connection.get_session())


class ServerContext(SecurityContext):
    """The accepting side (AcceptSecurityContext).

    :param credentials: from :meth:`Credentials.server`.
    :param alpn: protocols to accept on this connection instead of the
        credentials' list, in order of preference.
    :param app_data: as for :class:`ClientContext`.
    :param keep_client_hello: keep the client's ClientHello message for
        :attr:`client_hello` (at most 131,400 bytes, until :meth:`delete`).
    :raises ValueError: client credentials.
    """

    _is_client = False
    _awaiting_hello = True
    #: Asked to keep the ClientHello, and the hello once kept.
    _keep_client_hello = False
    _client_hello: bytes | None = None

    def __init__(
        self,
        credentials: Credentials,
        *,
        alpn: tuple[str | bytes, ...] | None = None,
        app_data: object | None = None,
        keep_client_hello: bool = False,
    ) -> None:
        super().__init__(credentials, None, alpn=alpn, app_data=app_data)
        if keep_client_hello:
            self._keep_client_hello = True

    @property
    def client_hello(self) -> bytes | None:
        """The client's first ClientHello as it arrived: the handshake message
        (type, length, body), joined from the records that carried it.

        ``None`` unless the context was made with ``keep_client_hello=True``,
        before the hello is whole, and after :meth:`delete`. After a
        HelloRetryRequest this is still the first hello. Parse it with
        :func:`txschannel.terminator.clienthello.parse_client_hello`.
        """
        return self._client_hello

    def delete(self) -> None:
        """Free the context, and the kept ClientHello (see :meth:`SecurityContext.delete`)."""
        super().delete()
        if self._client_hello is not None:
            self._client_hello = None

    def _configure(self, connection: SSL.Connection) -> None:
        connection.set_accept_state()

    def _take_hello(
        self, connection: SSL.Connection, view: memoryview, framing: Framing
    ) -> tuple[memoryview, Framing, int]:
        """The records of the ClientHello, while the handshake waits for it:
        the bytes and framing left for the handshake loop once the hello is
        whole (0 missing), or *view* unchanged with the bytes still missing.

        OpenSSL allocates the length a ClientHello claims as soon as it
        reads the message header: a peer that sends the start of a large
        hello and stalls would cost that much, not what it sent. So the
        records of the hello are handed back (as extra) until the whole of
        it is here, up to the largest hello OpenSSL takes.
        """
        missing = first_message_missing(view, framing)
        if missing and len(view) <= MAX_CLIENT_HELLO_WIRE:
            return view, framing, missing
        self._awaiting_hello = False
        if self._keep_client_hello:
            self._client_hello = handshake_message(view, framing.ends)
        if len(framing.ends) > 1:
            # A hello in many records goes in one record at a time, so
            # that OpenSSL's input buffer grows to one record, not to
            # the whole hello (a memory BIO keeps its largest size).
            start = 0
            for end in framing.ends[:-1]:
                connection.bio_write(view[start:end])
                self._drive(connection)
                start = end
            framing = Framing([framing.ends[-1] - start], framing.missing)
            view = view[start:]
        return view, framing, 0

    def accept(self, data: bytes | bytearray | memoryview) -> Step:
        """One AcceptSecurityContext call, with ``step.extra`` + new bytes.

        :raises SecurityError: the handshake failed; send ``error.token``.
        """
        return self._handshake(data)


def _flush_key_update(connection: SSL.Connection) -> None:
    """Make OpenSSL write its answer to a KeyUpdate(update_requested) now.

    OpenSSL queues that answer until the application's next write; a peer
    (openssl s_server, for one) may hold its own writes until it sees it,
    and the contract puts any reply in ``Unwrapped.token``.
    """
    _openssl.flush_key_update(connection)


def _a_label(name: str) -> bytes:
    """*name* as the SNI and OpenSSL's name check take it (the rules of
    :func:`txschannel.validation.host_a_label`)."""
    from txschannel.validation import host_a_label

    try:
        return host_a_label(name).encode("ascii")
    except ValueError as e:
        raise ValueError(f"target_name {e}") from None


def _check_name_in_openssl(connection: SSL.Connection, name: str) -> None:
    """Have OpenSSL check the server's name too, so that a mismatch makes it
    send the peer a bad_certificate alert (a refusal decided only in our
    verify callback goes out as internal_error). service_identity still
    judges, with the same rules: no fallback to the subject's CN and no
    partial wildcards. (The public path cannot ask OpenSSL for this: there
    the verify callback alone judges the name, and the alert is OpenSSL's.)"""

    from txschannel.validation import address

    found = address(name)
    if found is None:
        ok = _openssl.expect_host(connection, _a_label(name))
    else:
        ok = _openssl.expect_ip(connection, found.packed)
    if not ok:
        raise ValueError(f"target_name {name!r} cannot be checked by OpenSSL")


def _is_ip_address(name: str) -> bool:
    from txschannel.validation import is_ip

    return is_ip(name)
