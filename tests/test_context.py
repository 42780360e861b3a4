"""The sans-IO security context between two of its own kind, in memory.

Every test here runs real OpenSSL on both sides (our client against our
server); the tests against other TLS stacks are in ``test_context_peers``.
The credentials come from tests.support.contexts, the in-memory handshake
from tests.support.handshake.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable, Iterator

import trustme
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.support.contexts import (
    NAME,
    authority,
    bio_addresses,
    client_credentials,
    expired_pem,
    self_signed_pem,
    server_credentials,
)
from tests.support.handshake import (
    Side,
    bytewise,
    connected,
    failure,
    handshake,
    peer_error,
    random_chunks,
    whole,
)
from txschannel import (
    ClientContext,
    Credentials,
    SecurityError,
    ServerContext,
    Status,
    _openssl,
)
from txschannel.records import frame

# -- the handshake -----------------------------------------------------------


class HandshakeTests(SynchronousTestCase):
    """Full handshakes, then data both ways, for each version and key type."""

    def check(self, key_type: str, version: str) -> None:
        pair = connected(key_type, version)
        client, server = pair.client.context, pair.server.context
        self.assertTrue(client.established)
        self.assertTrue(server.established)
        for context in (client, server):
            attributes = context.attributes
            self.assertEqual(attributes.protocol, version)
            self.assertEqual(attributes.session_reused, False)
            self.assertGreaterEqual(attributes.cipher_bits, 128)
        self.assertEqual(client.attributes.cipher, server.attributes.cipher)
        if version == "TLSv1.2":
            self.assertIn("ECDSA" if key_type == "ECDSA" else "RSA", client.attributes.cipher)
        self.assertEqual(client.attributes.peer_chain[0], client.attributes.peer_certificate)
        self.assertEqual(
            client.attributes.peer_certificate.public_bytes(_PEM),  # type: ignore[union-attr]
            authority(key_type).server.cert_chain_pems[0].bytes(),
        )
        self.assertEqual(client.attributes.server_name, NAME)
        self.assertEqual(server.attributes.server_name, NAME)
        self.assertIsNone(server.attributes.peer_certificate)
        self.assertEqual(pair.client_to_server(b"ping"), b"ping")
        self.assertEqual(pair.server_to_client(b"pong"), b"pong")
        big = random.Random(1).randbytes(300_000)
        self.assertEqual(pair.client_to_server(big), big)
        self.assertEqual(pair.server_to_client(big), big)

    def test_tls13_with_an_ecdsa_certificate(self) -> None:
        self.check("ECDSA", "TLSv1.3")

    def test_tls13_with_an_rsa_certificate(self) -> None:
        self.check("RSA", "TLSv1.3")

    def test_tls12_with_an_ecdsa_certificate(self) -> None:
        self.check("ECDSA", "TLSv1.2")

    def test_tls12_with_an_rsa_certificate(self) -> None:
        self.check("RSA", "TLSv1.2")

    def test_channel_bindings_agree_on_both_sides(self) -> None:
        for version in ("TLSv1.2", "TLSv1.3"):
            pair = connected(version=version)
            client, server = pair.client.context, pair.server.context
            kinds = ["tls-exporter", "tls-server-end-point"]
            if version == "TLSv1.2":
                kinds.append("tls-unique")
            else:
                self.assertRaises(ValueError, client.channel_binding, "tls-unique")
            for kind in kinds:
                self.assertEqual(client.channel_binding(kind), server.channel_binding(kind))
                self.assertGreaterEqual(len(client.channel_binding(kind)), 12)
            self.assertRaises(ValueError, client.channel_binding, "tls-nonsense")

    def test_stream_sizes_describe_the_records(self) -> None:
        pair = connected(version="TLSv1.3")
        sizes = pair.client.context.attributes.stream_sizes
        record = pair.client.context.encrypt(b"x" * sizes.maximum_message)
        self.assertEqual(len(record), sizes.header + sizes.maximum_message + sizes.trailer)
        self.assertEqual(frame(record).ends, [len(record)])

    def test_the_group_is_one_of_the_allowed_ones(self) -> None:
        from txschannel.credentials import GROUPS

        pair = connected()
        group = pair.client.context.attributes.group
        allowed = {g.decode().lower() for g in GROUPS} | {"prime256v1", "secp256r1", "secp384r1"}
        self.assertIn((group or "").lower(), allowed)

    def test_per_connection_alpn_overrides_the_credentials(self) -> None:
        client = ClientContext(client_credentials(alpn=["http/1.1"]), NAME, alpn=("h2", "http/1.1"))
        server = ServerContext(server_credentials(alpn=["http/1.1"]), alpn=("h2",))
        pair = handshake(client, server)
        self.assertEqual(pair.client.context.attributes.alpn, "h2")
        self.assertEqual(pair.server.context.attributes.alpn, "h2")

    def test_a_server_without_alpn_ignores_the_clients_list(self) -> None:
        pair = handshake(ClientContext(client_credentials(alpn=["h2"]), NAME),
                         ServerContext(server_credentials()))
        self.assertIsNone(pair.client.context.attributes.alpn)

    def test_an_ip_address_target_is_checked_against_the_ip_san(self) -> None:
        pair = handshake(ClientContext(client_credentials(), "127.0.0.1"),
                         ServerContext(server_credentials()))
        self.assertEqual(pair.client_to_server(b"ip"), b"ip")
        side, error, _ = failure(ClientContext(client_credentials(), "127.0.0.2"),
                                 ServerContext(server_credentials()))
        self.assertEqual((side, error.status), ("client", Status.WRONG_PRINCIPAL))

    def test_target_names_are_compared_as_openssl_sees_them(self) -> None:
        # A trailing dot (RFC 6125 6.2.1) and an internationalised name in
        # any case and spelling match the certificate's A-label.
        leaf = authority().ca.issue_cert("xn--bcher-kva.example", key_type=trustme.KeyType.ECDSA)
        idn = Credentials.server(certificate=leaf.private_key_and_cert_chain_pem.bytes())
        for name, server in (("localhost.", server_credentials()), ("bücher.example", idn),
                             ("BÜCHER.example.", idn)):
            pair = handshake(ClientContext(client_credentials(), name), ServerContext(server))
            self.assertEqual(pair.client_to_server(b"ok"), b"ok", name)
        side, error, _ = failure(ClientContext(client_credentials(), "bucher.example"),
                                 ServerContext(idn))
        self.assertEqual((side, error.status), ("client", Status.WRONG_PRINCIPAL))
        self.assertRaises(ValueError, ClientContext, client_credentials(), "bad..name")

    def test_client_credentials_cannot_make_a_server_context(self) -> None:
        self.assertRaises(ValueError, ServerContext, client_credentials())
        self.assertRaises(ValueError, ClientContext, server_credentials(), NAME)

    def test_a_client_context_needs_a_target_name(self) -> None:
        error = self.assertRaises(ValueError, ClientContext, client_credentials())
        self.assertIn("target_name", str(error))
        ClientContext(client_credentials(manual_validation=True))

    def test_manual_validation_leaves_the_judgement_to_the_caller(self) -> None:
        # Untrusted issuer and the wrong name: the handshake still succeeds,
        # and the application sees the certificate to judge it.
        stranger = trustme.CA()
        client = ClientContext(
            Credentials.client(trust_roots=stranger.cert_pem.bytes(), manual_validation=True),
            "wrong.example",
        )
        pair = handshake(client, ServerContext(server_credentials()))
        peer = pair.client.context.attributes.peer_certificate
        self.assertIsNotNone(peer)


_PEM = Encoding.PEM


# -- status rules of the loop ------------------------------------------------


class LoopStatusTests(SynchronousTestCase):
    """CONTINUE_NEEDED, INCOMPLETE_MESSAGE and `missing`, call by call."""

    def test_first_initialize_returns_continue_needed_and_the_client_hello(self) -> None:
        step = ClientContext(client_credentials(), NAME).initialize()
        self.assertEqual(step.status, Status.CONTINUE_NEEDED)
        self.assertEqual(step.token[:1], b"\x16")  # a handshake record
        self.assertEqual(frame(step.token).ends, [len(step.token)])
        self.assertEqual((step.extra, step.missing), (b"", 0))

    def test_empty_input_after_the_first_call_is_incomplete_message(self) -> None:
        client = ClientContext(client_credentials(), NAME)
        client.initialize()
        step = client.initialize(b"")
        self.assertEqual((step.status, step.token, step.extra, step.missing),
                         (Status.INCOMPLETE_MESSAGE, b"", b"", 5))

    def test_server_given_nothing_asks_for_a_record_header(self) -> None:
        server = ServerContext(server_credentials())
        step = server.accept(b"")
        self.assertEqual((step.status, step.token, step.missing),
                         (Status.INCOMPLETE_MESSAGE, b"", 5))

    def test_a_partial_header_reports_the_header_bytes_missing(self) -> None:
        hello = ClientContext(client_credentials(), NAME).initialize().token
        server = ServerContext(server_credentials())
        for n in range(1, 5):
            step = server.accept(hello[:n])
            self.assertEqual((step.status, step.extra, step.missing),
                             (Status.INCOMPLETE_MESSAGE, hello[:n], 5 - n))

    def test_one_byte_at_a_time_reports_incomplete_message(self) -> None:
        """Feeding the ClientHello byte by byte: INCOMPLETE_MESSAGE with the
        exact count missing until the record is whole, then CONTINUE_NEEDED
        with the server's flight."""
        hello = ClientContext(client_credentials(), NAME).initialize().token
        length = int.from_bytes(hello[3:5], "big") + 5
        server = ServerContext(server_credentials())
        extra = b""
        for i in range(len(hello) - 1):
            step = server.accept(extra + hello[i : i + 1])
            extra = step.extra
            self.assertEqual(step.status, Status.INCOMPLETE_MESSAGE)
            self.assertEqual(step.token, b"")
            self.assertEqual(step.extra, hello[: i + 1])
            expected = 5 - (i + 1) if i + 1 < 5 else length - (i + 1)
            self.assertEqual(step.missing, expected, f"after {i + 1} bytes")
        step = server.accept(extra + hello[-1:])
        self.assertEqual(step.status, Status.CONTINUE_NEEDED)
        self.assertEqual((step.extra, step.missing), (b"", 0))
        self.assertEqual(step.token[:1], b"\x16")

    def check_one_byte_at_a_time_ends_like_whole_flights(self, version: str) -> None:
        def run(split: Callable[[bytes], Iterator[bytes]]) -> tuple[object, ...]:
            client = ClientContext(client_credentials(maximum_version=version), NAME)
            server = ServerContext(server_credentials(maximum_version=version))
            pair = handshake(client, server, split)
            statuses = [s.status for s in pair.client.steps + pair.server.steps]
            for side in (pair.client, pair.server):
                for step in side.steps:
                    if step.status is Status.INCOMPLETE_MESSAGE:
                        self.assertGreater(step.missing, 0)
                        self.assertTrue(step.extra)
            a = client.attributes
            return (
                a.protocol, a.cipher, a.alpn, statuses.count(Status.OK),
                pair.client_to_server(b"up"), pair.server_to_client(b"down"),
            )

        once = run(whole)
        self.assertEqual(run(bytewise), once)
        self.assertEqual(once[0], version)

    def test_one_byte_at_a_time_ends_like_whole_flights_tls13(self) -> None:
        self.check_one_byte_at_a_time_ends_like_whole_flights("TLSv1.3")

    def test_one_byte_at_a_time_ends_like_whole_flights_tls12(self) -> None:
        self.check_one_byte_at_a_time_ends_like_whole_flights("TLSv1.2")

    def test_established_context_returns_ok_and_gives_input_back(self) -> None:
        pair = connected()
        step = pair.client.context.initialize(b"abc")  # type: ignore[attr-defined]
        self.assertEqual((step.status, step.token, step.extra), (Status.OK, b"", b"abc"))

    def test_traffic_before_the_handshake_is_refused(self) -> None:
        client = ClientContext(client_credentials(), NAME)
        client.initialize()
        for call in (lambda: client.encrypt(b"x"), lambda: client.decrypt(b"x"),
                     lambda: client.attributes, lambda: client.channel_binding("tls-exporter")):
            error = self.assertRaises(SecurityError, call)
            self.assertEqual(error.status, Status.INVALID_HANDLE)
        self.assertEqual(client.shutdown(), b"")


class SplitPropertyTests(SynchronousTestCase):
    """Any split of the byte stream gives the same outcome and plaintext."""

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        seed=st.integers(0, 2**32 - 1),
        largest=st.sampled_from([1, 3, 7, 50, 300, 5000]),
        version=st.sampled_from(["TLSv1.2", "TLSv1.3"]),
        messages=st.lists(st.binary(min_size=1, max_size=40_000), min_size=1, max_size=4),
    )
    def test_any_split_gives_identical_plaintext_and_outcome(
        self, seed: int, largest: int, version: str, messages: list[bytes]
    ) -> None:
        split = random_chunks(seed, largest)
        client = ClientContext(client_credentials(maximum_version=version), NAME)
        server = ServerContext(server_credentials(maximum_version=version))
        pair = handshake(client, server, split)
        self.assertEqual(client.attributes.protocol, version)
        self.assertEqual(server.attributes.protocol, version)
        # The whole client stream after the handshake: app data, then
        # close_notify, then bytes that must come back untouched.
        stream = pair.to_server + b"".join(client.encrypt(m) for m in messages)
        stream += client.shutdown() + b"after"
        received, status, buffer = [], Status.OK, pair.server.extra
        for piece in split(stream):
            if status is Status.CONTEXT_EXPIRED:
                buffer += piece
                continue
            result = server.decrypt(buffer + piece)
            received.append(result.data)
            buffer, status = result.extra, result.status
            if result.status is Status.INCOMPLETE_MESSAGE:
                self.assertEqual(result.data, b"")
                self.assertGreater(result.missing, 0)
        self.assertEqual(status, Status.CONTEXT_EXPIRED)
        self.assertEqual(b"".join(received), b"".join(messages))
        self.assertEqual(buffer, b"after")


# -- early data in the same buffer -------------------------------------------


class ExtraTests(SynchronousTestCase):
    """Bytes after the handshake come back in `extra` for decrypt."""

    def test_client_finished_and_application_data_in_one_buffer(self) -> None:
        client = ClientContext(client_credentials(), NAME)
        server = ServerContext(server_credentials())
        hello = client.initialize().token
        flight = server.accept(hello)
        finished = client.initialize(flight.token)
        self.assertEqual(finished.status, Status.OK)  # TLS 1.3: client done first
        data = client.encrypt(b"GET / HTTP/1.1\r\n\r\n")
        step = server.accept(finished.token + data)
        self.assertEqual(step.status, Status.OK)
        self.assertEqual(step.extra, data)
        self.assertEqual(server.decrypt(step.extra).data, b"GET / HTTP/1.1\r\n\r\n")

    def test_resumed_tls12_client_finished_and_data_in_one_buffer(self) -> None:
        credentials = client_credentials(maximum_version="TLSv1.2")
        server_side = server_credentials()
        handshake(ClientContext(credentials, NAME), ServerContext(server_side))
        client = ClientContext(credentials, NAME)
        server = ServerContext(server_side)
        flight = server.accept(client.initialize().token)
        finished = client.initialize(flight.token)  # abbreviated: server spoke first
        self.assertEqual(finished.status, Status.OK)
        data = client.encrypt(b"early")
        step = server.accept(finished.token + data)
        self.assertEqual((step.status, step.extra), (Status.OK, data))
        self.assertEqual(server.decrypt(step.extra).data, b"early")
        self.assertTrue(server.attributes.session_reused)

    def test_session_tickets_and_data_in_one_decrypt(self) -> None:
        pair = connected(version="TLSv1.3")
        self.assertTrue(pair.to_client)  # the server's NewSessionTickets
        result = pair.client.context.decrypt(
            pair.client.extra + pair.to_client + pair.server.context.encrypt(b"hi"))
        self.assertEqual((result.status, result.data, result.extra), (Status.OK, b"hi", b""))

    def test_a_partial_record_comes_back_whole_in_extra(self) -> None:
        pair = connected()
        one = pair.to_server + pair.client.context.encrypt(b"one")
        records = one + pair.client.context.encrypt(b"two")
        cut = len(records) - 3
        result = pair.server.context.decrypt(records[:cut])
        self.assertEqual(result.data, b"one")
        self.assertEqual(result.status, Status.OK)
        self.assertEqual(result.missing, 3)
        self.assertEqual(result.extra, records[len(one) : cut])
        again = pair.server.context.decrypt(result.extra + records[cut:])
        self.assertEqual((again.data, again.extra, again.missing), (b"two", b"", 0))

    def test_decrypt_of_nothing_is_incomplete_message(self) -> None:
        pair = connected()
        result = pair.server.context.decrypt(b"")
        self.assertEqual((result.status, result.data, result.missing),
                         (Status.INCOMPLETE_MESSAGE, b"", 5))


# -- closing -----------------------------------------------------------------


# -- giving back buffer memory ------------------------------------------------------


def _bios(context: ClientContext | ServerContext) -> tuple[int, int]:
    """The addresses of the memory BIOs under *context*."""
    return bio_addresses(context.openssl_connection)


class ReleaseBuffersTests(SynchronousTestCase):
    """release_buffers() gives OpenSSL an empty pair of memory BIOs (the fast
    path), loses nothing, and refuses when it cannot."""

    def test_after_large_pieces_a_new_pair_carries_on(self) -> None:
        for version in ("TLSv1.2", "TLSv1.3"):
            pair = connected(version=version)
            # 64 KiB pieces both ways: each BIO held one of them at once.
            self.assertEqual(pair.client_to_server(b"a" * 65536), b"a" * 65536)
            self.assertEqual(pair.server_to_client(b"b" * 65536), b"b" * 65536)
            for side in (pair.client, pair.server):
                before = _bios(side.context)
                released = side.context.release_buffers()
                self.assertEqual(released, _openssl.FAST, version)
                after = _bios(side.context)
                # Both new ones are allocated before the old pair is freed:
                # different addresses mean different BIOs.
                self.assertEqual(len(set(before + after)), 4 if released else 2, version)
            # The new pair carries what follows, both ways.
            self.assertEqual(pair.client_to_server(b"ping"), b"ping")
            self.assertEqual(pair.server_to_client(b"pong"), b"pong")

    def test_nothing_is_released_before_the_handshake_after_delete_or_with_bytes_held(
        self,
    ) -> None:
        client = ClientContext(client_credentials(), NAME)
        self.assertFalse(client.release_buffers())
        pair = connected()
        server = pair.server.context
        # Bytes in a BIO would be lost with it: the pair is kept.
        connection = server.openssl_connection
        assert connection is not None
        before = _bios(server)
        connection.bio_write(b"\x17\x03\x03")
        self.assertFalse(server.release_buffers())
        self.assertEqual(_bios(server), before)
        server.delete()
        self.assertFalse(server.release_buffers())


class CloseTests(SynchronousTestCase):
    def test_close_notify_is_context_expired_with_data_before_it_intact(self) -> None:
        for version in ("TLSv1.2", "TLSv1.3"):
            pair = connected(version=version)
            client, server = pair.client.context, pair.server.context
            stream = pair.to_server + client.encrypt(b"last words") + client.shutdown()
            result = server.decrypt(stream + b"trailing junk")
            self.assertEqual(result.status, Status.CONTEXT_EXPIRED)
            self.assertEqual(result.data, b"last words")
            self.assertEqual(result.extra, b"trailing junk")
            # Later calls keep saying so and do not judge what follows.
            later = server.decrypt(b"\xff\xff")
            self.assertEqual((later.status, later.extra), (Status.CONTEXT_EXPIRED, b"\xff\xff"))
            # The server may still answer with its own close_notify.
            reply = client.decrypt(pair.client.extra + pair.to_client + server.shutdown())
            self.assertEqual(reply.status, Status.CONTEXT_EXPIRED)

    def test_encrypt_after_shutdown_is_context_expired(self) -> None:
        pair = connected()
        self.assertTrue(pair.client.context.shutdown())
        self.assertEqual(pair.client.context.shutdown(), b"")
        error = self.assertRaises(SecurityError, pair.client.context.encrypt, b"x")
        self.assertEqual(error.status, Status.CONTEXT_EXPIRED)

    def test_after_our_shutdown_the_peer_may_still_send(self) -> None:
        for version in ("TLSv1.2", "TLSv1.3"):
            pair = connected(version=version)
            client, server = pair.client.context, pair.server.context
            close = client.shutdown()
            late = server.encrypt(b"late data")
            reply = server.decrypt(pair.to_server + close)
            self.assertEqual(reply.status, Status.CONTEXT_EXPIRED)
            result = client.decrypt(pair.client.extra + pair.to_client + late + server.shutdown())
            self.assertEqual((result.status, result.data), (Status.CONTEXT_EXPIRED, b"late data"))

    def test_use_after_delete_is_invalid_handle(self) -> None:
        pair = connected()
        client = pair.client.context
        assert isinstance(client, ClientContext)
        client.delete()
        self.assertFalse(client.established)
        calls: list[Callable[[], object]] = [
            lambda: client.initialize(b""), lambda: client.encrypt(b"x"),
            lambda: client.decrypt(b"x"), client.shutdown, lambda: client.attributes,
            lambda: client.channel_binding("tls-exporter"),
        ]
        for call in calls:
            error = self.assertRaises(SecurityError, call)
            self.assertEqual(error.status, Status.INVALID_HANDLE)
            self.assertEqual(error.token, b"")
        server = ServerContext(server_credentials())
        server.delete()
        self.assertEqual(self.assertRaises(SecurityError, server.accept, b"").status,
                         Status.INVALID_HANDLE)

    def test_a_failed_context_is_dead(self) -> None:
        server = ServerContext(server_credentials())
        self.assertRaises(SecurityError, server.accept, b"GET / HTTP/1.1\r\n")
        error = self.assertRaises(SecurityError, server.accept, b"")
        self.assertEqual(error.status, Status.INVALID_HANDLE)


# -- resumption ----------------------------------------------------------------


class ResumptionTests(SynchronousTestCase):
    def check(self, version: str) -> None:
        credentials = client_credentials(maximum_version=version)
        server_side = server_credentials()
        first = handshake(ClientContext(credentials, NAME), ServerContext(server_side))
        self.assertFalse(first.client.context.attributes.session_reused)
        # TLS 1.3 tickets arrive after the handshake: decrypt absorbs them.
        first.server_to_client(b"tickets")
        second = handshake(ClientContext(credentials, NAME), ServerContext(server_side))
        self.assertTrue(second.client.context.attributes.session_reused)
        self.assertTrue(second.server.context.attributes.session_reused)
        # The server still knows which name the client asked for.
        self.assertEqual(second.server.context.attributes.server_name, NAME)
        self.assertEqual(second.client.context.attributes.protocol, version)
        self.assertEqual(second.client_to_server(b"again"), b"again")
        # Another target name does not get this session.
        other = handshake(ClientContext(credentials, "127.0.0.1"), ServerContext(server_side))
        self.assertFalse(other.client.context.attributes.session_reused)

    def test_tls12_session_resumption(self) -> None:
        self.check("TLSv1.2")

    def test_tls13_session_resumption(self) -> None:
        self.check("TLSv1.3")

    def test_dropping_a_context_without_shutdown_keeps_its_session(self) -> None:
        # OpenSSL would mark the session of a connection freed without
        # close_notify as not resumable; an established context is fine.
        for version in ("TLSv1.2", "TLSv1.3"):
            credentials = client_credentials(maximum_version=version)
            server_side = server_credentials()
            first = handshake(ClientContext(credentials, NAME), ServerContext(server_side))
            first.server_to_client(b"tickets")
            first.client.context.delete()
            del first
            second = handshake(ClientContext(credentials, NAME), ServerContext(server_side))
            self.assertTrue(second.client.context.attributes.session_reused, version)

    def test_tls_unique_of_a_resumed_tls12_session_agrees(self) -> None:
        # In an abbreviated handshake the server's Finished comes first.
        credentials = client_credentials(maximum_version="TLSv1.2")
        server_side = server_credentials()
        handshake(ClientContext(credentials, NAME), ServerContext(server_side))
        pair = handshake(ClientContext(credentials, NAME), ServerContext(server_side))
        client, server = pair.client.context, pair.server.context
        self.assertTrue(client.attributes.session_reused)
        self.assertEqual(client.channel_binding("tls-unique"), server.channel_binding("tls-unique"))

    def test_a_failed_handshake_forgets_the_session(self) -> None:
        credentials = client_credentials(maximum_version="TLSv1.2")
        handshake(ClientContext(credentials, NAME), ServerContext(server_credentials()))
        self.assertIsNotNone(credentials.sessions.get(NAME))
        side, error, pair = failure(ClientContext(credentials, NAME, alpn=("x",)),
                                    ServerContext(server_credentials(alpn=["y"])))
        self.assertEqual(side, "server")
        peer_error(pair.client, error.token)
        self.assertIsNone(credentials.sessions.get(NAME))


# -- failures between two contexts -------------------------------------------


_CERTIFICATE_STATUSES = (
    Status.WRONG_PRINCIPAL, Status.CERT_EXPIRED, Status.CERT_UNKNOWN, Status.UNTRUSTED_ROOT
)


class FailureTests(SynchronousTestCase):
    """Each failure raises its status, and the peer maps the alert it gets."""

    def check(self, client: ClientContext, server: ServerContext, side: str,
              status: Status, peer_status: Status | None) -> SecurityError:
        failed, error, pair = failure(client, server)
        self.assertEqual((failed, error.status), (side, status), error.reason)
        self.assertTrue(error.reason)
        self.assertTrue(error.token, "no alert to send")
        if peer_status is not None:
            other = pair.server if failed == "client" else pair.client
            seen = peer_error(other, error.token).status
            # The public path cannot choose the alert for a certificate it
            # refuses (docs/context.rst): the peer fails, on another status.
            if _openssl.FAST or error.status not in _CERTIFICATE_STATUSES:
                self.assertEqual(seen, peer_status)
        return error

    def test_wrong_host_is_wrong_principal(self) -> None:
        error = self.check(ClientContext(client_credentials(), "example.com"),
                           ServerContext(server_credentials()),
                           "client", Status.WRONG_PRINCIPAL, Status.CERT_UNKNOWN)
        self.assertIn("example.com", error.reason)
        self.assertIn("localhost", error.reason)

    def test_unknown_ca_is_untrusted_root(self) -> None:
        error = self.check(
            ClientContext(Credentials.client(trust_roots=authority("RSA").roots), NAME),
            ServerContext(server_credentials("ECDSA")),
            "client", Status.UNTRUSTED_ROOT, Status.UNTRUSTED_ROOT)
        self.assertIn("issuer", error.reason)

    def test_expired_certificate_is_cert_expired(self) -> None:
        error = self.check(ClientContext(client_credentials(), NAME),
                           ServerContext(Credentials.server(certificate=expired_pem())),
                           "client", Status.CERT_EXPIRED, Status.CERT_EXPIRED)
        self.assertIn("expired", error.reason)

    def test_not_yet_valid_certificate_is_cert_expired(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        leaf = authority().ca.issue_cert(NAME, not_before=now + datetime.timedelta(days=2),
                                         not_after=now + datetime.timedelta(days=30))
        server = Credentials.server(certificate=leaf.private_key_and_cert_chain_pem.bytes())
        error = self.check(ClientContext(client_credentials(), NAME), ServerContext(server),
                           "client", Status.CERT_EXPIRED, Status.CERT_UNKNOWN)
        self.assertIn("not yet valid", error.reason)

    def test_untrusted_self_signed_certificate_is_untrusted_root(self) -> None:
        error = self.check(ClientContext(client_credentials(), NAME),
                           ServerContext(Credentials.server(certificate=self_signed_pem())),
                           "client", Status.UNTRUSTED_ROOT, Status.UNTRUSTED_ROOT)
        self.assertIn("self-signed", error.reason)

    def test_a_self_signed_certificate_trusted_directly_is_accepted(self) -> None:
        pem = self_signed_pem()
        client = ClientContext(Credentials.client(trust_roots=pem), NAME)
        pair = handshake(client, ServerContext(Credentials.server(certificate=pem)))
        self.assertEqual(pair.client_to_server(b"pinned"), b"pinned")

    def test_no_common_version_is_algorithm_mismatch(self) -> None:
        self.check(ClientContext(client_credentials(minimum_version="TLSv1.3"), NAME),
                   ServerContext(server_credentials(maximum_version="TLSv1.2")),
                   "server", Status.ALGORITHM_MISMATCH, Status.ALGORITHM_MISMATCH)

    def test_no_common_alpn_is_application_protocol_mismatch(self) -> None:
        error = self.check(ClientContext(client_credentials(alpn=["h2"]), NAME),
                           ServerContext(server_credentials(alpn=["http/1.1"])),
                           "server", Status.APPLICATION_PROTOCOL_MISMATCH,
                           Status.APPLICATION_PROTOCOL_MISMATCH)
        self.assertIn("h2", error.reason)
        self.assertIn("http/1.1", error.reason)

    def test_required_client_certificate_missing_is_no_credentials(self) -> None:
        for version in ("TLSv1.2", "TLSv1.3"):
            server = ServerContext(server_credentials(
                client_ca=authority().roots, require_client_certificate=True,
                maximum_version=version))
            self.check(ClientContext(client_credentials(), NAME), server,
                       "server", Status.NO_CREDENTIALS, Status.NO_CREDENTIALS
                       if version == "TLSv1.3" else None)

    def test_client_certificate_from_an_unknown_ca_is_untrusted_root(self) -> None:
        stranger = authority("RSA")
        for version in ("TLSv1.2", "TLSv1.3"):
            server = ServerContext(server_credentials(client_ca=authority().roots,
                                                      maximum_version=version))
            client = ClientContext(client_credentials(certificate=stranger.client_pem), NAME)
            self.check(client, server, "server", Status.UNTRUSTED_ROOT, Status.UNTRUSTED_ROOT)

    def test_mutual_tls_gives_the_server_the_client_certificate(self) -> None:
        for version in ("TLSv1.2", "TLSv1.3"):
            server = ServerContext(server_credentials(
                client_ca=authority().roots, require_client_certificate=True,
                maximum_version=version))
            client = ClientContext(client_credentials(certificate=authority().client_pem), NAME)
            pair = handshake(client, server)
            peer = server.attributes.peer_certificate
            self.assertIsNotNone(peer)
            self.assertEqual(peer.public_bytes(_PEM),  # type: ignore[union-attr]
                             authority().client.cert_chain_pems[0].bytes())
            self.assertEqual(pair.client_to_server(b"mtls"), b"mtls")

    def test_optional_client_certificate_may_be_absent(self) -> None:
        server = ServerContext(server_credentials(client_ca=authority().roots))
        pair = handshake(ClientContext(client_credentials(), NAME), server)
        self.assertIsNone(server.attributes.peer_certificate)
        self.assertEqual(pair.client_to_server(b"anon"), b"anon")

    def test_plaintext_http_to_a_server_is_illegal_message(self) -> None:
        server = ServerContext(server_credentials())
        error = self.assertRaises(SecurityError, server.accept, b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(error.status, Status.ILLEGAL_MESSAGE)
        self.assertIn("not a TLS record", error.reason)
        # A client that is waiting for a ServerHello understands the alert.
        client = Side(ClientContext(client_credentials(), NAME))
        client.start()
        self.assertEqual(peer_error(client, error.token).status, Status.ILLEGAL_MESSAGE)

    def test_a_single_garbage_byte_fails_at_once(self) -> None:
        error = self.assertRaises(SecurityError, ServerContext(server_credentials()).accept, b"G")
        self.assertEqual(error.status, Status.ILLEGAL_MESSAGE)
        self.assertTrue(error.token)

    def check_tampered(self, version: str, offset: int) -> None:
        pair = connected(version=version)
        records = bytearray(pair.client.context.encrypt(b"attack at dawn"))
        records[offset] ^= 0x01
        error = self.assertRaises(SecurityError, pair.server.context.decrypt,
                                  pair.to_server + bytes(records))
        self.assertEqual(error.status, Status.MESSAGE_ALTERED, error.reason)
        self.assertTrue(error.token)
        # The alert is encrypted; the client decrypts it and maps it back.
        self.assertEqual(peer_error(pair.client, pair.to_client + error.token).status,
                         Status.MESSAGE_ALTERED)

    def test_tampered_ciphertext_is_message_altered(self) -> None:
        self.check_tampered("TLSv1.3", -1)
        self.check_tampered("TLSv1.3", 8)
        self.check_tampered("TLSv1.2", -1)

    def test_garbage_after_good_records_is_illegal_message(self) -> None:
        pair = connected(version="TLSv1.3")
        data = pair.to_server + pair.client.context.encrypt(b"fine") + b"\x00\x01garbage"
        error = self.assertRaises(SecurityError, pair.server.context.decrypt, data)
        self.assertEqual(error.status, Status.ILLEGAL_MESSAGE)
        self.assertTrue(error.token)
        # The alert is encrypted under the session keys: the client reads it.
        self.assertTrue(peer_error(pair.client, pair.to_client + error.token).status.is_error)

    def test_an_oversized_record_header_is_illegal_message(self) -> None:
        pair = connected(version="TLSv1.2")
        error = self.assertRaises(SecurityError, pair.server.context.decrypt,
                                  pair.to_server + b"\x17\x03\x03\xff\xff")
        self.assertEqual(error.status, Status.ILLEGAL_MESSAGE)
        self.assertIn("exceeds", error.reason)

    def test_errors_carry_no_internal_exception(self) -> None:
        # A transport keeps the error (in a Failure); a chained OpenSSL or
        # framing exception would keep its frames, and this context, alive.
        server = ServerContext(server_credentials())
        errors = [self.assertRaises(SecurityError, server.accept, b"GET / HTTP/1.1\r\n")]
        pair = connected()
        errors.append(self.assertRaises(SecurityError, pair.server.context.decrypt,
                                        pair.to_server + b"\x17\x03\x03\x00\x20" + b"x" * 32))
        _, error, _ = failure(ClientContext(client_credentials(), "example.com"),
                              ServerContext(server_credentials()))
        errors.append(error)
        for error in errors:
            self.assertIsNone(error.__context__)
            self.assertIsNone(error.__cause__)

    def test_security_error_describes_itself(self) -> None:
        error = SecurityError(Status.UNTRUSTED_ROOT, "why", b"\x15")
        self.assertEqual(str(error), "UNTRUSTED_ROOT: why")
        self.assertIn("1 bytes", repr(error))
        self.assertEqual(str(Status.CONTINUE_NEEDED), "CONTINUE_NEEDED (0x00090312)")
        self.assertEqual(Status.INCOMPLETE_MESSAGE.code, 0x80090318)
        self.assertTrue(Status.MESSAGE_ALTERED.is_error)
        self.assertFalse(Status.CONTEXT_EXPIRED.is_error)


class DocsExampleTests(SynchronousTestCase):
    def test_the_handshake_example_in_the_docs_runs(self) -> None:
        import os
        import subprocess
        import sys

        example = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "examples",
                               "handshake.py")
        result = subprocess.run([sys.executable, example], capture_output=True, timeout=60,
                                check=False)
        self.assertEqual(result.returncode, 0, result.stderr.decode(errors="replace"))
        lines = result.stdout.decode().splitlines()
        self.assertTrue(lines[0].startswith("client: TLSv1.3 "), lines)
        self.assertEqual(lines[1:], ["server got: b'hello, server'",
                                     "client got: b'hello, client'"])
