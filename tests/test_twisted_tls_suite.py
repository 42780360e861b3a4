"""Twisted's own TLS transport tests, run against txschannel's transport.

``twisted.protocols.test.test_tls`` is the suite Twisted runs for its
``TLSMemoryBIOFactory`` / ``TLSMemoryBIOProtocol``. Here each of its test
classes that exercises the transport is subclassed, and ``setUp`` replaces
those two module globals with :class:`~txschannel.protocol.SchannelFactory`
and :class:`~txschannel.protocol.SchannelProtocol` (``self.patch``, undone
after each test), so every test body runs unchanged against our classes.

Not run: ``NonStreamingProducerTests`` and ``_AggregateSmallWritesTests``,
which test Twisted's private helpers ``_PullToPush`` and
``_AggregateSmallWrites`` directly and never build a TLS transport.

Tests that do not pass are in ``KNOWN_DIFFERENCES`` (tests/support/
twisted_suite.py) with the reason; they run as trial ``todo`` (expected
failure), so one that starts passing is reported as an unexpected success
and the list must be updated. Tests that
do not involve our transport at all are in :data:`NOT_APPLICABLE` and are
skipped with the reason. docs/testing.rst has the same table.

Twisted's suite imports ``twisted.test.test_tcp``, which needs PyHamcrest;
without it this module fails to import (a failure, not a skip).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

try:
    from twisted.protocols.test import test_tls as twisted_tls
except ImportError as e:  # pragma: no cover - a broken environment, reported loudly
    raise ImportError(
        f"Twisted's TLS test suite cannot be imported ({e}); it needs the test extras "
        "(pip install '.[test]', which brings pyhamcrest and hypothesis)"
    ) from e

from tests.support.twisted_suite import KNOWN_DIFFERENCES, NOT_APPLICABLE
from txschannel.protocol import SchannelFactory, SchannelProtocol
from txschannel.testing import connected_pair

_T = TypeVar("_T", bound=type)


def _expected(original: Callable[[Any], Any], reason: str, kind: str) -> Callable[[Any], Any]:
    """A copy of Twisted's test method carrying trial's ``todo`` or ``skip``
    (set on our copy so that Twisted's own classes stay untouched)."""

    def test(self: Any) -> Any:
        return original(self)

    test.__name__ = original.__name__
    test.__doc__ = original.__doc__
    setattr(test, kind, reason)
    return test


def substituted(cls: _T) -> _T:
    """Mark *cls*'s known differences (todo) and non-applicable tests (skip)."""
    for table, kind in ((KNOWN_DIFFERENCES, "todo"), (NOT_APPLICABLE, "skip")):
        for key, reason in table.items():
            owner, name = key.split(".")
            if owner == cls.__name__:
                original = getattr(cls, name, None)
                if original is None:
                    raise AttributeError(f"{key} is listed but Twisted's suite has no such test")
                setattr(cls, name, _expected(original, reason, kind))
    return cls


class _UseSchannel:
    """Substitute our classes for Twisted's in the suite's module, per test."""

    patch: Callable[..., None]

    def setUp(self) -> Any:
        self.patch(twisted_tls, "TLSMemoryBIOFactory", SchannelFactory)
        self.patch(twisted_tls, "TLSMemoryBIOProtocol", SchannelProtocol)
        return super().setUp()  # type: ignore[misc]


@substituted
class TLSMemoryBIOFactoryTests(_UseSchannel, twisted_tls.TLSMemoryBIOFactoryTests):
    """Factory logging and log prefix, with SchannelFactory."""


@substituted
class DeterministicTLSMemoryBIOTests(_UseSchannel, twisted_tls.DeterministicTLSMemoryBIOTests):
    """Handshake notification and write buffering over an iosim pump."""


@substituted
class TLSMemoryBIOTests(_UseSchannel, twisted_tls.TLSMemoryBIOTests):
    """Handshake, writes, shutdown and errors over loopback transports."""


@substituted
class TLSProducerTests(_UseSchannel, twisted_tls.TLSProducerTests):
    """Producers and consumers through the TLS layer."""


class SubstitutionTests(_UseSchannel, SynchronousTestCase):
    """The substitution really puts our classes under Twisted's tests."""

    def test_suite_helpers_build_schannel_protocols_that_complete_a_handshake(self) -> None:
        client, server, pump = twisted_tls.handshakingClientAndServer()
        self.assertIsInstance(client, SchannelProtocol)
        self.assertIsInstance(server, SchannelProtocol)
        pump.flush()
        self.assertTrue(client.securityContext.established)
        self.assertEqual(client.securityContext.attributes.server_name, "example.com")

    def test_expected_differences_leave_twisted_own_classes_untouched(self) -> None:
        for key in [*KNOWN_DIFFERENCES, *NOT_APPLICABLE]:
            owner, name = key.split(".")
            ours = getattr(globals()[owner], name)
            theirs = getattr(getattr(twisted_tls, owner), name)
            self.assertIsNot(ours, theirs)
            self.assertTrue(hasattr(ours, "todo") or hasattr(ours, "skip"), key)
            self.assertFalse(hasattr(theirs, "todo") or hasattr(theirs, "skip"), key)


class PublicCounterpartTests(SynchronousTestCase):
    """What some "private" known differences check, through public interfaces only.

    Twisted's tests for these count calls of its private ``_shutdownTLS``
    or call its private ``_tlsShutdownFinished``; here the same promises are
    checked on the bytes and callbacks an application can see.
    """

    def record_writes(self, transport: Any) -> list[bytes]:
        """Every write the TLS layer makes to *transport* from now on.

        iosim's FakeTransport drops writes once it is disconnecting, so its
        stream alone cannot show that nothing was attempted.
        """
        calls: list[bytes] = []
        write = transport.write

        def recording(data: bytes) -> None:
            calls.append(data)
            write(data)

        self.patch(transport, "write", recording)
        return calls

    def test_second_lose_connection_sends_nothing_more(self) -> None:
        client, server, pump = connected_pair(Protocol, Protocol)
        writes = self.record_writes(pump.clientIO)
        client.transport.write(b"x")
        client.transport.loseConnection()
        first = len(writes)
        self.assertGreater(first, 0)  # the record and the close_notify
        client.transport.loseConnection()
        self.assertEqual(len(writes), first)
        pump.flush()
        self.assertTrue(pump.clientIO.disconnected or pump.clientIO.disconnecting)

    def test_lose_connection_after_connection_lost_does_nothing(self) -> None:
        client, server, pump = connected_pair(Protocol, Protocol)
        client.transport.loseConnection()
        pump.flush()
        self.assertTrue(pump.serverIO.disconnected or pump.clientIO.disconnected)
        writes = self.record_writes(pump.serverIO)
        server.transport.loseConnection()
        server.transport.write(b"too late")
        pump.clock.advance(0)
        self.assertEqual(writes, [])

    def test_connection_lost_waits_for_the_underlying_transport(self) -> None:
        lost: list[Failure] = []

        class Noting(Protocol):
            def connectionLost(self, reason: Failure = connectionDone) -> None:
                lost.append(reason)

        client, server, pump = connected_pair(Noting, Protocol)
        client.transport.loseConnection()
        # close_notify is queued, the underlying transport is still open:
        # the application has not been told yet.
        self.assertEqual(lost, [])
        self.assertFalse(pump.clientIO.disconnected)
        pump.flush()
        self.assertEqual(len(lost), 1)
        self.assertTrue(lost[0].check(ConnectionDone), lost[0])
