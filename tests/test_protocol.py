"""SchannelProtocol and SchannelFactory: how the transport behaves.

Both ends are real security contexts (OpenSSL underneath, nothing faked).
Most tests join them in memory with Twisted's ``iosim`` pump and a
``task.Clock``, so that timeouts, coalescing and close ordering are
deterministic; the flow-control and STARTTLS tests use real loopback TCP.
Other TLS stacks are in ``tests/test_protocol_peers.py``.
"""

from __future__ import annotations

import gc
import hashlib
import os
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import trustme
from OpenSSL import SSL, crypto
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    IOpenSSLContextFactory,
    IProtocolNegotiationFactory,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
    ITLSTransport,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol, ServerFactory
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import (
    FilteringLogObserver,
    LimitedHistoryLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    formatEvent,
    globalLogPublisher,
)
from twisted.protocols._tls_legacy import LegacyContextFactoryWarning
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tests.support import hellos
from tests.support.contexts import bio_addresses
from txschannel import Credentials, SecurityError, Status, _openssl
from txschannel import protocol as protocol_module
from txschannel.protocol import (
    ConnectionTruncated,
    HandshakeBufferExceeded,
    HandshakeMemoryExceeded,
    HandshakeTimeout,
    SchannelFactory,
    SchannelProtocol,
    startSchannel,
)
from txschannel.records import MAX_CLIENT_HELLO, ContentType, frame

CA = trustme.CA()
SERVER = CA.issue_cert("localhost")
CLIENT = CA.issue_cert("client.example")
OTHER_CA = trustme.CA()
SERVER_PEM = SERVER.private_key_and_cert_chain_pem.bytes()
CA_PEM = CA.cert_pem.bytes()


def server_credentials(**extra: Any) -> Credentials:
    return Credentials.server(certificate=SERVER_PEM, **extra)


def client_credentials(**extra: Any) -> Credentials:
    extra.setdefault("trust_roots", CA_PEM)
    return Credentials.client(**extra)


@implementer(IHandshakeListener)
class App(Protocol):
    """Records everything that happens to it; optionally greets on connect."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.received = b""
        self.lost: list[Failure] = []
        self.handshakes = 0
        self.events: list[str] = []

    def connectionMade(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)  # type: ignore[union-attr]

    def handshakeCompleted(self) -> None:
        self.handshakes += 1
        self.events.append("handshake")

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost.append(reason)


@implementer(IHalfCloseableProtocol)
class HalfCloser(App):
    """An App that hears about half-closes."""

    def readConnectionLost(self) -> None:
        self.events.append("readConnectionLost")

    def writeConnectionLost(self) -> None:
        self.events.append("writeConnectionLost")


@implementer(IProtocolNegotiationFactory)
class NegotiatingFactory(Factory):
    """A wrapped factory that names its ALPN protocols, like twisted.web's Site."""

    def __init__(self, protocols: list[bytes], app: Callable[[], Protocol]) -> None:
        self.protocols = protocols
        self.app = app

    def acceptableProtocols(self) -> list[bytes]:
        return self.protocols

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.app()


class Pair:
    """A client and a server SchannelProtocol joined in memory."""

    def __init__(
        self,
        client_app: Protocol | None = None,
        server_app: Protocol | None = None,
        *,
        client: Any = None,
        server: Any = None,
        client_factory: Any = None,
        server_factory: Any = None,
        client_kwargs: dict[str, Any] | None = None,
        server_kwargs: dict[str, Any] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.clock = clock or Clock()
        self.client_app = client_app or App()
        self.server_app = server_app or App()
        client_kwargs = {"target_name": "localhost", **(client_kwargs or {})}
        self.client_factory = SchannelFactory(
            client if client is not None else client_credentials(),
            True,
            client_factory or ClientFactory.forProtocol(lambda: self.client_app),
            self.clock,
            **client_kwargs,
        )
        self.server_factory = SchannelFactory(
            server if server is not None else server_credentials(),
            False,
            server_factory or ServerFactory.forProtocol(lambda: self.server_app),
            self.clock,
            **(server_kwargs or {}),
        )
        client_tls, server_tls, self.pump = connectedServerAndClient(
            lambda: self.server_factory.buildProtocol(None),
            lambda: self.client_factory.buildProtocol(None),
            greet=False,
            clock=self.clock,
        )
        self.client: SchannelProtocol = client_tls
        self.server: SchannelProtocol = server_tls

    def flush(self) -> None:
        self.pump.flush(advanceClock=True)

    def capture_client_writes(self) -> list[bytes]:
        """Record every write the client's TLS layer makes to its transport
        (the bytes still go through)."""
        sent: list[bytes] = []
        transport = self.client.transport
        original = transport.write

        def capture(data: bytes) -> None:
            sent.append(data)
            original(data)

        transport.write = capture
        return sent


def log_events() -> tuple[list[dict[str, Any]], Callable[[], None]]:
    """Collect txschannel.protocol log events; returns (events, stop)."""
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "txschannel.protocol":
            events.append(event)

    globalLogPublisher.addObserver(observer)
    return events, lambda: globalLogPublisher.removeObserver(observer)


def fragmented_client_hello(size: int) -> bytes:
    """Handshake records carrying the start of a (claimed) 120,000-byte
    ClientHello: valid framing that OpenSSL must buffer, never an error."""
    message = b"\x01" + (120000).to_bytes(3, "big") + b"\x03\x03" + b"\x00" * size
    records = []
    for start in range(0, size, 16384):
        chunk = message[start : start + 16384]
        records.append(b"\x16\x03\x01" + len(chunk).to_bytes(2, "big") + chunk)
    return b"".join(records)


class HandshakeTests(SynchronousTestCase):
    """The handshake loop, its record, and what the wrapped protocol sees."""

    def test_ladder_records_every_step_on_both_sides(self) -> None:
        pair = Pair()
        pair.flush()
        client, server = pair.client.handshakeLadder, pair.server.handshakeLadder
        self.assertEqual(client[0][:3], ("initialize", "CONTINUE_NEEDED", 0))
        self.assertGreater(client[0][3], 0)  # the ClientHello
        self.assertEqual(client[-1][:2], ("initialize", "OK"))
        self.assertEqual(server[-1][:2], ("accept", "OK"))
        self.assertTrue(all(step[0] == "accept" for step in server))
        # What one side sent during the handshake, the other consumed.
        self.assertEqual(sum(s[3] for s in client), sum(s[2] for s in server))
        self.assertEqual(pair.client_app.handshakes, 1)  # type: ignore[attr-defined]
        self.assertEqual(pair.server_app.handshakes, 1)  # type: ignore[attr-defined]

    def test_transport_provides_the_twisted_tls_interfaces(self) -> None:
        pair = Pair()
        pair.flush()
        for interface in (ISSLTransport, INegotiated):
            self.assertTrue(interface.providedBy(pair.client), interface)
        self.assertIs(pair.client_app.transport, pair.client)
        self.assertIsInstance(pair.client.getHandle(), SSL.Connection)

    def test_writes_before_the_handshake_arrive_after_it_in_order(self) -> None:
        pair = Pair(App(greeting=b"early "))
        pair.client.write(b"bird")
        pair.flush()
        self.assertEqual(pair.server_app.received, b"early bird")  # type: ignore[attr-defined]
        self.assertEqual(pair.client.bytesSent, 10)
        self.assertEqual(pair.server.bytesReceived, 10)

    def test_one_byte_at_a_time_completes_the_handshake(self) -> None:
        """The receive buffer keeps extra and appends: any split works."""
        pair = Pair()
        transport = pair.client.transport
        original = transport.write

        def drip(data: bytes) -> None:
            for i in range(len(data)):
                original(data[i : i + 1])

        transport.write = drip
        pair.client.write(b"drip")
        pair.flush()
        self.assertEqual(pair.server_app.received, b"drip")  # type: ignore[attr-defined]
        # Waiting for the rest of a record is not a step worth recording.
        self.assertLess(len(pair.server.handshakeLadder), 6)

    def test_peer_certificate_is_a_pyopenssl_x509(self) -> None:
        pair = Pair(
            client=client_credentials(
                certificate=CLIENT.private_key_and_cert_chain_pem.bytes()
            ),
            server=server_credentials(client_ca=CA_PEM, require_client_certificate=True),
        )
        self.assertIsNone(pair.client.getPeerCertificate())  # not yet
        pair.flush()
        server_cert = pair.client.getPeerCertificate()
        client_cert = pair.server.getPeerCertificate()
        self.assertIsInstance(server_cert, crypto.X509)
        self.assertIsInstance(client_cert, crypto.X509)
        assert client_cert is not None
        self.assertEqual(
            client_cert.to_cryptography(),
            pair.server.securityContext.attributes.peer_certificate,
        )

    def test_failed_handshake_reaches_both_sides_as_security_error(self) -> None:
        """The client rejects the server; its alert tells the server why."""
        pair = Pair(client=Credentials.client(trust_roots=OTHER_CA.cert_pem.bytes()))
        pair.flush()
        (client_reason,) = pair.client_app.lost  # type: ignore[attr-defined]
        (server_reason,) = pair.server_app.lost  # type: ignore[attr-defined]
        self.assertEqual(client_reason.value.status, Status.UNTRUSTED_ROOT)
        # The server only knows because the alert was written before closing.
        self.assertIsInstance(server_reason.value, SecurityError)
        self.assertEqual(server_reason.value.status, Status.UNTRUSTED_ROOT)
        self.assertEqual(pair.client.handshakeLadder[-1][1], "UNTRUSTED_ROOT")
        self.assertGreater(pair.client.handshakeLadder[-1][3], 0)  # the alert
        self.assertEqual(pair.client_app.handshakes, 0)  # type: ignore[attr-defined]

    def test_tampered_record_after_the_handshake_is_message_altered(self) -> None:
        """A forged record fails its integrity check: alert sent, SecurityError reported."""
        events, stop = log_events()
        self.addCleanup(stop)
        pair = Pair()
        pair.flush()
        sent: list[bytes] = []
        pair.server.transport.write = sent.append
        forged = b"\x17\x03\x03\x00\x20" + b"\x00" * 32
        pair.server.dataReceived(forged)
        self.assertEqual(pair.server_app.lost, [])  # type: ignore[attr-defined]
        self.assertTrue(pair.server.transport.disconnecting)
        pair.server.connectionLost(Failure(ConnectionDone()))
        (reason,) = pair.server_app.lost  # type: ignore[attr-defined]
        self.assertIsInstance(reason.value, SecurityError)
        self.assertEqual(reason.value.status, Status.MESSAGE_ALTERED)
        self.assertEqual(frame(b"".join(sent)).complete, len(b"".join(sent)))
        self.assertEqual(b"".join(sent)[0], ContentType.APPLICATION_DATA)  # the encrypted alert
        self.assertEqual([e["status"] for e in events if e["log_level"].name == "warn"],
                         ["MESSAGE_ALTERED"])

    def test_when_handshake_done_fires_or_fails(self) -> None:
        pair = Pair()
        done = pair.client.whenHandshakeDone()
        pair.flush()
        self.assertIs(self.successResultOf(done), pair.client)
        self.assertIs(self.successResultOf(pair.server.whenHandshakeDone()), pair.server)
        bad = Pair(client=Credentials.client(trust_roots=OTHER_CA.cert_pem.bytes()))
        failing = bad.client.whenHandshakeDone()
        bad.flush()
        self.assertEqual(self.failureResultOf(failing, SecurityError).value.status,
                         Status.UNTRUSTED_ROOT)

    def test_completion_and_failure_are_logged_with_fields(self) -> None:
        events, stop = log_events()
        self.addCleanup(stop)
        Pair(client=client_credentials(alpn=["h2"]), server=server_credentials(alpn=["h2"])).flush()
        done = [e for e in events if e.get("status") == "OK"]
        self.assertEqual(len(done), 2)
        for event in done:
            self.assertEqual(event["protocol"], "TLSv1.3")
            self.assertEqual(event["alpn"], "h2")
            self.assertEqual(event["server_name"], "localhost")
            self.assertTrue(event["cipher"])
            self.assertIn("peer", event)
            self.assertEqual(event["log_level"].name, "debug")  # the normal case
        del events[:]
        Pair(client=Credentials.client(trust_roots=OTHER_CA.cert_pem.bytes())).flush()
        statuses = sorted(e["status"] for e in events)
        self.assertEqual(statuses, ["UNTRUSTED_ROOT", "UNTRUSTED_ROOT"])
        self.assertEqual({e["log_level"].name for e in events}, {"warn"})


    def test_logged_completion_fields_are_the_attributes(self) -> None:
        # The log event reads its fields from the connection directly; they
        # must say what securityContext.attributes says, resumption included.
        events, stop = log_events()
        self.addCleanup(stop)
        client = client_credentials(alpn=["h2"], maximum_version="TLSv1.2")
        server = server_credentials(alpn=["h2"])
        for resumed in (False, True):
            del events[:]
            pair = Pair(client=client, server=server)
            pair.flush()
            logged = sorted(
                (
                    (e["protocol"], e["cipher"], e["alpn"], e["server_name"], e["resumed"])
                    for e in events
                    if e.get("status") == "OK"
                ),
                key=repr,
            )
            expected = sorted(
                (
                    (a.protocol, a.cipher, a.alpn, a.server_name, a.session_reused)
                    for a in (pair.client.securityContext.attributes,
                              pair.server.securityContext.attributes)
                ),
                key=repr,
            )
            self.assertEqual(logged, expected)
            self.assertEqual({(e[0], e[2], e[4]) for e in logged}, {("TLSv1.2", "h2", resumed)})

    def test_tls_transport_interface_of_the_real_transport_is_not_passed_on(self) -> None:
        # Starting TLS under our TLS would corrupt the stream: a wrapped
        # protocol must not see ITLSTransport, whatever the transport offers.
        @implementer(ITLSTransport, ITCPTransport)
        class TCPLike(StringTransport):
            pass

        factory = SchannelFactory(server_credentials(), False, Factory.forProtocol(App), Clock())
        tls = factory.buildProtocol(None)
        assert tls is not None
        tls.makeConnection(TCPLike())
        self.assertTrue(ITCPTransport.providedBy(tls))
        self.assertFalse(ITLSTransport.providedBy(tls))
        self.assertIs(tls.wrappedProtocol.transport, tls)
        self.assertEqual(factory.protocols, {tls: 1})
        tls.abortConnection()


class DebugEventTests(SynchronousTestCase):
    """The debug event of a completed handshake: the same fields whoever
    observes it, and not built when every observer's filter drops it."""

    def observe_through(self, *observers: Any) -> LogPublisher:
        """Make *observers* (behind a publisher) all that txschannel.protocol logs to."""
        publisher = LogPublisher(*observers)
        self.patch(protocol_module._log, "observer", publisher)
        return publisher

    def test_event_through_a_debug_level_filter_has_every_field(self) -> None:
        events: list[dict[str, Any]] = []
        self.observe_through(
            FilteringLogObserver(events.append, [LogLevelFilterPredicate(LogLevel.debug)])
        )
        pair = Pair(client=client_credentials(alpn=["h2"]), server=server_credentials(alpn=["h2"]))
        pair.flush()
        done = [e for e in events if e.get("status") == "OK"]
        self.assertEqual(len(done), 2)
        for event in done:
            self.assertEqual(event["log_level"], LogLevel.debug)
            self.assertEqual(event["log_namespace"], "txschannel.protocol")
            self.assertEqual(event["protocol"], "TLSv1.3")
            self.assertEqual(event["alpn"], "h2")
            self.assertEqual(event["server_name"], "localhost")
            self.assertIs(event["resumed"], False)
            self.assertEqual(
                formatEvent(event),
                f"TLS handshake with {event['peer']} done: TLSv1.3 {event['cipher']}, "
                "ALPN h2, server name localhost",
            )

    def test_filtered_out_until_a_level_or_an_observer_wants_it(self) -> None:
        kept: list[dict[str, Any]] = []
        predicate = LogLevelFilterPredicate(LogLevel.info)
        publisher = self.observe_through(FilteringLogObserver(kept.append, [predicate]))
        self.assertFalse(protocol_module._debug_observed())
        Pair().flush()
        self.assertEqual(kept, [])
        # A level changed while the process runs counts from the next handshake.
        predicate.setLogLevelForNamespace("txschannel", LogLevel.debug)
        self.assertTrue(protocol_module._debug_observed())
        Pair().flush()
        self.assertEqual(len([e for e in kept if e.get("status") == "OK"]), 2)
        predicate.setLogLevelForNamespace("txschannel", LogLevel.info)
        del kept[:]
        # So does an observer added later, filtering or not.
        later: list[dict[str, Any]] = []
        publisher.addObserver(later.append)
        Pair().flush()
        self.assertEqual(kept, [])
        self.assertEqual(len([e for e in later if e.get("status") == "OK"]), 2)

    def test_observers_not_known_to_drop_debug_count_as_observing(self) -> None:
        observed = protocol_module._debug_observed
        info = LogLevelFilterPredicate(LogLevel.info)
        self.assertFalse(observed(LogPublisher()))
        self.assertFalse(observed(LogPublisher(FilteringLogObserver(print, [info]))))
        self.assertTrue(observed(LogPublisher(print)))
        # Twisted's buffer before logging begins keeps every event.
        self.assertTrue(observed(LogPublisher(LimitedHistoryLogObserver())))
        # A predicate that may look at other fields, or a negative observer.
        self.assertTrue(observed(FilteringLogObserver(print, [info, lambda e: None])))
        self.assertTrue(observed(FilteringLogObserver(print, [info], negativeObserver=print)))
        # A filter that lets debug through observes what its observer does.
        debug = LogLevelFilterPredicate(LogLevel.debug)
        self.assertFalse(observed(FilteringLogObserver(LogPublisher(), [debug])))
        self.assertTrue(observed(FilteringLogObserver(print, [debug])))


class StreamTests(SynchronousTestCase):
    """After the handshake the context keeps partial records itself: bytes
    cut anywhere must come out whole, in order, with errors as if uncut."""

    def established(self) -> tuple[Pair, list[bytes]]:
        """A pair after its handshake, the client's writes captured, not delivered."""
        pair = Pair()
        pair.flush()
        sent: list[bytes] = []
        pair.client.transport.write = sent.append  # type: ignore[method-assign]
        return pair, sent

    def test_records_cut_anywhere_arrive_whole_and_in_order(self) -> None:
        messages = [bytes([i]) * size for i, size in enumerate([1, 100, 20000, 70000, 3])]
        for cut in [1, 2, 3, 4, 5, 6, 7, 13, 1000, 16389, 16390, 65536]:
            pair, sent = self.established()
            for message in messages:
                pair.client.write(message)
                pair.client._flush()
            stream = b"".join(sent)
            for start in range(0, len(stream), cut):
                pair.server.dataReceived(stream[start : start + cut])
            self.assertEqual(
                pair.server_app.received, b"".join(messages), f"pieces of {cut}"  # type: ignore[attr-defined]
            )
            self.assertEqual(pair.server.bytesReceived, sum(map(len, messages)))

    def test_a_record_held_back_while_paused_arrives_after_resume(self) -> None:
        pair, sent = self.established()
        pair.client.write(b"first")
        pair.client._flush()
        pair.client.write(b"second")
        pair.client._flush()
        stream = b"".join(sent)
        pair.server.dataReceived(stream[:7])  # part of the first record
        pair.server.pauseProducing()
        pair.server.dataReceived(stream[7:])
        self.assertEqual(pair.server_app.received, b"")  # type: ignore[attr-defined]
        pair.server.resumeProducing()
        self.assertEqual(pair.server_app.received, b"firstsecond")  # type: ignore[attr-defined]

    def test_garbage_after_a_split_header_fails_as_illegal_message_with_an_alert(self) -> None:
        pair, sent = self.established()
        pair.client.write(b"hello")
        pair.client._flush()
        alerts: list[bytes] = []
        pair.server.transport.write = alerts.append  # type: ignore[method-assign]
        # The start of a header that is fine so far, then an absurd length.
        pair.server.dataReceived(b"".join(sent) + b"\x17\x03")
        self.assertEqual(pair.server_app.received, b"hello")  # type: ignore[attr-defined]
        pair.server.dataReceived(b"\x03\xff\xff" + bytes(100))
        pair.server.connectionLost(Failure(ConnectionDone()))
        (reason,) = pair.server_app.lost  # type: ignore[attr-defined]
        self.assertIsInstance(reason.value, SecurityError)
        self.assertEqual(reason.value.status, Status.ILLEGAL_MESSAGE)
        self.assertIn("record length 65535 exceeds", reason.value.reason)
        # OpenSSL's own alert, encrypted: one whole application-data record.
        alert = b"".join(alerts)
        self.assertGreater(len(alert), 0)
        self.assertEqual(alert[0], ContentType.APPLICATION_DATA)
        self.assertEqual(frame(alert).complete, len(alert))

    def test_bytes_after_close_notify_in_the_same_piece_are_dropped(self) -> None:
        pair, sent = self.established()
        pair.client.write(b"last words")
        pair.client.loseConnection()
        stream = b"".join(sent)
        pair.server.dataReceived(stream + b"\x99junk that is not TLS")
        pair.server.dataReceived(b"more junk")
        self.assertEqual(pair.server_app.received, b"last words")  # type: ignore[attr-defined]
        pair.server.connectionLost(Failure(ConnectionDone()))
        (reason,) = pair.server_app.lost  # type: ignore[attr-defined]
        self.assertIsInstance(reason.value, ConnectionDone)


class ALPNTests(SynchronousTestCase):
    """ALPN from IProtocolNegotiationFactory, per connection."""

    def test_wrapped_factories_choose_the_protocol(self) -> None:
        client_app, server_app = App(), App()
        pair = Pair(
            client_factory=NegotiatingFactory([b"http/1.1"], lambda: client_app),
            server_factory=NegotiatingFactory([b"h2", b"http/1.1"], lambda: server_app),
        )
        pair.flush()
        self.assertEqual(pair.client.negotiatedProtocol, b"http/1.1")
        self.assertEqual(pair.server.negotiatedProtocol, b"http/1.1")

    def test_the_same_credentials_serve_different_protocol_lists(self) -> None:
        """Per-connection ALPN never changes the shared SSL.Context."""
        shared = server_credentials()
        for wanted in (b"h2", b"http/1.1", b"h2"):
            app = App()
            pair = Pair(
                server=shared,
                client_factory=NegotiatingFactory([wanted], App),
                server_factory=NegotiatingFactory([b"h2", b"http/1.1"], lambda: app),  # noqa: B023
            )
            pair.flush()
            self.assertEqual(pair.server.negotiatedProtocol, wanted)

    def test_no_common_protocol_fails_with_application_protocol_mismatch(self) -> None:
        client_app = App()
        pair = Pair(
            client_app,
            client_factory=NegotiatingFactory([b"spdy/3"], lambda: client_app),
            server_factory=NegotiatingFactory([b"h2"], App),
        )
        pair.flush()
        (reason,) = client_app.lost
        self.assertEqual(reason.value.status, Status.APPLICATION_PROTOCOL_MISMATCH)

    def test_alpn_option_narrows_to_what_the_application_speaks(self) -> None:
        """alpn=h2,http/1.1 on an HTTP/1.1-only application: h2 is not accepted
        (it would be negotiated, then fail in the application)."""
        server = server_credentials(alpn=["h2", "http/1.1"])
        for offered in ([b"h2", b"http/1.1"], [b"http/1.1"]):
            pair = Pair(
                server=server,
                client_factory=NegotiatingFactory(offered, App),
                server_factory=NegotiatingFactory([b"http/1.1"], App),
            )
            pair.flush()
            self.assertEqual(pair.server.negotiatedProtocol, b"http/1.1")
        # The option's order is the preference among what the application speaks.
        server = server_credentials(alpn=["http/1.1", "h2"])
        pair = Pair(
            server=server,
            client_factory=NegotiatingFactory([b"h2", b"http/1.1"], App),
            server_factory=NegotiatingFactory([b"h2", b"http/1.1"], App),
        )
        pair.flush()
        self.assertEqual(pair.server.negotiatedProtocol, b"http/1.1")

    def test_no_overlap_refuses_alpn_clients_with_one_line(self) -> None:
        events, stop = log_events()
        self.addCleanup(stop)
        server = server_credentials(alpn=["h2"])
        factory = NegotiatingFactory([b"http/1.1"], App)
        for _ in range(2):
            client_app = App()
            pair = Pair(
                client_app,
                server=server,
                client_factory=NegotiatingFactory([b"h2"], lambda: client_app),  # noqa: B023
                server_factory=factory,
            )
            pair.flush()
            (reason,) = client_app.lost
            self.assertEqual(reason.value.status, Status.APPLICATION_PROTOCOL_MISMATCH)
        warnings_ = [e for e in events if "none of the protocols configured" in e["log_format"]]
        self.assertEqual(len(warnings_), 2)  # one per factory: each Pair makes its own
        self.assertIn("(h2)", formatEvent(warnings_[0]))
        self.assertIn("(http/1.1)", formatEvent(warnings_[0]))
        # A client that offers no ALPN is served (the application's default).
        pair = Pair(server=server, server_factory=factory)
        pair.flush()
        self.assertIsNone(pair.server.negotiatedProtocol)
        self.assertTrue(pair.server.securityContext.established)

    def test_no_alpn_means_none(self) -> None:
        pair = Pair()
        pair.flush()
        self.assertIsNone(pair.client.negotiatedProtocol)
        self.assertIsNone(pair.server.negotiatedProtocol)


class CoalescingTests(SynchronousTestCase):
    """Many small writes in one reactor turn become few records."""

    def test_thousand_small_writes_become_one_record(self) -> None:
        pair = Pair()
        pair.flush()
        sent = pair.capture_client_writes()
        for _ in range(1000):
            pair.client.write(b"0123456789")
        self.assertEqual(sent, [])  # nothing until the reactor turn ends
        pair.clock.advance(0)
        wire = b"".join(sent)
        records = frame(wire).ends
        self.assertEqual(frame(wire).complete, len(wire))
        self.assertEqual(len(records), 1)
        self.assertEqual(wire[0], ContentType.APPLICATION_DATA)
        pair.flush()
        self.assertEqual(pair.server_app.received, b"0123456789" * 1000)  # type: ignore[attr-defined]

    def test_writes_beyond_the_limit_are_sent_without_waiting(self) -> None:
        pair = Pair()
        pair.flush()
        before = pair.client.bytesSent
        pair.client.write(b"x" * 70000)
        self.assertEqual(pair.client.bytesSent - before, 70000)

    def test_each_flush_of_small_writes_fits_the_tcp_transport_buffer(self) -> None:
        # Twisted's TCP transport pauses its producer once it holds more than
        # 64 KiB: the records of one gathered flush must stay below that, so
        # that a producer of small writes is not paused after every flush.
        pair = Pair()
        pair.flush()
        sent = pair.capture_client_writes()
        most = 0
        for _ in range(3000):
            pair.client.write(b"y" * 100)
            most = max(most, pair.client._outgoing.size)
        self.assertLessEqual(most, 64000)
        self.assertGreaterEqual(len(sent), 4)  # flushed within the turn, not only at its end
        pair.clock.advance(0)
        self.assertLessEqual(max(map(len, sent)), 65536)  # FileDescriptor.bufferSize
        self.assertEqual(pair.client.bytesSent, 300000)
        pair.flush()
        self.assertEqual(pair.server_app.received, b"y" * 300000)  # type: ignore[attr-defined]

    def test_write_rejects_text(self) -> None:
        pair = Pair()
        self.assertRaises(TypeError, pair.client.write, "text")


def _bios(protocol: SchannelProtocol) -> tuple[int, int]:
    """The addresses of the memory BIOs under *protocol*'s context."""
    return bio_addresses(protocol.getHandle())


def _quiet_looks(clock: Clock) -> list[Any]:
    """The factory timers that look for quiet connections, still to run."""
    return [call for call in clock.getDelayedCalls()
            if getattr(call.func, "__name__", "") == "_look"]


def _releasing_pair() -> Pair:
    """A Pair whose factories release quiet connections' buffers."""
    on = {"release_quiet_buffers": True}
    return Pair(client_kwargs=on, server_kwargs=on)


class QuietReleaseTests(SynchronousTestCase):
    """A connection that went quiet after moving large pieces (or after its
    handshake) gets empty memory BIOs: an idle connection keeps none of the
    64 KiB pieces a memory BIO would otherwise hold for its life."""

    def test_a_quiet_connection_gets_empty_buffers_and_carries_on(self) -> None:
        pair = _releasing_pair()
        pair.flush()
        pair.server.write(b"x" * 100_000)
        pair.client.write(b"y" * 100_000)
        pair.flush()
        before = {"client": _bios(pair.client), "server": _bios(pair.server)}
        pair.clock.advance(protocol_module._QUIET_PERIOD)  # noted in this period: kept
        self.assertEqual(_bios(pair.server), before["server"])
        pair.clock.advance(protocol_module._QUIET_PERIOD)  # a whole period quiet
        for side, protocol in (("client", pair.client), ("server", pair.server)):
            after = _bios(protocol)
            if _openssl.FAST:
                self.assertEqual(len(set(before[side] + after)), 4, side)
            else:  # the public path cannot replace them
                self.assertEqual(after, before[side], side)
        # Nothing noted any more: the factories' look is not scheduled again.
        self.assertEqual(_quiet_looks(pair.clock), [])
        # The new pair carries what follows, both ways.
        pair.server.write(b"after")
        pair.client.write(b"back")
        pair.flush()
        self.assertEqual(pair.client_app.received, b"x" * 100_000 + b"after")  # type: ignore[attr-defined]
        self.assertEqual(pair.server_app.received, b"y" * 100_000 + b"back")  # type: ignore[attr-defined]

    def test_a_busy_connection_keeps_its_buffers_until_it_is_quiet(self) -> None:
        pair = _releasing_pair()
        pair.flush()
        for _ in range(3):
            pair.server.write(b"x" * 100_000)
            pair.flush()
            before = _bios(pair.server)
            pair.clock.advance(protocol_module._QUIET_PERIOD)
            self.assertEqual(_bios(pair.server), before)  # a large piece every period
        pair.clock.advance(protocol_module._QUIET_PERIOD)
        self.assertEqual(_bios(pair.server) != before, _openssl.FAST)

    def test_small_pieces_do_not_wake_the_look(self) -> None:
        pair = _releasing_pair()
        pair.flush()
        for _ in range(2):  # the handshakes' BIOs, quiet for a whole period
            pair.clock.advance(protocol_module._QUIET_PERIOD)
        self.assertEqual(_quiet_looks(pair.clock), [])
        for _ in range(100):
            pair.server.write(b"z" * 1000)
            pair.flush()
        self.assertEqual(_quiet_looks(pair.clock), [])

    def test_a_connection_that_ends_leaves_no_timer(self) -> None:
        pair = _releasing_pair()
        pair.flush()
        pair.server.write(b"x" * 100_000)
        pair.flush()
        # One per factory (none on the public path, which cannot release).
        self.assertEqual(len(_quiet_looks(pair.clock)), 2 if _openssl.FAST else 0)
        pair.client.loseConnection()
        pair.flush()
        pair.clock.advance(60)  # the close sequence's timers, if any
        self.assertTrue(pair.client_app.lost and pair.server_app.lost)  # type: ignore[attr-defined]
        self.assertEqual(_quiet_looks(pair.clock), [])

    def test_many_quiet_connections_are_released_a_batch_per_turn(self) -> None:
        # The look's scheduling alone (its releases are the real ones in the
        # tests above): 450 connections going quiet together are released
        # at most 200 per call, each batch its own reactor turn (callLater
        # 0), not in one long turn; one noted again between batches, and
        # one lost between them, are not released.
        clock = Clock()
        released: list[int] = []
        batches: list[int] = []
        connections: list[Any] = []

        class Batches(protocol_module._QuietRelease):
            def _release_batch(self) -> None:
                before = len(released)
                super()._release_batch()
                batches.append(len(released) - before)
                if len(released) == 200 and batches[-1]:  # after the first batch
                    self.note(connections[300])  # busy again
                    self.forget(connections[301])  # gone

        class Context:
            def __init__(self, number: int) -> None:
                self.number = number

            def release_buffers(self) -> bool:
                released.append(self.number)
                return True

        class Connection:
            def __init__(self, number: int) -> None:
                self.securityContext = Context(number)

        quiet = Batches(clock)
        connections.extend(Connection(n) for n in range(450))
        for connection in connections:
            quiet.note(connection)
        clock.advance(protocol_module._QUIET_PERIOD)  # noted in this period: kept
        self.assertEqual(released, [])
        clock.advance(protocol_module._QUIET_PERIOD)  # the look and its batches
        # (The first look found nothing quiet yet: an empty batch.)
        self.assertEqual(batches, [0, 200, 198, 50])  # (two of the second skipped)
        self.assertNotIn(300, released)
        self.assertNotIn(301, released)
        # Only the busy one is still noted: the next look is due, nothing sooner.
        self.assertEqual([call.getTime() for call in clock.getDelayedCalls()],
                         [clock.seconds() + protocol_module._QUIET_PERIOD])
        quiet.stop()

    def test_off_by_default_no_timer_after_a_handshake(self) -> None:
        # As TLSMemoryBIOFactory: a factory made directly leaves no timer.
        pair = Pair()
        pair.flush()
        pair.server.write(b"x" * 100_000)
        pair.flush()
        self.assertEqual(_quiet_looks(pair.clock), [])


class CloseTests(SynchronousTestCase):
    """close_notify, half-close, truncation, abort: and one connectionLost."""

    def test_data_written_before_lose_connection_arrives_then_clean_close(self) -> None:
        pair = Pair()
        pair.flush()
        pair.server.write(b"last words")
        pair.server.loseConnection()
        pair.flush()
        self.assertEqual(pair.client_app.received, b"last words")  # type: ignore[attr-defined]
        for app in (pair.client_app, pair.server_app):
            (reason,) = app.lost  # type: ignore[attr-defined]
            self.assertTrue(reason.check(ConnectionDone), reason)

    def test_after_lose_connection_the_peers_data_still_arrives(self) -> None:
        """What the peer wrote before it saw our close_notify is still its
        stream (as in Twisted's TLS, whose test_loseConnectionAfterHandshake
        checks it); the close timer bounds how long that can go on."""
        pair = Pair()
        pair.flush()
        pair.server.loseConnection()
        pair.client.write(b"x" * 100000)
        pair.flush()
        self.assertEqual(pair.server_app.received, b"x" * 100000)  # type: ignore[attr-defined]
        (reason,) = pair.server_app.lost  # type: ignore[attr-defined]
        self.assertTrue(reason.check(ConnectionDone), reason)

    def test_lose_connection_does_not_wait_forever_for_close_notify(self) -> None:
        """Twisted #7926: the peer never answers; the transport closes anyway."""
        pair = Pair()
        pair.flush()
        # From now on the client neither reads nor answers nor closes.
        pair.client.dataReceived = lambda data: None  # type: ignore[method-assign]
        pair.client.transport.write = lambda data: None
        pair.server.loseConnection()
        pair.flush()
        self.assertFalse(pair.server.transport.disconnecting)  # waiting, politely
        pair.clock.advance(pair.server_factory.close_timeout or 0)
        self.assertTrue(pair.server.transport.disconnecting)
        pair.flush()
        (reason,) = pair.server_app.lost  # type: ignore[attr-defined]
        self.assertTrue(reason.check(ConnectionDone), reason)

    def test_close_notify_reaches_half_closeable_protocol_which_can_still_write(self) -> None:
        server_app = HalfCloser()
        pair = Pair(HalfCloser(), server_app)
        pair.flush()
        pair.client.write(b"request")
        pair.client.loseWriteConnection()
        pair.client.write(b" dropped")  # after close_notify: not sent
        pair.flush()
        self.assertEqual(server_app.received, b"request")
        self.assertIn("readConnectionLost", server_app.events)
        self.assertEqual(server_app.lost, [])  # still open for writing
        self.assertIn("writeConnectionLost", pair.client_app.events)  # type: ignore[attr-defined]
        pair.server.write(b"response")
        pair.server.loseConnection()
        pair.flush()
        self.assertEqual(pair.client_app.received, b"response")  # type: ignore[attr-defined]
        self.assertIn("readConnectionLost", pair.client_app.events)  # type: ignore[attr-defined]
        for app in (pair.client_app, server_app):
            (reason,) = app.lost  # type: ignore[attr-defined]
            self.assertTrue(reason.check(ConnectionDone), reason)

    def test_close_notify_to_plain_protocol_is_a_clean_close(self) -> None:
        pair = Pair()
        pair.flush()
        pair.client.write(b"bye")
        pair.client.loseConnection()
        pair.flush()
        self.assertEqual(pair.server_app.received, b"bye")  # type: ignore[attr-defined]
        (reason,) = pair.server_app.lost  # type: ignore[attr-defined]
        self.assertTrue(reason.check(ConnectionDone), reason)

    def test_eof_without_close_notify_is_truncation(self) -> None:
        pair = Pair()
        pair.flush()
        pair.server.connectionLost(Failure(ConnectionDone()))
        (reason,) = pair.server_app.lost  # type: ignore[attr-defined]
        self.assertTrue(reason.check(ConnectionTruncated))
        self.assertTrue(reason.check(ConnectionLost))  # still a ConnectionLost
        self.assertIn("close_notify", str(reason.value))

    def test_eof_during_handshake_is_truncation(self) -> None:
        pair = Pair()
        pair.server.connectionLost(Failure(ConnectionDone()))
        (reason,) = pair.server_app.lost  # type: ignore[attr-defined]
        self.assertTrue(reason.check(ConnectionTruncated))
        self.assertIn("handshake", str(reason.value))

    def test_abort_delivers_nothing_more_and_reports_once(self) -> None:
        pair = Pair()
        pair.flush()
        pair.client.write(b"in flight")
        pair.clock.advance(0)
        pair.server.abortConnection()
        pair.server.abortConnection()
        pair.server.loseConnection()
        pair.flush()
        self.assertEqual(pair.server_app.received, b"")  # type: ignore[attr-defined]
        pair.server.connectionLost(Failure(ConnectionAborted()))
        self.assertEqual(len(pair.server_app.lost), 1)  # type: ignore[attr-defined]

    def test_lose_connection_before_handshake_closes_at_once(self) -> None:
        pair = Pair()
        pair.client.loseConnection()
        self.assertTrue(pair.client.transport.disconnecting)
        pair.flush()
        (reason,) = pair.client_app.lost  # type: ignore[attr-defined]
        self.assertTrue(reason.check(ConnectionDone), reason)

    def test_lose_connection_after_early_write_waits_for_handshake(self) -> None:
        pair = Pair()
        pair.client.write(b"held")
        pair.client.loseConnection()
        pair.flush()
        self.assertEqual(pair.server_app.received, b"held")  # type: ignore[attr-defined]
        (reason,) = pair.client_app.lost  # type: ignore[attr-defined]
        self.assertTrue(reason.check(ConnectionDone), reason)

    def test_an_open_connection_holds_no_handshake_or_close_state(self) -> None:
        """The handshake's state (its buffer, timer, held writes and waiters)
        is dropped when it completes and the close sequence is made when
        closing begins, so an idle connection carries neither; the shared
        not-closing state is never written to."""
        pair = Pair()
        self.assertIsNotNone(pair.server._handshake)
        pair.client.write(b"held")
        pair.client.whenHandshakeDone()
        pair.flush()
        for side in (pair.client, pair.server):
            self.assertIsNone(side._handshake)
            self.assertNotIn("_closing", vars(side))
        pair.server.loseConnection()
        pair.flush()
        for side in (pair.client, pair.server):
            self.assertTrue(side._closing.sent and side._closing.received)
            self.assertIsNone(side._closing.timer)
        shared = type(pair.server)._closing
        self.assertEqual(
            (
                shared.protocol,
                shared.sent,
                shared.received,
                shared.write_shutdown_wanted,
                shared.timer,
            ),
            (None, False, False, False, None),
        )


@implementer(IPushProducer)
class RecordingPush:
    """A push producer that only records what it is told."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


class Pull:
    """A pull producer: one chunk per resumeProducing, then it finishes."""

    def __init__(self, transport: SchannelProtocol, chunks: list[bytes]) -> None:
        self.transport = transport
        self.chunks = list(chunks)
        self.calls = 0

    def resumeProducing(self) -> None:
        self.calls += 1
        if self.chunks:
            self.transport.write(self.chunks.pop(0))
        if not self.chunks:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def stopProducing(self) -> None:
        self.chunks = []


class ProducerTests(SynchronousTestCase):
    """Producers both ways: paused by the handshake, by the transport, by the app."""

    def test_push_producer_is_paused_while_writes_wait_for_the_handshake(self) -> None:
        pair = Pair()
        producer = RecordingPush()
        pair.client.registerProducer(producer, True)
        pair.client.write(b"held")
        self.assertEqual(producer.events, ["pause"])
        pair.flush()
        self.assertEqual(producer.events, ["pause", "resume"])
        self.assertEqual(pair.server_app.received, b"held")  # type: ignore[attr-defined]

    def test_a_pause_for_the_turn_leaves_no_timer_once_the_connection_is_gone(
        self,
    ) -> None:
        # Two 64,000-byte flushes in one turn pause the producer until the
        # next turn; a connection aborted in that turn must not leave the
        # resuming call behind (a trial test would find the reactor unclean).
        pair = Pair()
        pair.flush()
        producer = RecordingPush()
        pair.client.registerProducer(producer, True)
        for _ in range(1300):
            pair.client.write(b"z" * 100)
        self.assertEqual(producer.events, ["pause"])
        pair.client.abortConnection()
        pair.pump.flush(advanceClock=False)
        self.assertEqual(len(pair.client_app.lost), 1)  # type: ignore[attr-defined]
        self.assertEqual(pair.clock.getDelayedCalls(), [])

    def test_transport_and_handshake_pauses_both_hold_the_producer(self) -> None:
        pair = Pair()
        producer = RecordingPush()
        pair.client.registerProducer(producer, True)
        pair.client.write(b"held")  # paused for the handshake
        gate = pair.client._producer
        assert gate is not None
        gate.pauseProducing()  # and the transport's buffer is full
        gate.resumeProducing()  # the transport drains: still held by the handshake
        self.assertEqual(producer.events, ["pause"])
        gate.pauseProducing()
        pair.flush()  # the handshake completes: still held by the transport
        self.assertEqual(producer.events, ["pause"])
        gate.resumeProducing()
        self.assertEqual(producer.events, ["pause", "resume"])

    def test_pull_producer_streams_everything_then_closes_cleanly(self) -> None:
        pair = Pair()
        chunks = [bytes([65 + i]) * 1000 for i in range(5)]
        pull = Pull(pair.client, chunks)
        pair.client.registerProducer(pull, False)
        pair.flush()
        for _ in range(10):
            pair.flush()
        self.assertEqual(pair.server_app.received, b"".join(chunks))  # type: ignore[attr-defined]
        (reason,) = pair.server_app.lost  # type: ignore[attr-defined]
        self.assertTrue(reason.check(ConnectionDone), reason)

    def test_registering_a_second_producer_raises(self) -> None:
        pair = Pair()
        pair.client.registerProducer(RecordingPush(), True)
        self.assertRaises(RuntimeError, pair.client.registerProducer, RecordingPush(), True)

    def test_producer_registered_after_close_is_stopped(self) -> None:
        pair = Pair(client=Credentials.client(trust_roots=OTHER_CA.cert_pem.bytes()))
        pair.flush()  # the handshake fails
        producer = RecordingPush()
        pair.client.registerProducer(producer, True)
        self.assertEqual(producer.events, ["stop"])

    def test_paused_application_gets_nothing_until_it_resumes(self) -> None:
        pair = Pair()
        pair.flush()
        pair.server.pauseProducing()
        pair.client.write(b"wait for it")
        pair.flush()
        self.assertEqual(pair.server_app.received, b"")  # type: ignore[attr-defined]
        pair.server.resumeProducing()
        self.assertEqual(pair.server_app.received, b"wait for it")  # type: ignore[attr-defined]

    def test_records_held_by_a_pause_are_delivered_before_connection_lost(self) -> None:
        pair = Pair()
        pair.flush()
        pair.server.pauseProducing()
        pair.client.write(b"last")
        pair.client.loseConnection()
        pair.flush()
        self.assertEqual(pair.server_app.received, b"")  # type: ignore[attr-defined]
        # The client gives up waiting for the (paused) server's close_notify.
        pair.clock.advance(pair.client_factory.close_timeout or 0)
        pair.flush()
        self.assertEqual(pair.server_app.received, b"last")  # type: ignore[attr-defined]
        (reason,) = pair.server_app.lost  # type: ignore[attr-defined]
        # Its close_notify was in the held records: a clean end.
        self.assertTrue(reason.check(ConnectionDone), reason)


class EdgeTests(SynchronousTestCase):
    """What the application does at awkward moments."""

    def test_lose_connection_in_connection_made_sends_no_client_hello(self) -> None:
        class Quitter(App):
            def connectionMade(self) -> None:
                self.transport.loseConnection()  # type: ignore[union-attr]

        pair = Pair(Quitter())
        self.assertEqual(pair.client.handshakeLadder, [])
        self.assertTrue(pair.client.transport.disconnecting)

    def test_abort_in_handshake_completed_keeps_early_data_from_leaving(self) -> None:
        class Suspicious(App):
            def connectionMade(self) -> None:
                self.transport.write(b"secret")  # type: ignore[union-attr]

            def handshakeCompleted(self) -> None:
                self.transport.abortConnection()  # type: ignore[union-attr]

        pair = Pair(Suspicious())
        pair.flush()
        self.assertEqual(pair.server_app.received, b"")  # type: ignore[attr-defined]
        self.assertEqual(pair.client.bytesSent, 0)

    def test_abort_in_handshake_completed_keeps_large_early_data_from_leaving(self) -> None:
        # Held writes bigger than the coalescing limits must wait for
        # handshakeCompleted() too, not be flushed while they are re-queued.
        class Suspicious(App):
            def connectionMade(self) -> None:
                for _ in range(5):
                    self.transport.write(b"s" * 70000)  # type: ignore[union-attr]

            def handshakeCompleted(self) -> None:
                self.transport.abortConnection()  # type: ignore[union-attr]

        pair = Pair(Suspicious())
        pair.flush()
        self.assertEqual(pair.server_app.received, b"")  # type: ignore[attr-defined]
        self.assertEqual(pair.client.bytesSent, 0)

    def test_half_close_before_the_handshake_happens_after_it(self) -> None:
        server_app = HalfCloser()
        pair = Pair(HalfCloser(), server_app)
        pair.client.write(b"all of it")
        pair.client.loseWriteConnection()
        pair.flush()
        self.assertEqual(server_app.received, b"all of it")
        self.assertIn("readConnectionLost", server_app.events)
        pair.server.write(b"answer")
        pair.server.loseConnection()
        pair.flush()
        self.assertEqual(pair.client_app.received, b"answer")  # type: ignore[attr-defined]

    def test_client_bounds_its_handshake_as_the_docs_show(self) -> None:
        clock = Clock()
        app = App()
        factory = SchannelFactory(client_credentials(), True,
                                  ClientFactory.forProtocol(lambda: app), clock,
                                  target_name="localhost")
        silent_server = Protocol()
        client, _, pump = connectedServerAndClient(
            lambda: silent_server, lambda: factory.buildProtocol(None), greet=False, clock=clock
        )
        timeouts: list[Failure] = []

        def give_up(failure: Failure) -> None:
            timeouts.append(failure)
            client.abortConnection()

        client.whenHandshakeDone().addTimeout(10, clock).addErrback(give_up)
        clock.advance(9.9)
        self.assertEqual(timeouts, [])
        clock.advance(0.1)
        pump.flush(advanceClock=False)
        (timeout,) = timeouts
        self.assertTrue(timeout.check(defer.TimeoutError))
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(len(app.lost), 1)
        self.assertEqual(client.handshakeLadder[0][:2], ("initialize", "CONTINUE_NEEDED"))

    def test_close_with_writes_waiting_for_a_silent_server_is_bounded(self) -> None:
        clock = Clock()
        app = App(greeting=b"held")
        factory = SchannelFactory(client_credentials(), True,
                                  ClientFactory.forProtocol(lambda: app), clock,
                                  target_name="localhost", close_timeout=3.0)
        client, _, pump = connectedServerAndClient(
            Protocol, lambda: factory.buildProtocol(None), greet=False, clock=clock
        )
        client.loseConnection()  # waits for the handshake, to send "held"
        clock.advance(2.9)
        self.assertFalse(client.transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(client.transport.disconnecting)
        pump.flush(advanceClock=False)
        self.assertEqual(len(app.lost), 1)

    def test_twisted_credentials_follow_the_factory_they_are_given_to(self) -> None:
        """ALPN comes from the wrapped factory of the factory that uses them."""
        options = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(CA_PEM))
        first = SchannelFactory(options, True, NegotiatingFactory([b"h2"], App), Clock())
        client_app = App()
        pair = Pair(
            client=first.credentials,
            client_factory=NegotiatingFactory([b"http/1.1"], lambda: client_app),
            server_factory=NegotiatingFactory([b"h2", b"http/1.1"], App),
            client_kwargs={"target_name": None},
        )
        pair.flush()
        self.assertEqual(pair.client.negotiatedProtocol, b"http/1.1")


class LimitTests(SynchronousTestCase):
    """The server's handshake timeout and pre-handshake byte bound."""

    def silent_client(self, **server_kwargs: Any) -> tuple[Pair, App]:
        """Our server, and a plain TCP-like client that sends nothing itself."""
        clock = Clock()
        app = App()
        factory = SchannelFactory(
            server_credentials(), False, ServerFactory.forProtocol(lambda: app), clock,
            **server_kwargs,
        )
        raw = Protocol()
        client, server, pump = connectedServerAndClient(
            lambda: factory.buildProtocol(None), lambda: raw, greet=False, clock=clock
        )
        pair = Pair.__new__(Pair)
        pair.clock, pair.pump, pair.server, pair.server_app = clock, pump, server, app
        pair.client = client
        return pair, app

    def test_handshake_timeout_drops_a_silent_client(self) -> None:
        events, stop = log_events()
        self.addCleanup(stop)
        pair, app = self.silent_client()
        pair.clock.advance(29.9)
        self.assertFalse(pair.server.transport.disconnecting)
        pair.clock.advance(0.2)
        self.assertTrue(pair.server.transport.disconnecting)
        pair.pump.flush(advanceClock=False)
        (reason,) = app.lost
        self.assertTrue(reason.check(HandshakeTimeout), reason)
        self.assertEqual([e["status"] for e in events], ["TIMEOUT"])

    def test_handshake_timeout_is_configurable_and_cancelled_by_success(self) -> None:
        pair = Pair(server_kwargs={"handshake_timeout": 2.0})
        pair.flush()
        pair.clock.advance(60)
        self.assertEqual(pair.server_app.lost, [])  # type: ignore[attr-defined]
        self.assertEqual(pair.clock.getDelayedCalls(), [])

    def test_bytes_before_handshake_are_bounded(self) -> None:
        events, stop = log_events()
        self.addCleanup(stop)
        pair, app = self.silent_client(max_pre_handshake_buffer=20000)
        pair.client.transport.write(hellos.claimed_client_hello(120000, 30000))
        pair.pump.flush(advanceClock=False)
        (reason,) = app.lost
        self.assertTrue(reason.check(HandshakeBufferExceeded), reason)
        self.assertIn("the limit is 20000", str(reason.value))
        (event,) = events
        self.assertEqual(event["status"], "BUFFER_EXCEEDED")
        self.assertEqual(event["log_level"].name, "error")

    def test_the_largest_client_hello_openssl_takes_is_answered(self) -> None:
        """131,396 bytes of body (OpenSSL's limit), in full records and in
        1,000-byte records (larger on the wire than the default bound)."""
        for fragment in (16384, 1000):
            pair, app = self.silent_client()
            received: list[bytes] = []
            pair.client.dataReceived = received.append  # type: ignore[method-assign]
            wire = hellos.client_hello(MAX_CLIENT_HELLO, fragment)
            for start in range(0, len(wire), 4096):
                pair.client.transport.write(wire[start : start + 4096])
                pair.pump.flush(advanceClock=False)
            self.assertEqual(app.lost, [], fragment)
            answer = b"".join(received)
            # A ServerHello (handshake type 2), not an alert.
            self.assertEqual(answer[:1], b"\x16", (fragment, answer[:16]))
            self.assertEqual(answer[5:6], b"\x02", (fragment, answer[:16]))

    def test_a_hello_longer_than_openssl_takes_is_refused_at_once(self) -> None:
        pair, app = self.silent_client()
        received: list[bytes] = []
        pair.client.dataReceived = received.append  # type: ignore[method-assign]
        pair.client.transport.write(hellos.claimed_client_hello(MAX_CLIENT_HELLO + 1, 100))
        pair.pump.flush(advanceClock=False)
        (reason,) = app.lost
        self.assertIsInstance(reason.value, SecurityError)
        self.assertEqual(reason.value.status, Status.ILLEGAL_MESSAGE)
        # A fatal alert in the clear (illegal_parameter or decode_error, as OpenSSL judges).
        self.assertEqual(b"".join(received)[:1], b"\x15")

    def test_a_stalled_hello_is_held_as_sent_not_as_claimed(self) -> None:
        """The records of an unfinished ClientHello wait here, not in OpenSSL
        (which would allocate the claimed 130,816 bytes at once)."""
        pair, app = self.silent_client()
        wire = hellos.claimed_client_hello(130816, 64000)
        pair.client.transport.write(wire)
        pair.pump.flush(advanceClock=False)
        self.assertEqual(app.lost, [])
        waiting = pair.server._handshake
        assert waiting is not None
        self.assertEqual(waiting.data, wire)
        self.assertEqual(pair.server.handshakeLadder, [])
        self.assertEqual(pair.server.factory.handshake_memory_held, len(wire))


class HandshakeMemoryTests(SynchronousTestCase):
    """handshake_memory: a server-wide budget for the bytes of unfinished handshakes."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.apps: list[App] = []

        def app() -> App:
            self.apps.append(App())
            return self.apps[-1]

        self.factory = SchannelFactory(
            server_credentials(), False, ServerFactory.forProtocol(app), self.clock,
            handshake_memory=150_000,
        )

    def connect(self) -> tuple[SchannelProtocol, Any, Any]:
        raw = Protocol()
        client, server, pump = connectedServerAndClient(
            lambda: self.factory.buildProtocol(None), lambda: raw, greet=False, clock=self.clock
        )
        return server, client, pump

    def test_past_the_budget_new_handshakes_are_refused_with_one_line(self) -> None:
        events, stop = log_events()
        self.addCleanup(stop)
        stalled = []
        for _ in range(2):
            server, client, pump = self.connect()
            client.transport.write(hellos.claimed_client_hello(130816, 64000))
            pump.flush(advanceClock=False)
            stalled.append((server, client, pump))
        self.assertEqual([app.lost for app in self.apps], [[], []])
        self.assertEqual(self.factory.handshake_memory_held, 2 * 64024)
        # The budget has 21,952 bytes left: an ordinary hello fits ...
        server, client, pump = self.connect()
        client.transport.write(hellos.client_hello(500))
        pump.flush(advanceClock=False)
        self.assertEqual(self.apps[2].lost, [])
        # ... a third large one does not, nor do the next ones.
        for _ in range(3):
            server, client, pump = self.connect()
            client.transport.write(hellos.claimed_client_hello(130816, 30000))
            pump.flush(advanceClock=False)
            (reason,) = self.apps[-1].lost
            self.assertTrue(reason.check(HandshakeMemoryExceeded), reason)
            self.assertIn("150000", str(reason.value))
        self.assertEqual(self.factory.handshakes_refused, 3)
        refused = [e for e in events if e.get("status") == "HANDSHAKE_MEMORY_EXCEEDED"]
        self.assertEqual(len(refused), 1)  # one line, not one per refusal
        self.assertIn("150000", formatEvent(refused[0]))
        # A stalled handshake that ends gives its bytes back.
        server, client, pump = stalled[0]
        client.transport.loseConnection()
        pump.flush(advanceClock=False)
        self.assertEqual(self.factory.handshake_memory_held, 64024 + 509)
        server, client, pump = self.connect()
        client.transport.write(hellos.claimed_client_hello(130816, 30000))
        pump.flush(advanceClock=False)
        self.assertEqual(self.apps[-1].lost, [])
        # At the end of the interval, one line counts the refusals it held back.
        self.clock.advance(10)
        refused = [e for e in events if e.get("status") == "HANDSHAKE_MEMORY_EXCEEDED"]
        self.assertEqual([e["count"] for e in refused], [1, 2])
        for _ in range(2):
            server, client, pump = self.connect()
            client.transport.write(hellos.claimed_client_hello(130816, 64000))
            pump.flush(advanceClock=False)
        self.clock.advance(10)
        refused = [e for e in events if e.get("status") == "HANDSHAKE_MEMORY_EXCEEDED"]
        self.assertEqual([e["count"] for e in refused], [1, 2, 2])
        self.assertEqual(self.factory.handshakes_refused, 5)

    def test_completed_and_failed_handshakes_give_their_bytes_back(self) -> None:
        pair = Pair()
        pair.flush()
        self.assertEqual(pair.server.factory.handshake_memory_held, 0)
        server, client, pump = self.connect()
        client.transport.write(hellos.claimed_client_hello(MAX_CLIENT_HELLO + 1, 100))
        pump.flush(advanceClock=False)
        self.assertEqual(len(self.apps[-1].lost), 1)
        self.assertEqual(self.factory.handshake_memory_held, 0)

    def test_clients_have_no_budget_and_bad_budgets_are_refused(self) -> None:
        client = SchannelFactory(
            client_credentials(), True, ClientFactory(), Clock(), target_name="localhost"
        )
        self.assertIsNone(client.handshake_memory)
        for bad in (0, -1, 1.5):
            error = self.assertRaises(
                ValueError, SchannelFactory, server_credentials(), False, Factory(), Clock(),
                handshake_memory=bad,
            )
            self.assertIn("handshake_memory", str(error))


class FactoryTests(SynchronousTestCase):
    """Construction, drop-in use of Twisted's TLS objects, and credential reload."""

    def test_client_without_a_name_to_check_is_refused(self) -> None:
        error = self.assertRaises(
            ValueError, SchannelFactory, client_credentials(), True, ClientFactory(), Clock()
        )
        self.assertIn("target_name", str(error))
        # Manual validation needs no name.
        SchannelFactory(client_credentials(manual_validation=True), True, ClientFactory(), Clock())

    def test_credentials_for_the_wrong_side_are_refused(self) -> None:
        error = self.assertRaises(
            ValueError, SchannelFactory, server_credentials(), True, ClientFactory(), Clock(),
            target_name="localhost",
        )
        self.assertIn("client credentials", str(error))
        self.assertRaises(
            ValueError, SchannelFactory, client_credentials(), False, ServerFactory(), Clock()
        )

    def test_not_a_tls_configuration_is_a_type_error(self) -> None:
        error = self.assertRaises(TypeError, SchannelFactory, "cert.pem", False, Factory(), Clock())
        self.assertIn("getContext", str(error))

    def test_bad_limits_are_refused(self) -> None:
        for bad in ({"handshake_timeout": 0}, {"max_pre_handshake_buffer": -1},
                    {"close_timeout": -5}):
            self.assertRaises(
                ValueError, SchannelFactory, server_credentials(), False, Factory(), Clock(), **bad
            )

    def test_twisted_creators_are_a_drop_in(self) -> None:
        """CertificateOptions and optionsForClientTLS, ALPN through Twisted's own path."""
        server_options = CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(_key()),
            certificate=crypto.X509.from_cryptography(_leaf()),
            acceptableProtocols=[b"h2", b"http/1.1"],
        )
        client_options = optionsForClientTLS(
            "localhost", trustRoot=Certificate.loadPEM(CA_PEM),
            acceptableProtocols=[b"http/1.1"],
        )
        pair = Pair(server=server_options, client=client_options,
                    client_kwargs={"target_name": None})
        pair.client.write(b"via twisted")
        pair.flush()
        self.assertEqual(pair.server_app.received, b"via twisted")  # type: ignore[attr-defined]
        self.assertEqual(pair.client.negotiatedProtocol, b"http/1.1")

    def test_twisted_creator_name_mismatch_is_wrong_principal(self) -> None:
        client_options = optionsForClientTLS("example.com", trustRoot=Certificate.loadPEM(CA_PEM))
        pair = Pair(client=client_options, client_kwargs={"target_name": None})
        pair.flush()
        (reason,) = pair.client_app.lost  # type: ignore[attr-defined]
        self.assertEqual(reason.value.status, Status.WRONG_PRINCIPAL)

    def test_legacy_get_context_objects_work_on_both_sides(self) -> None:
        @implementer(IOpenSSLContextFactory)
        class Legacy:
            def __init__(self, context: SSL.Context) -> None:
                self.context = context

            def getContext(self) -> SSL.Context:
                return self.context

        server_context = SSL.Context(SSL.TLS_METHOD)
        server_context.use_certificate(crypto.X509.from_cryptography(_leaf()))
        server_context.use_privatekey(crypto.PKey.from_cryptography_key(_key()))
        client_context = SSL.Context(SSL.TLS_METHOD)
        pair = Pair(server=Legacy(server_context), client=Legacy(client_context),
                    client_kwargs={"target_name": None})
        pair.client.write(b"legacy")
        pair.flush()
        self.assertEqual(pair.server_app.received, b"legacy")  # type: ignore[attr-defined]

    def test_undeclared_get_context_object_warns_as_twisted_does(self) -> None:
        class Undeclared:
            def getContext(self) -> SSL.Context:
                return SSL.Context(SSL.TLS_METHOD)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            SchannelFactory(Undeclared(), False, Factory(), Clock())
        (warning,) = caught
        self.assertIs(warning.category, LegacyContextFactoryWarning)
        self.assertIn("IOpenSSLServerConnectionCreator", str(warning.message))
        self.assertEqual(warning.filename, __file__)

    def test_new_credentials_apply_to_new_connections_only(self) -> None:
        renewed = CA.issue_cert("localhost")
        first = Pair()
        first.flush()
        old_certificate = first.client.securityContext.attributes.peer_certificate
        first.server_factory.credentials = Credentials.server(
            certificate=renewed.private_key_and_cert_chain_pem.bytes()
        )
        # The open connection keeps its context and certificate.
        self.assertEqual(first.client.securityContext.attributes.peer_certificate,
                         old_certificate)
        second = Pair(server=first.server_factory.credentials)
        second.flush()
        self.assertNotEqual(second.client.securityContext.attributes.peer_certificate,
                            old_certificate)
        self.assertRaises(
            ValueError, setattr, first.server_factory, "credentials", client_credentials()
        )

    def test_log_prefix_marks_tls(self) -> None:
        factory = SchannelFactory(server_credentials(), False, Factory(), Clock())
        self.assertEqual(factory.logPrefix(), "Factory (TLS)")


def _leaf() -> Any:
    from cryptography import x509

    return x509.load_pem_x509_certificate(SERVER.cert_chain_pems[0].bytes())


def _key() -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(SERVER.private_key_pem.bytes(), None)


# -- real loopback TCP --------------------------------------------------------


@implementer(IPushProducer)
class Source:
    """A push producer that writes *total* bytes in *chunk*-sized writes."""

    def __init__(self, transport: SchannelProtocol, total: int, chunk: int) -> None:
        self.transport = transport
        self.left = total
        self.chunk = b"\xa5" * chunk
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.digest = hashlib.sha256()
        self.max_unflushed = 0

    def start(self) -> None:
        self.transport.registerProducer(self, True)
        self._produce()

    def _produce(self) -> None:
        while self.left > 0 and not self.paused:
            data = self.chunk[: min(len(self.chunk), self.left)]
            self.left -= len(data)
            self.digest.update(data)
            self.transport.write(data)
            self.max_unflushed = max(self.max_unflushed, self.transport._outgoing.size)
        if self.left == 0 and not self.paused:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1
        reactor.callLater(0, self._produce)  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        self.left = 0


class SlowSink(Protocol):
    """Pauses its transport after each MiB and resumes a little later."""

    def __init__(self) -> None:
        self.received = 0
        self.since_pause = 0
        self.digest = hashlib.sha256()
        self.max_buffered = 0
        self.pauses = 0
        self.done: defer.Deferred[None] = defer.Deferred()
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.since_pause += len(data)
        self.digest.update(data)
        tls: SchannelProtocol = self.transport  # type: ignore[assignment]
        self.max_buffered = max(self.max_buffered, len(tls._received))
        if self.since_pause >= 1 << 20 and not tls._read_paused:
            self.since_pause = 0
            self.pauses += 1
            tls.pauseProducing()
            reactor.callLater(0.001, tls.resumeProducing)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.reason = reason
        self.done.callback(None)


class LoopbackTests(TestCase):
    """Our client and server over real TCP on 127.0.0.1."""

    timeout = 90

    def listen(self, factory: Any) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    @defer.inlineCallbacks
    def test_large_transfer_into_slow_consumer_keeps_buffers_bounded(self) -> Any:
        total = 64 * 1024 * 1024
        sources: list[Source] = []

        class Sender(Protocol):
            def connectionMade(self) -> None:
                source = Source(self.transport, total, 256 * 1024)  # type: ignore[arg-type]
                sources.append(source)
                source.start()

        sink = SlowSink()
        port = self.listen(SchannelFactory(server_credentials(), False,
                                           ServerFactory.forProtocol(Sender)))
        client = SchannelFactory(client_credentials(), True,
                                 ClientFactory.forProtocol(lambda: sink), target_name="localhost")
        connector = reactor.connectTCP("127.0.0.1", port, client)  # type: ignore[attr-defined]
        self.addCleanup(connector.disconnect)
        yield sink.done.addTimeout(60, reactor)  # type: ignore[arg-type]
        (source,) = sources
        self.assertEqual(sink.received, total)
        self.assertEqual(sink.digest.hexdigest(), source.digest.hexdigest())
        assert sink.reason is not None
        self.assertTrue(sink.reason.check(ConnectionDone), sink.reason)
        # Reading side: the receive buffer never holds more than one socket
        # read plus a partial record, however slow the consumer.
        self.assertGreater(sink.pauses, 10)
        self.assertLess(sink.max_buffered, 256 * 1024)
        # Writing side: the producer was paused by the full transport and
        # resumed, and we never held more than the coalescing limit.
        self.assertGreater(source.pauses, 0)
        self.assertGreater(source.resumes, 0)
        self.assertLessEqual(source.max_unflushed, 64 * 1024)

    @defer.inlineCallbacks
    def test_start_schannel_upgrades_a_plaintext_connection(self) -> Any:
        """A STARTTLS exchange: plaintext lines, then TLS on the same socket."""
        done: defer.Deferred[None] = defer.Deferred()
        server_lines: list[bytes] = []
        client_lines: list[bytes] = []
        interfaces_seen: list[tuple[bool, bool]] = []

        class Server(LineReceiver):
            delimiter = b"\n"

            def lineReceived(self, line: bytes) -> None:
                server_lines.append(line)
                if line == b"STARTTLS":
                    self.sendLine(b"GO")
                    startSchannel(self, server_credentials(), False)
                elif line == b"secret":
                    tls: SchannelProtocol = self.transport  # type: ignore[assignment]
                    interfaces_seen.append(
                        (ITCPTransport.providedBy(tls), ITLSTransport.providedBy(tls))
                    )
                    self.sendLine(tls.securityContext.attributes.protocol.encode())

        class Client(LineReceiver):
            delimiter = b"\n"

            def connectionMade(self) -> None:
                self.sendLine(b"STARTTLS")

            def lineReceived(self, line: bytes) -> None:
                client_lines.append(line)
                if line == b"GO":
                    tls = startSchannel(self, client_credentials(), True, target_name="localhost")
                    self.sendLine(b"secret")
                    tls.whenHandshakeDone().addErrback(done.errback)
                else:
                    self.transport.loseConnection()  # type: ignore[union-attr]
                    done.callback(None)

        events, stop = log_events()
        self.addCleanup(stop)
        port = self.listen(ServerFactory.forProtocol(Server))
        connector = reactor.connectTCP(  # type: ignore[attr-defined]
            "127.0.0.1", port, ClientFactory.forProtocol(Client)
        )
        self.addCleanup(connector.disconnect)
        yield done.addTimeout(20, reactor)  # type: ignore[arg-type]
        self.assertEqual(server_lines, [b"STARTTLS", b"secret"])
        self.assertEqual(client_lines, [b"GO", b"TLSv1.3"])
        # TCP's interfaces come through, except starting TLS under our TLS.
        self.assertEqual(interfaces_seen, [(True, False)])
        # Both ends logged the handshake, naming the peer as host:port.
        peers = sorted(e["peer"] for e in events if e.get("status") == "OK")
        self.assertEqual(len(peers), 2)
        self.assertIn(f"127.0.0.1:{port}", peers)
        for peer in peers:
            self.assertRegex(peer, r"^127\.0\.0\.1:\d+$")

    def test_start_schannel_takes_bytes_read_past_the_command(self) -> None:
        """A client that pipelines its ClientHello right behind STARTTLS."""
        clock = Clock()
        seen: list[bytes] = []

        class Server(LineReceiver):
            delimiter = b"\n"

            def lineReceived(self, line: bytes) -> None:
                if line == b"STARTTLS":
                    # The ClientHello may already sit in the line buffer.
                    startSchannel(self, server_credentials(), False, clock=clock,
                                  received=self.clearLineBuffer())
                else:
                    seen.append(line)

        class Client(LineReceiver):
            delimiter = b"\n"

            def connectionMade(self) -> None:
                self.sendLine(b"STARTTLS")
                startSchannel(self, client_credentials(), True, clock=clock,
                              target_name="localhost")
                self.sendLine(b"inside")

        client, server, pump = connectedServerAndClient(Server, Client, clock=clock)
        pump.flush(advanceClock=True)
        self.assertEqual(seen, [b"inside"])
        self.assertIsInstance(server.transport, SchannelProtocol)

    def test_start_schannel_needs_a_transport_it_can_repoint(self) -> None:
        protocol = Protocol()
        self.assertRaises(TypeError, startSchannel, protocol, server_credentials(), False)


class DocumentationTests(SynchronousTestCase):
    """The complete programs in docs/transport.rst run and print what it says."""

    def programs(self) -> list[tuple[str, str]]:
        import pathlib
        import re
        import textwrap

        page = pathlib.Path(__file__).parent.parent / "docs" / "transport.rst"
        text = page.read_text()
        found = []
        pattern = r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)(?:It prints ``([^`]+)``)?"
        for block, printed in re.findall(pattern, text):
            code = textwrap.dedent(block)
            if code.startswith("# A complete program"):
                found.append((code, printed))
        return found

    def test_complete_programs_run(self) -> None:
        import subprocess
        import sys

        programs = self.programs()
        self.assertEqual(len(programs), 2)
        # The import path this process has (absolute: site made it so), not
        # PYTHONPATH as given, which may be relative to the directory trial
        # left for its _trial_temp.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        for code, printed in programs:
            result = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, timeout=60, env=env
            )
            self.assertEqual(result.returncode, 0, result.stderr.decode())
            expected = printed.split("TLS_")[0] if "TLS_" in printed else printed
            self.assertIn(expected, result.stdout.decode())


class ReferenceTests(SynchronousTestCase):
    """A finished connection frees its context by reference counting alone.

    Reference cycles are only broken by Python's cyclic collector, which
    runs on object counts, not on the OpenSSL memory a context holds: under
    a flood of failing handshakes that memory would pile up.
    """

    def setUp(self) -> None:
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)

    def pair(self, clock: Clock) -> tuple[
        SchannelProtocol, SchannelProtocol, StringTransport, StringTransport
    ]:
        """A client and a server connection on *clock*, each made with the
        transport the other's bytes are read from: (client, server, to the
        server, to the client)."""
        client_factory = SchannelFactory(
            client_credentials(), True, ClientFactory.forProtocol(App), clock,
            target_name="localhost",
        )
        server_factory = SchannelFactory(
            server_credentials(), False, ServerFactory.forProtocol(App), clock
        )
        client, server = client_factory.buildProtocol(None), server_factory.buildProtocol(None)
        assert client is not None and server is not None
        to_server, to_client = StringTransport(), StringTransport()
        client.makeConnection(to_server)
        server.makeConnection(to_client)
        return client, server, to_server, to_client

    def shuttle(self, client: SchannelProtocol, server: SchannelProtocol,
                to_server: StringTransport, to_client: StringTransport) -> None:
        for _ in range(10):
            moved = False
            for source, target in ((to_server, server), (to_client, client)):
                data = source.value()
                if data:
                    source.clear()
                    target.dataReceived(data)
                    moved = True
            if not moved:
                return

    def test_failed_handshake_leaves_no_reference_cycle(self) -> None:
        factory = SchannelFactory(server_credentials(), False, ServerFactory.forProtocol(App),
                                  Clock())
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        app = protocol.wrappedProtocol
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        (reason,) = app.lost  # type: ignore[attr-defined]
        self.assertEqual(reason.value.status, Status.ILLEGAL_MESSAGE)
        freed = weakref.ref(protocol), weakref.ref(protocol.securityContext)
        del protocol, reason, app, factory, transport
        self.assertEqual([ref() for ref in freed], [None, None])

    def test_connection_closed_with_close_notify_leaves_no_reference_cycle(self) -> None:
        """The close sequence that a closing connection holds refers back to
        it; the reference is dropped when the connection is over."""
        client, server, to_server, to_client = self.pair(Clock())
        self.shuttle(client, server, to_server, to_client)
        server.loseConnection()
        self.shuttle(client, server, to_server, to_client)
        for protocol in (client, server):
            self.assertTrue(protocol._closing.sent and protocol._closing.received)
            protocol.connectionLost(Failure(ConnectionDone()))
        freed = [weakref.ref(p) for p in (client, server)]
        del client, server, protocol
        self.assertEqual([ref() for ref in freed], [None] * 2)

    def test_closed_connection_with_a_producer_leaves_no_reference_cycle(self) -> None:
        clock = Clock()
        client, server, to_server, to_client = self.pair(clock)
        client_app = client.wrappedProtocol
        producer = RecordingPush()
        server.registerProducer(producer, True)
        producer.transport = server  # type: ignore[attr-defined]  # as real producers do
        server.write(b"x" * 100)
        self.shuttle(client, server, to_server, to_client)
        clock.advance(0)
        self.shuttle(client, server, to_server, to_client)
        self.assertEqual(client_app.received, b"x" * 100)  # type: ignore[attr-defined]
        for protocol in (client, server):
            protocol.connectionLost(Failure(ConnectionDone()))
        freed = [weakref.ref(p) for p in (client, server)] + [
            weakref.ref(p.securityContext) for p in (client, server)
        ]
        # A real transport drops its producer when the connection is lost.
        to_client.producer = None
        del client, server, protocol, producer, client_app
        self.assertEqual([ref() for ref in freed], [None] * 4)
