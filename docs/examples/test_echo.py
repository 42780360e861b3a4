"""A first test: the echo protocol over real TLS, in memory, with trial.

Run it beside ``echo_server.py``: ``python -m twisted.trial test_echo``.
"""

from echo_server import Echo
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase

from txschannel import SecurityError, Status
from txschannel.testing import CertificateAuthority, connected_pair


class Client(Protocol):
    """A client that keeps what it receives and why it was disconnected."""

    received = b""
    lost = None

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = reason


class EchoTests(SynchronousTestCase):
    def test_echo_sends_back_what_it_received(self):
        # A fresh CA, a certificate for localhost, a full handshake: no sockets.
        client, server, pump = connected_pair(Client, Echo)
        client.transport.write(b"hello")
        pump.flush()  # move the bytes both ways until nothing is left to move
        self.assertEqual(client.received, b"hello")
        self.assertEqual(client.transport.securityContext.attributes.protocol, "TLSv1.3")

    def test_a_server_from_an_unknown_ca_is_refused(self):
        stranger = CertificateAuthority().server_credentials("localhost")
        client, server, pump = connected_pair(Client, Echo, server_credentials=stranger)
        self.assertEqual(client.received, b"")
        self.assertIsInstance(client.lost.value, SecurityError)
        self.assertIs(client.lost.value.status, Status.UNTRUSTED_ROOT)
