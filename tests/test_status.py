"""Tests for txschannel.status: SecurityError is an OpenSSL.SSL.Error.

Applications written for Twisted's TLS transport recognise a failed
handshake with ``reason.check(SSL.Error)`` (or ``except SSL.Error``); these
tests check that they recognise txschannel's too, on a real handshake
between two real peers, and that being an ``SSL.Error`` changed nothing
else about :class:`~txschannel.SecurityError`.
"""

from __future__ import annotations

import pickle

from OpenSSL import SSL
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txschannel import SecurityError, ServerContext, Status
from txschannel.testing import CertificateAuthority, connected_pair

# A TLS 1.2-framed fatal alert record: level 2 (fatal), description 48 (unknown_ca).
UNKNOWN_CA_ALERT = b"\x15\x03\x03\x00\x02\x02\x30"


class Lost(Protocol):
    """Remembers the reason its connection was lost."""

    def __init__(self) -> None:
        self.lost: Failure | None = None

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # noqa: B008
        self.lost = reason


class SecurityErrorIsAnSSLErrorTests(SynchronousTestCase):
    def test_subclass_of_openssl_error(self) -> None:
        self.assertTrue(issubclass(SecurityError, SSL.Error))
        self.assertTrue(issubclass(SecurityError, Exception))
        # Not one of pyOpenSSL's flow-control errors, which Twisted's code
        # catches first and treats as "try again".
        for flow in (SSL.WantReadError, SSL.WantWriteError, SSL.ZeroReturnError):
            self.assertFalse(issubclass(SecurityError, flow), flow)

    def test_status_reason_token_str_repr_and_args_are_unchanged(self) -> None:
        error = SecurityError(Status.UNTRUSTED_ROOT, "why", b"\x15")
        self.assertIs(error.status, Status.UNTRUSTED_ROOT)
        self.assertEqual(error.reason, "why")
        self.assertEqual(error.token, b"\x15")
        self.assertEqual(error.args, (Status.UNTRUSTED_ROOT, "why", b"\x15"))
        self.assertEqual(str(error), "UNTRUSTED_ROOT: why")
        self.assertEqual(repr(error), "SecurityError(UNTRUSTED_ROOT, 'why', token=1 bytes)")
        self.assertEqual(SecurityError(Status.INVALID_HANDLE, "gone").token, b"")

    def test_pickles(self) -> None:
        error = SecurityError(Status.MESSAGE_ALTERED, "bad record mac", b"\x15\x03\x03")
        copy = pickle.loads(pickle.dumps(error))
        self.assertIs(type(copy), SecurityError)
        self.assertIs(copy.status, Status.MESSAGE_ALTERED)
        self.assertEqual((copy.reason, copy.token), ("bad record mac", b"\x15\x03\x03"))

    def test_except_ssl_error_catches_a_context_error(self) -> None:
        server = ServerContext(CertificateAuthority().server_credentials("localhost"))
        try:
            server.accept(b"GET / HTTP/1.1\r\n\r\n")
        except SSL.Error as e:
            caught: SSL.Error = e
        else:
            self.fail("accept() took HTTP for a ClientHello")
        self.assertIsInstance(caught, SecurityError)
        assert isinstance(caught, SecurityError)
        self.assertIs(caught.status, Status.ILLEGAL_MESSAGE)


class FailedHandshakeTests(SynchronousTestCase):
    """A real handshake, failed for a real reason, as the application sees it."""

    def test_untrusted_server_satisfies_check_ssl_error_on_both_sides(self) -> None:
        client, server, pump = connected_pair(
            Lost, Lost, server_credentials=CertificateAuthority().server_credentials("localhost")
        )
        assert client.lost is not None and server.lost is not None
        for reason in (client.lost, server.lost):
            self.assertIs(reason.check(SSL.Error), SSL.Error)
            self.assertIs(reason.trap(SSL.Error), SSL.Error)
            self.assertIsInstance(reason.value, SecurityError)

        # What the error carries is what it carried before it was an SSL.Error.
        refused = client.lost.value
        assert isinstance(refused, SecurityError)
        self.assertIs(refused.status, Status.UNTRUSTED_ROOT)
        self.assertIn("certificate verify failed", refused.reason)
        self.assertEqual(refused.token, UNKNOWN_CA_ALERT)
        self.assertEqual(refused.args, (refused.status, refused.reason, refused.token))
        told = server.lost.value
        assert isinstance(told, SecurityError)
        self.assertIs(told.status, Status.UNTRUSTED_ROOT)
        self.assertEqual(told.reason, "tlsv1 alert unknown ca")
        self.assertEqual(told.token, b"")

    def test_missing_client_certificate_satisfies_check_ssl_error(self) -> None:
        # The case of Twisted's test_handshakeFailure: the server requires a
        # client certificate and the client has none.
        ca = CertificateAuthority()
        client, server, pump = connected_pair(
            Lost,
            Lost,
            ca=ca,
            server_credentials=ca.server_credentials(
                "localhost", trust_client_certificates=True, require_client_certificate=True
            ),
        )
        assert client.lost is not None and server.lost is not None
        for reason in (client.lost, server.lost):
            self.assertIs(reason.check(SSL.Error), SSL.Error)
            self.assertIsInstance(reason.value, SecurityError)
        refused = server.lost.value
        assert isinstance(refused, SecurityError)
        self.assertIs(refused.status, Status.NO_CREDENTIALS)
        self.assertTrue(refused.token)  # the alert the client was sent
