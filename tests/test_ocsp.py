"""OCSP stapling: the ``schannel:`` server options ``ocspResponse=FILE`` and ``ocsp=auto``.

In ``twist schannel``, in ``twist web`` (any Twisted program reading
endpoint strings) and in process. ``openssl ocsp`` runs as the responder on
loopback; ``openssl s_client -status`` is the client that asks for the
staple and prints it.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import FailTest, SynchronousTestCase, TestCase

from tests.support.endpoints import ReplyFactory
from tests.support.ocsp import NOW, PKI, Responder
from tests.support.peers import Peer, free_port, require
from tests.support.twist import Twist, assert_one_line, run_twist, wait_listening, workers_started
from txschannel.endpoints import SchannelServerEndpoint
from txschannel.ocsp import Stapler, refused_address
from txschannel.testing import CertificateAuthority


def staple(port: int, ca: Path, server_name: str = "localhost",
           certificate: x509.Certificate | None = None) -> str:
    """What ``openssl s_client -status`` says about the staple of the server on *port*.

    With *certificate*: "other" when the staple is about another one.
    """
    result = subprocess.run(
        [require("openssl"), "s_client", "-connect", f"127.0.0.1:{port}",
         "-servername", server_name, "-status", "-CAfile", str(ca)],
        input=b"", capture_output=True, timeout=30,
    )
    output = result.stdout.decode(errors="replace")
    if "OCSP response: no response sent" in output:
        return "none"
    if "OCSP Response Status: successful" not in output:
        return "unreadable:\n" + output + result.stderr.decode(errors="replace")
    if certificate is not None:
        serial = f"{certificate.serial_number:X}"
        if f"Serial Number: {'0' * (len(serial) % 2)}{serial}" not in output:
            return "other:\n" + output
    for state in ("good", "revoked", "unknown"):
        if f"Cert Status: {state}" in output:
            return state
    return "no status:\n" + output


class LogLines:
    """The txschannel log lines of this process, as text, while a test runs."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self)
        test.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "txschannel":
            self.lines.append(formatEvent(event))

    @inlineCallbacks
    def wait_for(self, pattern: str, timeout: float = 15.0) -> Any:
        """The first line matching *pattern*; fails after *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if re.search(pattern, line):
                    return line
            if time.monotonic() > deadline:
                raise FailTest(f"no log line matching {pattern!r} within {timeout} s:\n"
                               + "\n".join(self.lines))
            yield deferLater(reactor, 0.05, lambda: None)


class StaplingTests(TestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-ocsp-"))
        self.responder_port = free_port()
        self.pki = PKI(self.folder, self.responder_port)

    def start_responder(self) -> Peer:
        responder = Peer([
            require("openssl"), "ocsp", "-index", str(self.pki.index),
            # (openssl ocsp takes a port only; it is only ever reached on loopback.)
            "-port", str(self.responder_port), "-rsigner", str(self.pki.ca_file),
            "-rkey", str(self.pki.ca_key_file), "-CA", str(self.pki.ca_file), "-ndays", "1",
        ], stdin=subprocess.DEVNULL)
        self.addCleanup(responder.stop)
        # A bare connection (wait_for_port) wedges openssl ocsp: ask it a
        # real question instead, until it answers.
        request = ocsp.OCSPRequestBuilder().add_certificate(
            self.pki.leaf, self.pki.ca, hashes.SHA1()
        ).build().public_bytes(serialization.Encoding.DER)
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{self.responder_port}/", data=request,
                    headers={"Content-Type": "application/ocsp-request"},
                ), timeout=2) as answer:
                    if answer.status == 200:
                        return responder
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def twist(self, option: str, command: str = "schannel") -> tuple[Twist, int]:
        """``twist COMMAND --listen`` a schannel: endpoint with *option*, listening."""
        port = free_port()
        listen = (
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={self.pki.server_file}:{option}"
        )
        if command == "web":
            twist = Twist(self, "--listen", listen, "--path", str(self.folder), command="web")
            twist.wait_for(rf"starting on {port}")
        else:
            twist = Twist(self, "--listen", listen)
            twist.wait_for("listening on")
        return twist, port

    def endpoint(self, option: str) -> tuple[SchannelServerEndpoint, Stapler]:
        """A schannel: server endpoint with *option*, from serverFromString, and its stapler."""
        endpoint = serverFromString(
            reactor,
            f"schannel:tcp:0:interface=127.0.0.1:certificate={self.pki.server_file}:{option}",
        )
        assert isinstance(endpoint, SchannelServerEndpoint)
        assert endpoint.stapler is not None
        return endpoint, endpoint.stapler

    def write_response(self, status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD) -> Path:
        response = self.folder / "server.ocsp"
        response.write_bytes(self.pki.response(status))
        return response

    def test_auto_fetches_from_the_responder_and_keeps_it_when_the_responder_fails(self) -> None:
        responder = self.start_responder()
        twist, port = self.twist("ocsp=auto:ocspAllowPrivate=yes")
        twist.wait_for(
            rf"OCSP \(start\): fetched from http://127\.0\.0\.1:{self.responder_port}/ for "
            r"schannel:tcp:\d+.*: good, this update .*; refreshing in \d+ s"
        )
        self.assertEqual(staple(port, self.pki.ca_file), "good")
        responder.stop()
        mark = len(twist.output)
        twist.send_signal(signal.SIGHUP)
        twist.wait_for(r"OCSP \(SIGHUP\): fetching from .* failed: .*; keeping the last good "
                       r"response \(valid until .*\); retrying in 30 s", start=mark)
        self.assertEqual(staple(port, self.pki.ca_file), "good")

    def test_a_response_file_is_stapled_and_reloaded_with_the_certificates(self) -> None:
        response = self.write_response()
        twist, port = self.twist(f"ocspResponse={response}")
        self.assertEqual(staple(port, self.pki.ca_file), "good")
        # Replaced by renaming, as for certificates; then SIGHUP.
        fresh = self.folder / "fresh.ocsp"
        fresh.write_bytes(self.pki.response(ocsp.OCSPCertStatus.REVOKED))
        os.replace(fresh, response)
        twist.send_signal(signal.SIGHUP)
        twist.wait_for(rf"SIGHUP: stapling {response} for ")
        self.assertEqual(staple(port, self.pki.ca_file), "revoked")
        # A file that no longer fits is logged; the previous response stays.
        response.write_bytes(b"not DER")
        mark = len(twist.output)
        twist.send_signal(signal.SIGHUP)
        twist.wait_for(r"is not a DER OCSP response .*; keeping the previous response",
                       start=mark)
        self.assertEqual(staple(port, self.pki.ca_file), "revoked")

    def test_workers_staple_and_the_next_generation_staples_the_reloaded_file(self) -> None:
        # The supervisor reloads the credentials the next workers serve:
        # they must still take the stapler (an OpenSSL context that made a
        # connection cannot take a new callback).
        response = self.write_response()
        port = free_port()
        twist = Twist(
            self, "--workers", "2", "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={self.pki.server_file}:"
            f"ocspResponse={response}",
            group=True,
        )
        old = workers_started(twist, 2)
        wait_listening(twist, 2)
        self.assertEqual(staple(port, self.pki.ca_file), "good")
        fresh = self.folder / "fresh.ocsp"
        fresh.write_bytes(self.pki.response(ocsp.OCSPCertStatus.REVOKED))
        os.replace(fresh, response)
        twist.send_signal(signal.SIGHUP)
        workers_started(twist, 2, generation=2)
        wait_listening(twist, 4)
        for pid in old:
            twist.wait_for(rf"worker {pid} stopped")
        self.assertEqual(staple(port, self.pki.ca_file), "revoked")

    def test_auto_staples_each_certificate_of_an_sni_folder_and_new_ones_after_a_reload(
        self,
    ) -> None:
        folder = self.folder / "sni"
        folder.mkdir()
        alpha = self.pki.issue("alpha.test", folder / "alpha.test.pem")
        beta = self.pki.issue("beta.test", folder / "beta.test.pem")
        # Indexed now, before the responder reads the index; served after a reload.
        gamma = self.pki.issue("gamma.test", self.folder / "gamma.test.pem")
        self.start_responder()
        twist, port = self.twist(f"sni={folder}:ocsp=auto:ocspAllowPrivate=yes")
        for host in ("", r" \(alpha\.test\)", r" \(beta\.test\)"):
            twist.wait_for(rf"OCSP \(start\): fetched from \S+ for schannel:\S+{host}: good")
        for name, leaf in (("localhost", self.pki.leaf), ("alpha.test", alpha),
                           ("beta.test", beta), ("unknown.test", self.pki.leaf)):
            self.assertEqual(staple(port, self.pki.ca_file, name, leaf), "good", name)
        os.replace(self.folder / "gamma.test.pem", folder / "gamma.test.pem")
        twist.send_signal(signal.SIGHUP)
        twist.wait_for(r"OCSP \(start\): fetched from \S+ for schannel:\S+ \(gamma\.test\): good")
        self.assertEqual(staple(port, self.pki.ca_file, "gamma.test", gamma), "good")
        self.assertEqual(staple(port, self.pki.ca_file, "alpha.test", alpha), "good")

    def test_twist_web_staples_the_response_file_of_its_listen_string(self) -> None:
        response = self.write_response()
        _, port = self.twist(f"ocspResponse={response}", command="web")
        self.assertEqual(staple(port, self.pki.ca_file), "good")

    def test_twist_web_fetches_with_ocsp_auto(self) -> None:
        self.start_responder()
        twist, port = self.twist("ocsp=auto:ocspAllowPrivate=yes", command="web")
        twist.wait_for(
            rf"OCSP \(start\): fetched from http://127\.0\.0\.1:{self.responder_port}/ for "
            rf"schannel:tcp:{port}:interface=127\.0\.0\.1:certificate=\S+: good"
        )
        self.assertEqual(staple(port, self.pki.ca_file), "good")

    @inlineCallbacks
    def test_an_endpoint_staples_while_any_of_its_ports_listens(self) -> Any:
        endpoint, stapler = self.endpoint(f"ocspResponse={self.write_response()}")
        self.assertFalse(stapler.running)
        factory = ReplyFactory()
        first = yield endpoint.listen(factory)
        second = yield endpoint.listen(factory)
        self.assertTrue(stapler.running)
        for port in (first, second):
            said = yield deferToThread(staple, port.getHost().port, self.pki.ca_file)
            self.assertEqual(said, "good")
        for protocol in factory.protocols:
            yield protocol.lost
        yield first.stopListening()
        self.assertTrue(stapler.running, "the second port still listens")
        yield second.stopListening()
        self.assertFalse(stapler.running)

    @inlineCallbacks
    def test_an_endpoint_with_ocsp_auto_fetches_and_its_port_stopping_ends_the_refresh(
        self,
    ) -> Any:
        self.start_responder()
        endpoint, stapler = self.endpoint("ocsp=auto:ocspAllowPrivate=yes")
        factory = ReplyFactory()
        port = yield endpoint.listen(factory)
        deadline = reactor.seconds() + 15
        while not stapler.response:
            if reactor.seconds() > deadline:
                raise FailTest("no OCSP response fetched within 15 s")
            yield deferLater(reactor, 0.05, lambda: None)
        said = yield deferToThread(staple, port.getHost().port, self.pki.ca_file)
        self.assertEqual(said, "good")
        for protocol in factory.protocols:
            yield protocol.lost

        def refreshes() -> list[Any]:
            return [call for call in reactor.getDelayedCalls()
                    if getattr(call.func, "__self__", None) is stapler]

        self.assertEqual(len(refreshes()), 1)
        yield port.stopListening()
        self.assertFalse(stapler.running)
        self.assertEqual(refreshes(), [])


class BadStaplingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-ocsp-"))
        self.pki = PKI(self.folder, free_port())

    def refused(self, listen: str, needle: str) -> None:
        result = run_twist("--listen", listen)
        assert_one_line(self, result, needle)
        self.assertEqual(result.returncode, 64)

    def test_a_response_about_another_certificate(self) -> None:
        (self.folder / "other").mkdir()
        other = PKI(self.folder / "other", 1)
        response = self.folder / "other.ocsp"
        response.write_bytes(other.response(ocsp.OCSPCertStatus.GOOD))
        self.refused(
            f"schannel:tcp:0:certificate={self.pki.server_file}:ocspResponse={response}",
            f"ocspResponse file '{response}' is refused for the certificate in "
            f"'{self.pki.server_file}': it is about serial number",
        )

    def test_a_response_file_that_does_not_verify(self) -> None:
        response = self.folder / "forged.ocsp"
        for forged, reason in [
            (self.pki.forged(),
             "its signature does not verify with the key of the issuer"),
            (self.pki.response(this_update=NOW - datetime.timedelta(days=2),
                               next_update=NOW - datetime.timedelta(days=1)),
             "it has expired (nextUpdate "),
            (self.pki.response(issuer=self.pki.impostor()[0]), "its issuer key hash is not"),
        ]:
            response.write_bytes(forged)
            self.refused(
                f"schannel:tcp:0:certificate={self.pki.server_file}:ocspResponse={response}",
                f"ocspResponse file '{response}' is refused for the certificate in "
                f"'{self.pki.server_file}': {reason}",
            )

    def test_a_response_file_needs_the_issuer(self) -> None:
        # Only the leaf and its key: the response cannot be verified.
        alone = self.folder / "alone.pem"
        certificates = x509.load_pem_x509_certificates(self.pki.server_file.read_bytes())
        key = self.pki.server_file.read_bytes().split(b"-----END PRIVATE KEY-----")[0]
        alone.write_bytes(key + b"-----END PRIVATE KEY-----\n"
                          + certificates[0].public_bytes(serialization.Encoding.PEM))
        response = self.folder / "server.ocsp"
        response.write_bytes(self.pki.response())
        self.refused(
            f"schannel:tcp:0:certificate={alone}:ocspResponse={response}",
            f"ocspResponse: the issuer of the certificate in '{alone}' is in neither that "
            "file nor chain=",
        )

    def test_forms(self) -> None:
        server = self.pki.server_file
        self.refused(f"schannel:tcp:0:certificate={server}:ocsp=yes", "the only value is auto")
        self.refused("tcp:0:ocsp=auto", "need a schannel: endpoint")
        self.refused(
            f"schannel:tcp:0:certificate={server}:ocsp=auto:ocspResponse={server}",
            "not both",
        )
        self.refused(f"schannel:tcp:0:certificate={server}:ocspResponse=/nonexistent.der",
                     "/nonexistent.der")
        state = tempfile.mkdtemp()
        result = run_twist("--listen", "schannel:tcp:0:ocsp=auto", "--state-dir", state)
        assert_one_line(self, result, "names no OCSP responder")

    def sni_without_responder(self) -> Path:
        """An sni folder whose certificate names no OCSP responder."""
        folder = self.folder / "sni"
        folder.mkdir()
        CertificateAuthority().issue("nohost.test").write(folder / "nohost.test.pem")
        return folder

    def test_the_endpoint_parser_names_the_option(self) -> None:
        server = self.pki.server_file
        for option, needle in [
            ("ocsp=yes", "schannel: ocsp='yes': the only value is auto"),
            (f"ocsp=auto:ocspResponse={server}", "schannel: give ocspResponse=FILE or ocsp=auto"),
            ("ocspResponse=/nonexistent.der", "ocspResponse file '/nonexistent.der'"),
            (f"sni={self.folder}:ocspResponse={server}", "with an sni= folder use ocsp=auto"),
            ("ocspAllowPrivate=yes", "schannel: ocspAllowPrivate= only applies to ocsp=auto"),
            ("ocsp=auto:ocspAllowPrivate=maybe", "schannel: ocspAllowPrivate=maybe: expected "
             "yes or no"),
            (f"sni={self.sni_without_responder()}:ocsp=auto",
             "nohost.test.pem' names no OCSP responder"),
        ]:
            with self.assertRaises(ValueError) as caught:
                serverFromString(reactor, f"schannel:tcp:0:certificate={server}:{option}")
            self.assertIn(needle, str(caught.exception))


    def test_a_file_that_is_not_der_is_described_in_words(self) -> None:
        server = self.pki.server_file
        for content, needle in [
            (b"junk", "first byte 0x6a, not 0x30"),
            (b"", "it is empty"),
            (b"-----BEGIN OCSP RESPONSE-----\n", "it is PEM text"),
            (b"\x30\x03\x02\x01\x00", "its DER structure is not an OCSPResponse"),
        ]:
            junk = self.folder / "junk.der"
            junk.write_bytes(content)
            with self.assertRaises(ValueError) as caught:
                serverFromString(
                    reactor, f"schannel:tcp:0:certificate={server}:ocspResponse={junk}"
                )
            message = str(caught.exception)
            self.assertIn(str(junk), message)
            self.assertIn(needle, message)
            # cryptography's own wording names Rust types: not for users.
            self.assertNotIn("ParseError", message)


@inlineCallbacks
def fetch_and_staple(log: LogLines, pki: PKI, options: str) -> Any:
    """Listen on loopback with *pki*'s certificate and *options* (``ocsp=auto``
    ...) until the first fetch is logged, then ask ``openssl s_client
    -status`` what is stapled: (the fetch's log line, the staple's status)."""
    endpoint = serverFromString(
        reactor, f"schannel:tcp:0:interface=127.0.0.1:certificate={pki.server_file}:{options}",
    )
    assert isinstance(endpoint, SchannelServerEndpoint)
    factory = ReplyFactory()
    port = yield endpoint.listen(factory)
    try:
        line = yield log.wait_for(r"OCSP \(start\): fetch")
        said = yield deferToThread(staple, port.getHost().port, pki.ca_file)
        for protocol in factory.protocols:
            yield protocol.lost
    finally:
        yield port.stopListening()
    return line, said


class ForgedResponseTests(TestCase):
    """``ocsp=auto`` staples what its responder answers only once it verifies.

    The responder (on loopback, so with ``ocspAllowPrivate=yes``) answers
    a response forged one way or another; the endpoint logs one line saying
    why it refuses it, naming the certificate file, and ``openssl s_client
    -status`` is sent no staple.
    """

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-ocsp-"))
        self.responder = Responder()
        self.addCleanup(self.responder.stop)
        self.pki = PKI(self.folder, self.responder.port)
        self.log = LogLines(self)

    def fetch(self, body: bytes, option: str = "ocspAllowPrivate=yes") -> Any:
        """Serve with ocsp=auto while the responder answers *body*: (log line, staple)."""
        self.responder.body = body
        return fetch_and_staple(self.log, self.pki, f"ocsp=auto:{option}")

    @inlineCallbacks
    def refused(self, body: bytes, reason: str) -> Any:
        line, said = yield self.fetch(body)
        self.assertEqual(said, "none")
        self.assertIn(f"failed: refused its response for the certificate in "
                      f"'{self.pki.server_file}': {reason}", line)
        self.assertIn("; no response to staple; retrying in 30 s", line)
        self.assertNotIn("\n", line)

    @inlineCallbacks
    def test_a_correct_response_is_stapled(self) -> Any:
        line, said = yield self.fetch(self.pki.response())
        self.assertIn("fetched from", line)
        self.assertEqual(said, "good")

    @inlineCallbacks
    def test_a_correct_delegated_response_is_stapled(self) -> Any:
        signer, key = self.pki.delegate()
        line, said = yield self.fetch(self.pki.response(responder=signer, key=key))
        self.assertIn("fetched from", line)
        self.assertEqual(said, "good")

    def test_signed_by_another_key(self) -> Any:
        return self.refused(
            self.pki.forged(),
            "its signature does not verify with the key of the issuer "
            "(CN=txschannel OCSP test CA)",
        )

    def test_about_another_serial_number(self) -> Any:
        other = self.pki.issue("other.test", self.folder / "other.pem")
        return self.refused(self.pki.response(certificate=other),
                            f"it is about serial number {other.serial_number:x}, not the "
                            f"certificate's ({self.pki.leaf.serial_number:x})")

    def test_about_another_issuer_of_the_same_name(self) -> Any:
        return self.refused(
            self.pki.response(issuer=self.pki.impostor()[0]),
            "its issuer key hash is not that of the key of CN=txschannel OCSP test CA",
        )

    def test_past_its_next_update(self) -> Any:
        return self.refused(
            self.pki.response(this_update=NOW - datetime.timedelta(days=2),
                              next_update=NOW - datetime.timedelta(days=1)),
            "it has expired (nextUpdate ",
        )

    def test_this_update_in_the_future(self) -> Any:
        return self.refused(
            self.pki.response(this_update=NOW + datetime.timedelta(hours=1),
                              next_update=NOW + datetime.timedelta(days=1)),
            "its thisUpdate (",
        )

    def test_a_delegated_responder_without_the_ocsp_signing_usage(self) -> Any:
        signer, key = self.pki.delegate(ocsp_signing=False)
        return self.refused(
            self.pki.response(responder=signer, key=key),
            "its delegated responder (CN=OCSP signer) lacks the OCSP-signing extended key "
            "usage",
        )

    def test_a_delegated_responder_not_issued_by_the_issuer(self) -> Any:
        signer, key = self.pki.delegate(by=ec.generate_private_key(ec.SECP256R1()))
        return self.refused(
            self.pki.response(responder=signer, key=key),
            "its delegated responder (CN=OCSP signer) is not issued by the certificate's "
            "issuer",
        )

    def test_status_unknown(self) -> Any:
        return self.refused(self.pki.response(ocsp.OCSPCertStatus.UNKNOWN),
                            "the responder does not know the certificate (status unknown)")

    @inlineCallbacks
    def test_an_answer_over_64_kib(self) -> Any:
        line, said = yield self.fetch(b"0" * (64 * 1024 + 1))
        self.assertIn("failed: the answer is over 65536 bytes", line)
        self.assertEqual(said, "none")


class ResponderAddressTests(TestCase):
    """``ocsp=auto`` connects to no loopback or private responder without ocspAllowPrivate."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-ocsp-"))
        self.responder = Responder()
        self.addCleanup(self.responder.stop)

    def test_a_loopback_responder_is_refused_and_never_reached(self) -> None:
        pki = PKI(self.folder, self.responder.port)
        self.responder.body = pki.response()
        port = free_port()
        twist = Twist(self, "--listen", f"schannel:tcp:{port}:interface=127.0.0.1:"
                      f"certificate={pki.server_file}:ocsp=auto")
        line = twist.wait_for(r"OCSP \(start\): fetch.*").group(0)
        self.assertEqual(self.responder.connections, 0)
        self.assertIn(
            f"failed: refused the responder of the certificate in '{pki.server_file}': "
            "127.0.0.1, a loopback address (ocspAllowPrivate=yes allows private responders); "
            "no response to staple", line)
        self.assertEqual(staple(port, pki.ca_file), "none")
        self.assertEqual(self.responder.connections, 0)

    def test_the_unspecified_address_is_refused_in_good_english(self) -> None:
        # 0.0.0.0 reaches the machine itself; the line once said "a unspecified".
        pki = PKI(self.folder, self.responder.port,
                  url=f"http://0.0.0.0:{self.responder.port}/")
        self.responder.body = pki.response()
        port = free_port()
        twist = Twist(self, "--listen", f"schannel:tcp:{port}:interface=127.0.0.1:"
                      f"certificate={pki.server_file}:ocsp=auto")
        line = twist.wait_for(r"OCSP \(start\): fetch.*").group(0)
        self.assertIn("0.0.0.0, an unspecified address (ocspAllowPrivate=yes", line)
        self.assertEqual(self.responder.connections, 0)

    def fetch_from_localhost(self, options: str) -> Any:
        """:func:`fetch_and_staple` with a responder named ``localhost``."""
        pki = PKI(self.folder, self.responder.port,
                  url=f"http://localhost:{self.responder.port}/")
        self.responder.body = pki.response()
        return fetch_and_staple(LogLines(self), pki, options)

    @inlineCallbacks
    def test_a_name_that_resolves_to_loopback_is_refused_and_never_reached(self) -> Any:
        line, said = yield self.fetch_from_localhost("ocsp=auto")
        self.assertRegex(line, r"failed: refused the responder of the certificate in '.*': "
                         r"localhost resolves to (127\.0\.0\.1|::1), a loopback address")
        self.assertEqual(said, "none")
        # (The count only grows: none after the staple means none before.)
        self.assertEqual(self.responder.connections, 0)

    @inlineCallbacks
    def test_ocsp_allow_private_lets_it_fetch_from_a_name_on_loopback(self) -> Any:
        line, said = yield self.fetch_from_localhost("ocsp=auto:ocspAllowPrivate=yes")
        self.assertIn("fetched from http://localhost:", line)
        self.assertEqual(said, "good")

    def test_the_addresses_refused(self) -> None:
        for address, kind in [
            ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
            ("0.0.0.0", "unspecified"), ("::", "unspecified"),
            ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
            ("100.64.0.1", "private"), ("fc00::1", "private"), ("fd12::1", "private"),
            ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
            ("fe80::1%lo", "link-local"),
            ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback (written as IPv6)"),
            ("::ffff:10.0.0.1", "private (written as IPv6)"),
            ("::ffff:169.254.169.254", "link-local (written as IPv6)"),
            ("2002:7f00:1::1", "loopback (written as IPv6)"),
            ("64:ff9b::a00:1", "private (written as IPv6)"),
            ("::127.0.0.1", "loopback (written as IPv6)"),
            ("8.8.8.8", None), ("2001:4860:4860::8888", None),
        ]:
            self.assertEqual(refused_address(address), kind, address)

    def test_only_http_responders(self) -> None:
        for url, needle in [
            ("https://ocsp.example.test/", "only http:// responders are fetched"),
            ("ldap://ocsp.example.test/", "only http:// responders are fetched"),
            ("http:///nohost", "names no host"),
        ]:
            folder = Path(tempfile.mkdtemp(prefix="txschannel-ocsp-"))
            pki = PKI(folder, 1, url=url)
            with self.assertRaises(ValueError) as caught:
                serverFromString(reactor, f"schannel:tcp:0:certificate={pki.server_file}:"
                                 "ocsp=auto")
            self.assertIn(f"the certificate in '{pki.server_file}': responder URL",
                          str(caught.exception))
            self.assertIn(needle, str(caught.exception))


class DeadlineTests(TestCase):
    """A fetch has one deadline: a responder that dribbles its answer is cut off."""

    @inlineCallbacks
    def test_a_dribbling_responders_connection_is_closed_at_the_deadline(self) -> Any:
        import txschannel.ocsp

        self.patch(txschannel.ocsp, "FETCH_TIMEOUT", 1.0)
        folder = Path(tempfile.mkdtemp(prefix="txschannel-ocsp-"))
        responder = Responder()
        self.addCleanup(responder.stop)
        responder.dribble = True
        pki = PKI(folder, responder.port)
        log = LogLines(self)
        endpoint = serverFromString(
            reactor, f"schannel:tcp:0:interface=127.0.0.1:certificate={pki.server_file}:"
            "ocsp=auto:ocspAllowPrivate=yes",
        )
        port = yield endpoint.listen(ReplyFactory())
        self.addCleanup(port.stopListening)
        line = yield log.wait_for(r"OCSP \(start\): fetch")
        self.assertEqual(responder.connections, 1)
        # The responder sees its client go at its next byte (0.1 s).
        deadline = time.monotonic() + 10
        while responder.open:
            if time.monotonic() > deadline:
                raise FailTest("the dribbling responder's connection is still open 10 s "
                               "after the fetch's deadline")
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertIn("failed: no complete answer within 1 s", line)


class KeyTypeTests(SynchronousTestCase):
    """verify() checks signatures of RSA, ECDSA and Ed25519 issuers alike."""

    def check(self, ca_key: Any, other_key: Any) -> None:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        from txschannel.ocsp import OCSPError, verify

        algorithm = None if isinstance(ca_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA")])

        def certificate(subject: x509.Name, key: Any, signer: Any) -> x509.Certificate:
            return (
                x509.CertificateBuilder().subject_name(subject).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(NOW - datetime.timedelta(hours=1))
                .not_valid_after(NOW + datetime.timedelta(days=1))
                .sign(signer, algorithm)
            )

        ca = certificate(name, ca_key, ca_key)
        leaf = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]),
                           other_key, ca_key)
        impostor = certificate(name, other_key, other_key)

        def response(responder: x509.Certificate, key: Any) -> bytes:
            return ocsp.OCSPResponseBuilder().add_response(
                cert=leaf, issuer=ca, algorithm=hashes.SHA256(),
                cert_status=ocsp.OCSPCertStatus.GOOD,
                this_update=NOW - datetime.timedelta(minutes=1),
                next_update=NOW + datetime.timedelta(hours=1),
                revocation_time=None, revocation_reason=None,
            ).responder_id(ocsp.OCSPResponderEncoding.NAME, responder).sign(
                key, algorithm).public_bytes(serialization.Encoding.DER)

        good = verify(response(ca, ca_key), leaf, ca)
        self.assertEqual(good.certificate_status, ocsp.OCSPCertStatus.GOOD)
        with self.assertRaises(OCSPError) as caught:
            verify(response(impostor, other_key), leaf, ca)
        self.assertIn("its signature does not verify with the key of the issuer",
                      str(caught.exception))

    def test_rsa(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.check(rsa.generate_private_key(65537, 2048), rsa.generate_private_key(65537, 2048))

    def test_ecdsa_p384(self) -> None:
        self.check(ec.generate_private_key(ec.SECP384R1()),
                   ec.generate_private_key(ec.SECP384R1()))

    def test_ed25519(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        self.check(ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate())
