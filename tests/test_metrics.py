"""``twist schannel --status ENDPOINT``: ``/metrics`` and ``/status`` from a real process.

Clients are Python's ``ssl`` (one verified, one resuming, one refusing the
server's certificate) and curl scraping the figures; the Prometheus text
is read back with ``prometheus_client``'s own parser.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from tests.support.certs import encrypted_pem
from tests.support.edges import ECHO, Edge
from tests.support.peers import free_port
from tests.support.twist import Twist, assert_one_line, curl, run_twist


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class StatusTests(Edge):
    def start(self) -> tuple[Twist, int, int]:
        backend = self.backend(ECHO)
        status = free_port()
        port = free_port()
        twist = Twist(
            self,
            "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={self.folder}/server.pem",
            "--connect", f"tcp:127.0.0.1:{backend}",
            "--status", f"tcp:{status}:interface=127.0.0.1",
        )
        twist.wait_for("serving /metrics and /status on")
        twist.wait_for("listening on schannel")
        return twist, port, status

    def scrape(self, status: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        result = curl(f"http://127.0.0.1:{status}/metrics")
        self.assertEqual(result.returncode, 0, result.stderr)
        return samples(result.stdout.decode())

    def wait_for_sample(self, status: int, key: tuple[str, tuple[tuple[str, str], ...]],
                        value: float) -> dict[Any, float]:
        deadline = time.monotonic() + 20
        while True:
            found = self.scrape(status)
            if found.get(key) == value or time.monotonic() > deadline:
                self.assertEqual(found.get(key), value, found)
                return found
            time.sleep(0.1)

    def test_the_figures_follow_connections_handshakes_and_bytes(self) -> None:
        twist, port, status = self.start()
        before = self.scrape(status)
        self.assertEqual(before[("txschannel_connections_open", ())], 0)
        expiry = [
            (key, value) for key, value in before.items()
            if key[0] == "txschannel_certificate_expiry_timestamp_seconds"
        ]
        self.assertEqual(
            [dict(key[1]) for key, _ in expiry], [{"file": f"{self.folder}/server.pem"}]
        )
        self.assertGreater(expiry[0][1], time.time())

        context = self.client_context()
        context.maximum_version = ssl.TLSVersion.TLSv1_2  # a session to resume at once
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as first:
                first.sendall(b"hello")
                self.assertEqual(first.recv(5), b"hello")
                session = first.session
                found = self.wait_for_sample(status, ("txschannel_connections_open", ()), 1)
                self.assertEqual(found[("txschannel_connections_total", ())], 1)
                self.assertEqual(found[("txschannel_handshakes_total", (("status", "OK"),))], 1)
                self.assertEqual(found[("txschannel_handshake_seconds_count", ())], 1)
                self.assertEqual(found[("txschannel_bytes_total", (("direction", "in"),))], 5)
                self.assertEqual(found[("txschannel_bytes_total", (("direction", "out"),))], 5)
                first.unwrap()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            with context.wrap_socket(
                raw, server_hostname="localhost", session=session
            ) as second:
                self.assertTrue(second.session_reused)
                second.sendall(b"x")
                second.recv(1)
        self.wait_for_sample(status, ("txschannel_sessions_resumed_total", ()), 1)

        # A client that does not trust the certificate ends the handshake
        # with unknown_ca: the server counts UNTRUSTED_ROOT.
        untrusting = ssl.create_default_context()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            with self.assertRaises(ssl.SSLCertVerificationError):
                untrusting.wrap_socket(raw, server_hostname="localhost")
        found = self.wait_for_sample(
            status, ("txschannel_handshakes_total", (("status", "UNTRUSTED_ROOT"),)), 1
        )
        self.wait_for_sample(status, ("txschannel_connections_open", ()), 0)

        answer = curl(f"http://127.0.0.1:{status}/status")
        body = json.loads(answer.stdout)
        self.assertEqual(body["pid"], twist.process.pid)
        self.assertEqual(body["listening"], [f"127.0.0.1:{port}"])
        self.assertTrue(body["accepting"])
        self.assertEqual(body["metrics"]["txschannel_connections_total"], 3)
        self.assertEqual(body["metrics"]["txschannel_handshakes_total"],
                         {"OK": 2, "UNTRUSTED_ROOT": 1})
        self.assertEqual(body["certificates"][0]["file"], f"{self.folder}/server.pem")
        # Scrapes are not connections of the service, nor log lines.
        self.assertEqual(twist.output.count("] connection closed peer="), 3, twist.output)
        missing = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{status}/x")
        self.assertEqual(missing.stdout, b"404")


class BadStatusTests(SynchronousTestCase):
    def test_an_unparsable_endpoint_is_one_line(self) -> None:
        result = run_twist("--status", "nosuch:9090")
        assert_one_line(self, result, "--status 'nosuch:9090'")
        self.assertEqual(result.returncode, 64)


class CertificateFigureTests(SynchronousTestCase):
    """The expiry figure's ``file`` label is the certificate's path as it is."""

    def test_a_path_with_quotes_and_backslashes(self) -> None:
        from types import SimpleNamespace

        from txschannel import Credentials
        from txschannel.terminator.metrics import Metrics
        from txschannel.testing import CertificateAuthority

        folder = self.mktemp()
        os.makedirs(folder)
        # (A repr() of this path, as in error messages, would escape both.)
        path = os.path.abspath(os.path.join(folder, "o'neil\\site.pem"))
        CertificateAuthority().issue("localhost").write(path)
        endpoint = SimpleNamespace(credentials=Credentials.server(certificate=path))
        metrics = Metrics()
        metrics.note_certificates([("schannel:tcp:0", endpoint)])  # type: ignore[list-item]
        self.assertEqual([c["file"] for c in metrics.certificates], [path])
        labels = metrics.figures()["txschannel_certificate_expiry_timestamp_seconds"]
        self.assertEqual(list(labels), [path])


class StatusListenerTests(Edge):
    """The --status listener: loopback unless told, no key paths, and bounded."""

    def test_tcp_without_interface_listens_on_loopback_only(self) -> None:
        backend = self.backend(ECHO)
        status = free_port()
        twist, _ = self.twist(backend, "--status", f"tcp:{status}")
        twist.wait_for(rf"serving /metrics and /status on tcp:{status} at 127\.0\.0\.1:{status}\b")
        self.assertEqual(curl(f"http://127.0.0.1:{status}/metrics").returncode, 0)
        # Bound to every address, it would answer on 127.0.0.2 as well.
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", status), timeout=10).close()

    def test_tcp6_without_interface_listens_on_ipv6_loopback(self) -> None:
        backend = self.backend(ECHO)
        status = free_port("::1")
        twist, _ = self.twist(backend, "--status", f"tcp6:{status}")
        twist.wait_for(rf"serving /metrics and /status on tcp6:{status} at \[::1\]:{status}\b")
        self.assertEqual(curl(f"http://[::1]:{status}/metrics").returncode, 0)

    def test_an_interface_given_is_honoured(self) -> None:
        backend = self.backend(ECHO)
        status = free_port("127.0.0.2")
        twist, _ = self.twist(backend, "--status", f"tcp:{status}:interface=127.0.0.2")
        twist.wait_for(rf"serving /metrics and /status on .* at 127\.0\.0\.2:{status}\b")
        self.assertEqual(curl(f"http://127.0.0.2:{status}/metrics").returncode, 0)

    def test_a_status_endpoint_that_would_escape_loopback_is_refused(self) -> None:
        for description, needle in [
            ("haproxy:tcp:9", "reads no PROXY header"),
            ("schannel:haproxy:tcp:9", "reads no PROXY header"),
            ("tcp:9:interface=", "interface= is empty"),
        ]:
            assert_one_line(self, run_twist("--status", description), needle)

    def test_status_names_no_key_or_passphrase_file(self) -> None:
        issued = self.ca.issue("localhost", "127.0.0.1")
        certificate = self.folder / "cert.pem"
        certificate.write_bytes(issued.certificate_pem)
        key = self.folder / "secret-key.pem"
        key.write_bytes(encrypted_pem(issued, b"sesame").split(b"-----BEGIN CERTIFICATE")[0])
        passphrase = self.folder / "secret.pass"
        passphrase.write_bytes(b"sesame\n")
        backend = self.backend(ECHO)
        port, status = free_port(), free_port()
        twist = Twist(
            self, "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={certificate}"
            f":privateKey={key}:passphraseFile={passphrase}",
            "--connect", f"tcp:127.0.0.1:{backend}", "--status", f"tcp:{status}",
        )
        twist.wait_for("serving /metrics and /status on")
        with self.tls(port) as client:  # the key is the one served
            client.sendall(b"x")
            self.assertEqual(client.recv(1), b"x")
        for page in ("status", "metrics"):
            body = curl(f"http://127.0.0.1:{status}/{page}").stdout.decode()
            self.assertIn("txschannel_connections", body)
            self.assertNotIn(str(key), body)
            self.assertNotIn(str(passphrase), body)
            self.assertNotIn("privateKey", body)
            self.assertNotIn("passphraseFile", body)
        certificates = json.loads(curl(f"http://127.0.0.1:{status}/status").stdout)["certificates"]
        self.assertEqual(
            [(c["endpoint"], c["file"]) for c in certificates],
            [(f"schannel:tcp:{port}:interface=127.0.0.1", str(certificate))],
        )

    def test_idle_status_clients_cannot_starve_the_relay(self) -> None:
        backend = self.backend(ECHO)
        status = free_port()
        # 128 descriptors: 300 idle clients of the status port would take
        # them all, if it accepted them all.
        twist, port = self.twist(backend, "--status", f"tcp:{status}", limit_files=128)
        twist.wait_for("serving /metrics and /status on")
        idle = self.open_idle(status, 300)
        time.sleep(1.0)
        self.assert_relays(twist, port)
        # The first idle client was accepted at once: it is aborted when it
        # has sent no request within the status listener's 5 s.
        idle[0].setblocking(True)
        idle[0].settimeout(30)
        try:
            self.assertEqual(idle[0].recv(1), b"")
        except ConnectionResetError:
            pass
