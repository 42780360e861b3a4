"""What the ``--workers`` tests share: a CA and server certificate for a run
(:class:`Setup`), an echo backend that records how each connection ended,
and one TLS exchange through the relay.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from twisted.trial.unittest import FailTest, TestCase

from tests.support.peers import LISTENER, free_port, start_backend
from txschannel.testing import CertificateAuthority

#: Echoes every byte back until the client closes, and writes how each
#: connection ended (a FIN or a reset) as a line of the file named after
#: the script, with ".ends".
ECHO_SERVER = LISTENER + """
def ended(how):
    with open(sys.argv[0] + ".ends", "a") as ends:
        ends.write(how + "\\n")

def serve(connection):
    with connection:
        while True:
            try:
                data = connection.recv(65536)
            except ConnectionResetError:
                return ended("reset")
            if not data:
                return ended("fin")
            connection.sendall(data)

while True:
    connection, _ = server.accept()
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""


class Setup:
    """A CA, a server certificate for localhost, and a folder for the run."""

    def __init__(self, test: TestCase) -> None:
        self.folder = Path(test.mktemp()).resolve()
        self.folder.mkdir()
        self.ca = CertificateAuthority()
        self.ca_file = self.folder / "ca.pem"
        self.ca.write(self.ca_file)
        self.server_file = self.folder / "server.pem"
        self.ca.issue("localhost", "127.0.0.1").write(self.server_file)
        self.port = free_port()

    def listen(self, *options: str) -> str:
        extra = "".join(f":{option}" for option in options)
        return (f"schannel:tcp:{self.port}:interface=127.0.0.1:"
                f"certificate={self.server_file}{extra}")

    def client_context(self, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if maximum is not None:
            context.maximum_version = maximum
        return context


def start_echo_server(test: TestCase) -> tuple[int, Path]:
    """The echo server's port, and the file where it says how connections ended."""
    script = Path(test.mktemp() + ".py").resolve()
    return start_backend(test, ECHO_SERVER, script), Path(f"{script}.ends")


def exchange(setup: Setup, payload: bytes = b"ping",
             session: ssl.SSLSession | None = None,
             context: ssl.SSLContext | None = None) -> tuple[int, ssl.SSLSession | None, bool]:
    """One TLS connection through the relay: (our port, session to resume, reused?)."""
    context = context or setup.client_context()
    with socket.create_connection(("127.0.0.1", setup.port), timeout=10) as raw:
        local_port = raw.getsockname()[1]
        with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(payload)
            received = b""
            while len(received) < len(payload):
                data = tls.recv(65536)
                if not data:
                    break
                received += data
            if received != payload:
                raise FailTest(f"echoed {received!r}, sent {payload!r}")
            # TLS 1.3 tickets arrive after the handshake: reading above took them.
            return local_port, tls.session, tls.session_reused
