"""SSPI status codes and the one exception type the security context raises.

The names and HRESULT values are Schannel's, so that people who know the
Windows API recognise them, and so that logs from both worlds line up.
"""

from __future__ import annotations

import enum

from OpenSSL import SSL

__all__ = ["SecurityError", "Status"]


class Status(enum.Enum):
    """The outcome of a security-context call, named as SSPI names it.

    Each member's ``.code`` is the SSPI HRESULT (``SEC_I_*`` / ``SEC_E_*``).
    Only :attr:`OK`, :attr:`CONTINUE_NEEDED`, :attr:`INCOMPLETE_MESSAGE` and
    :attr:`CONTEXT_EXPIRED` are ever *returned*; every other member is carried
    by a raised :class:`SecurityError`.
    """

    OK = 0x00000000
    CONTINUE_NEEDED = 0x00090312
    INCOMPLETE_MESSAGE = 0x80090318
    CONTEXT_EXPIRED = 0x00090317
    ILLEGAL_MESSAGE = 0x80090326
    MESSAGE_ALTERED = 0x8009030F
    DECRYPT_FAILURE = 0x80090330
    UNTRUSTED_ROOT = 0x80090325
    WRONG_PRINCIPAL = 0x80090322
    CERT_EXPIRED = 0x80090328
    CERT_UNKNOWN = 0x80090327
    ALGORITHM_MISMATCH = 0x80090331
    APPLICATION_PROTOCOL_MISMATCH = 0x80090367
    NO_CREDENTIALS = 0x8009030E
    INVALID_TOKEN = 0x80090308
    INVALID_HANDLE = 0x80090301
    INTERNAL_ERROR = 0x80090304

    @property
    def code(self) -> int:
        """The SSPI HRESULT of this status, e.g. ``0x00090312``."""
        return self.value

    @property
    def is_error(self) -> bool:
        """True for the statuses that mean the context is dead."""
        return self not in _PROGRESS

    def __str__(self) -> str:
        return f"{self.name} (0x{self.code:08X})"


_PROGRESS = frozenset(
    {Status.OK, Status.CONTINUE_NEEDED, Status.INCOMPLETE_MESSAGE, Status.CONTEXT_EXPIRED}
)


class SecurityError(SSL.Error):
    """A security-context call failed; the context is dead.

    It is an ``OpenSSL.SSL.Error``, so that code written for Twisted's own
    TLS transport, ``reason.check(SSL.Error)`` or ``except SSL.Error``,
    recognises a failed handshake from txschannel as well. Unlike the errors
    pyOpenSSL raises, its ``args`` are ``(status, reason, token)``, not a
    list of OpenSSL error-queue tuples: read the attributes below.

    :ivar status: the most specific :class:`Status` for the failure.
    :ivar reason: a readable explanation, with OpenSSL's reason where it gave one.
    :ivar token: bytes to send to the peer before closing (usually a TLS
        alert); may be empty.
    """

    def __init__(self, status: Status, reason: str, token: bytes = b"") -> None:
        super().__init__(status, reason, token)
        self.status = status
        self.reason = reason
        self.token = token

    def __str__(self) -> str:
        return f"{self.status.name}: {self.reason}"

    def __repr__(self) -> str:
        return f"SecurityError({self.status.name}, {self.reason!r}, token={len(self.token)} bytes)"
