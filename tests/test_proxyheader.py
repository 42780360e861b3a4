"""``twist schannel --proxy-protocol v1|v2``: the backend learns who the client is.

The backends are real parsers: Twisted's own ``haproxy:`` server endpoint,
run as a separate process, which reports the client address it was told;
and a raw socket that records the header's bytes, for a byte-level check
of the version 2 TLVs. Clients are Python's ``ssl`` and curl.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
from pathlib import Path

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from tests.support.edges import RECORD_BYTES, Edge, wait_for_record
from tests.support.peers import free_port, start_backend
from tests.support.twist import Twist, assert_one_line, run_twist
from txschannel.terminator.proxyheader import V2_SIGNATURE, header_v1, header_v2

#: Twisted's haproxy: endpoint parses the header; the protocol behind it
#: answers with the addresses it was given, as one JSON line.
TWISTED_HAPROXY = """
import json, sys
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol

class Tell(Protocol):
    def dataReceived(self, data):
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.transport.write(json.dumps({
            "peer": [peer.host, peer.port], "host": [host.host, host.port],
            "data": data.decode(),
        }).encode() + b"\\n")

endpoint = serverFromString(reactor, "haproxy:tcp:%s:interface=127.0.0.1" % sys.argv[1])
endpoint.listen(Factory.forProtocol(Tell))
reactor.run()
"""


def parse_tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """TLVs as (type, value), in order; fails on a length that overruns."""
    tlvs = []
    while data:
        kind, length = struct.unpack("!BH", data[:3])
        value = data[3:3 + length]
        assert len(value) == length, f"TLV 0x{kind:02x} claims {length} bytes, has {len(value)}"
        tlvs.append((kind, value))
        data = data[3 + length:]
    return tlvs


class ProxyProtocolTests(Edge):
    def setUp(self) -> None:
        super().setUp()
        # Client certificates from the same CA; a listener asking for them.
        self.ca.issue("alice.example.com", common_name="alice").write(self.folder / "alice.pem")

    def twisted_backend(self) -> int:
        return start_backend(self, TWISTED_HAPROXY, self.folder / "haproxy_backend.py")

    def start(self, version: str, backend: int, listen_options: str = "") -> tuple[Twist, int]:
        port = free_port()
        twist = Twist(
            self,
            "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={self.folder}/server.pem"
            + listen_options,
            "--connect", f"tcp:127.0.0.1:{backend}",
            "--proxy-protocol", version,
        )
        twist.wait_for("listening on")
        return twist, port

    def ask(self, port: int, payload: bytes, certificate: Path | None = None,
            alpn: list[str] | None = None) -> tuple[bytes, tuple[str, int]]:
        context = self.client_context()
        if certificate is not None:
            context.load_cert_chain(str(certificate))
        if alpn:
            context.set_alpn_protocols(alpn)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            address = raw.getsockname()
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(payload)
                answer = b""
                while not answer.endswith((b"\n", b"ok")):
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
        return answer, address

    def test_twisted_haproxy_endpoint_reads_the_client_address(self) -> None:
        backend = self.twisted_backend()
        for version in ("v1", "v2"):
            twist, port = self.start(version, backend)
            answer, (host, client_port) = self.ask(port, b"hello")
            told = json.loads(answer)
            self.assertEqual(told["peer"], [host, client_port], version)
            self.assertEqual(told["host"], ["127.0.0.1", port], version)
            self.assertEqual(told["data"], "hello", version)
            twist.stop()

    def test_behind_a_haproxy_listener_the_original_client_is_passed_on(self) -> None:
        backend = self.twisted_backend()
        port = free_port()
        twist = Twist(
            self,
            "--listen",
            f"schannel:haproxy:tcp:{port}:interface=127.0.0.1:"
            f"certificate={self.folder}/server.pem",
            "--connect", f"tcp:127.0.0.1:{backend}",
            "--proxy-protocol", "v2",
        )
        twist.wait_for("listening on")
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            # What a load balancer in front would say about its client.
            raw.sendall(b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\n")
            with self.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"hello")
                answer = b""
                while not answer.endswith(b"\n"):
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
        told = json.loads(answer)
        self.assertEqual(told["peer"], ["192.0.2.7", 51234])
        self.assertEqual(told["host"], ["198.51.100.1", 443])

    def test_v1_is_one_line_before_the_data(self) -> None:
        record = self.folder / "record.txt"
        backend = self.backend(RECORD_BYTES, str(record))
        twist, port = self.start("v1", backend)
        _, (host, client_port) = self.ask(port, b"hello")
        data = bytes.fromhex(wait_for_record(record)[-1])
        self.assertEqual(
            data, f"PROXY TCP4 {host} 127.0.0.1 {client_port} {port}\r\nhello".encode()
        )

    def test_v2_tlvs_byte_by_byte(self) -> None:
        record = self.folder / "record.txt"
        backend = self.backend(RECORD_BYTES, str(record))
        twist, port = self.start(
            "v2", backend,
            f":clientCA={self.folder}/ca.pem:alpn=h2,http/1.1",
        )
        _, (host, client_port) = self.ask(
            port, b"hello", certificate=self.folder / "alice.pem", alpn=["http/1.1"]
        )
        _, (host2, client_port2) = self.ask(port, b"hello")
        lines = wait_for_record(record, count=2)
        with_certificate, without = (bytes.fromhex(line) for line in lines[-2:])

        for data, source, source_port in (
            (with_certificate, host, client_port), (without, host2, client_port2)
        ):
            self.assertEqual(data[:12], V2_SIGNATURE)
            self.assertEqual(data[12], 0x21)  # version 2, PROXY
            self.assertEqual(data[13], 0x11)  # TCP over IPv4
            length = struct.unpack("!H", data[14:16])[0]
            body, rest = data[16:16 + length], data[16 + length:]
            self.assertEqual(rest, b"hello")
            self.assertEqual(body[:4], ipaddress.ip_address(source).packed)
            self.assertEqual(body[4:8], ipaddress.ip_address("127.0.0.1").packed)
            self.assertEqual(struct.unpack("!HH", body[8:12]), (source_port, port))

        tlvs = parse_tlvs(with_certificate[16 + 12:-len(b"hello")])
        self.assertEqual([kind for kind, _ in tlvs], [0x01, 0x02, 0x20])
        self.assertEqual(tlvs[0][1], b"http/1.1")
        self.assertEqual(tlvs[1][1], b"localhost")
        ssl_tlv = tlvs[2][1]
        self.assertEqual(ssl_tlv[0], 0x01 | 0x02 | 0x04)  # SSL, CERT_CONN, CERT_SESS
        self.assertEqual(struct.unpack("!I", ssl_tlv[1:5])[0], 0)  # verified
        sub = dict(parse_tlvs(ssl_tlv[5:]))
        self.assertEqual(sub[0x21], b"TLSv1.3")
        self.assertEqual(sub[0x22], b"alice")
        self.assertEqual(sub[0x23], b"TLS_AES_256_GCM_SHA384")

        tlvs = parse_tlvs(without[16 + 12:-len(b"hello")])
        # No ALPN offered: none negotiated, none sent.
        self.assertEqual([kind for kind, _ in tlvs], [0x02, 0x20])
        ssl_tlv = tlvs[1][1]
        self.assertEqual(ssl_tlv[0], 0x01)
        self.assertNotEqual(struct.unpack("!I", ssl_tlv[1:5])[0], 0)
        sub = dict(parse_tlvs(ssl_tlv[5:]))
        self.assertEqual(sorted(sub), [0x21, 0x23])

    def test_a_common_name_with_control_characters_is_not_passed_on(self) -> None:
        record = self.folder / "record.txt"
        backend = self.backend(RECORD_BYTES, str(record))
        twist, port = self.start("v2", backend, f":clientCA={self.folder}/ca.pem")
        names = ["alice\x00.evil", "alice\r\nX-Client: admin"]
        for index, name in enumerate(names):
            certificate = self.folder / f"hostile{index}.pem"
            self.ca.issue("alice.example.com", common_name=name).write(certificate)
            self.ask(port, b"hello", certificate=certificate)
        for line in wait_for_record(record, count=2):
            data = bytes.fromhex(line)
            tlvs = dict(parse_tlvs(data[16 + 12:-len(b"hello")]))
            ssl_tlv = tlvs[0x20]
            # Still a verified client certificate; just no name a C backend
            # would read as "alice".
            self.assertEqual(ssl_tlv[0], 0x01 | 0x02 | 0x04)
            self.assertNotIn(0x22, dict(parse_tlvs(ssl_tlv[5:])))
            self.assertNotIn(b"alice", data)
        twist.wait_for(r"common name alice\\x00\.evil holds control characters")
        twist.wait_for(r"common name alice\\x0d\\x0aX-Client: admin holds control characters")
        self.assertNotIn("\nX-Client", twist.output)

    def test_a_server_name_that_is_no_host_name_is_not_passed_on(self) -> None:
        record = self.folder / "record.txt"
        backend = self.backend(RECORD_BYTES, str(record))
        twist, port = self.start("v2", backend)
        context = self.client_context()
        context.check_hostname = False
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            with context.wrap_socket(raw, server_hostname="evil\r\nX-Host: admin") as tls:
                tls.sendall(b"hello")
                self.assertEqual(tls.recv(2), b"ok")
        data = bytes.fromhex(wait_for_record(record)[-1])
        kinds = [kind for kind, _ in parse_tlvs(data[16 + 12:-len(b"hello")])]
        self.assertEqual(kinds, [0x20])  # no PP2_TYPE_AUTHORITY
        self.assertNotIn(b"X-Host", data)
        twist.wait_for(r"server name evil\\x0d\\x0aX-Host: admin is not a host name")

    def test_a_plain_listener_sends_addresses_and_no_tls_tlvs(self) -> None:
        record = self.folder / "record.txt"
        backend = self.backend(RECORD_BYTES, str(record))
        port = free_port()
        twist = Twist(self, "--listen", f"tcp:{port}:interface=127.0.0.1",
                      "--connect", f"tcp:127.0.0.1:{backend}", "--proxy-protocol", "v2")
        twist.wait_for("listening on")
        with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
            client.sendall(b"hello")
            client.recv(2)
        data = bytes.fromhex(wait_for_record(record)[-1])
        length = struct.unpack("!H", data[14:16])[0]
        self.assertEqual(length, 12)  # the addresses alone
        self.assertEqual(data[16 + 12:], b"hello")


class HeaderBuilderTests(SynchronousTestCase):
    """The headers are valid whatever addresses they are given."""

    def test_a_port_outside_0_to_65535_gives_unknown_and_local(self) -> None:
        destination = IPv4Address("TCP", "10.0.0.1", 443)
        for port in (99999, -1, 65536):
            source = IPv4Address("TCP", "6.6.6.6", port)
            # Before: "PROXY TCP4 6.6.6.6 10.0.0.1 99999 443" and struct.error.
            self.assertEqual(header_v1(source, destination), b"PROXY UNKNOWN\r\n")
            header = header_v2(source, destination, None)
            self.assertEqual(header, V2_SIGNATURE + b"\x20\x00\x00\x00")
        # The edges are valid ports.
        source = IPv4Address("TCP", "6.6.6.6", 65535)
        self.assertEqual(
            header_v1(source, IPv4Address("TCP", "10.0.0.1", 0)),
            b"PROXY TCP4 6.6.6.6 10.0.0.1 65535 0\r\n",
        )

    def test_unix_addresses_give_local_with_the_tlvs(self) -> None:
        header = header_v2(UNIXAddress(b"/a"), UNIXAddress(b"/b"), None)
        # Version 2 LOCAL, UNSPEC: what HAProxy itself sends for addresses
        # it cannot write, and what every receiver must accept.
        self.assertEqual(header[12:14], b"\x20\x00")


class BadProxyProtocolTests(SynchronousTestCase):
    def test_forms(self) -> None:
        for arguments, needle in (
            (("--connect", "tcp:127.0.0.1:1", "--proxy-protocol", "v3"),
             "--proxy-protocol 'v3': expected v1 or v2"),
            (("--proxy-protocol", "v1"), "no backend to tell"),
            (("--connect", "schannel:tcp:127.0.0.1:1:hostname=x", "--proxy-protocol", "v2"),
             "is TLS"),
        ):
            result = run_twist(*arguments)
            assert_one_line(self, result, needle)
            self.assertEqual(result.returncode, 64)
