"""Key logs (``keyLogFile=``, ``SSLKEYLOGFILE``) against real peers.

Each side of one connection writes its own key log: ``twist schannel`` and
Python's :mod:`ssl` (``SSLContext.keylog_filename``) or curl
(``SSLKEYLOGFILE``). The two files must hold the same secrets for the same
client random, which is what lets Wireshark decrypt a capture with either.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase

from tests.support.peers import free_port, require, wait_for_port
from tests.support.twist import Twist, run_twist
from txschannel import Credentials, keylog
from txschannel.testing import CertificateAuthority, connected_pair

# The labels of the NSS key log format that hold secrets.
TLS13_LABELS = {
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    "CLIENT_TRAFFIC_SECRET_0",
    "SERVER_TRAFFIC_SECRET_0",
    "EXPORTER_SECRET",
}


def secrets(path: Path) -> set[tuple[str, str, str]]:
    """(label, client random, secret) of every line of the key log *path*."""
    found = set()
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue  # Python's ssl starts its file with a comment
        label, client_random, secret = line.split(" ")
        found.add((label, client_random.lower(), secret.lower()))
    return found


def complete(found: set[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    """The lines of the TLS 1.3 connections that logged every secret."""
    randoms = {random for _, random, _ in found}
    whole = {
        random for random in randoms
        if {label for label, other, _ in found if other == random} == TLS13_LABELS
    }
    return {line for line in found if line[1] in whole}


class Folder:
    """A temporary folder with a CA and a localhost certificate."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="txschannel-keylog-"))
        authority = CertificateAuthority()
        self.ca = authority.write(self.path / "ca.pem")
        self.server = authority.issue("localhost").write(self.path / "server.pem")


def python_get(port: int, ca: Path, key_log: Path, version: ssl.TLSVersion) -> bytes:
    """One HTTPS request with Python's ssl writing its own key log."""
    context = ssl.create_default_context(cafile=str(ca))
    context.keylog_filename = str(key_log)
    context.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            reply = b""
            while chunk := tls.recv(65536):
                reply += chunk
    return reply


class TwistSchannelKeyLogTests(SynchronousTestCase):
    """The server side: ``twist schannel`` with ``keyLogFile=`` or ``SSLKEYLOGFILE``."""

    def test_keylogfile_option_matches_python_ssl_over_tls13(self) -> None:
        folder = Folder(self)
        ours, theirs = folder.path / "server.keys", folder.path / "client.keys"
        port = free_port()
        twist = Twist(
            self, "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={folder.server}"
            f":keyLogFile={ours}",
        )  # fmt: skip
        wait_for_port(port, timeout=30)
        reply = python_get(port, folder.ca, theirs, ssl.TLSVersion.TLSv1_3)
        self.assertIn(b"txschannel inspector", reply)
        logged = secrets(ours)
        self.assertEqual({label for label, _, _ in logged}, TLS13_LABELS)
        self.assertEqual(logged, secrets(theirs))
        self.assertEqual(stat.S_IMODE(os.stat(ours).st_mode), 0o600)
        # One loud line, naming the file.
        twist.wait_for("listening on")
        warnings = [line for line in twist.output.splitlines() if "TLS secrets" in line]
        self.assertEqual(len(warnings), 1, twist.output)
        self.assertIn(str(ours), warnings[0])
        self.assertIn("keyLogFile=", warnings[0])

    def test_sslkeylogfile_matches_curl_over_tls12_and_appends(self) -> None:
        folder = Folder(self)
        ours, theirs = folder.path / "server.keys", folder.path / "client.keys"
        ours.write_text("# kept\n")
        ours.chmod(0o600)  # a file others may read is refused
        port = free_port()
        twist = Twist(
            self, "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={folder.server}"
            ":maximumVersion=TLSv1.2",
            env={"SSLKEYLOGFILE": str(ours)},
        )  # fmt: skip
        wait_for_port(port, timeout=30)
        result = subprocess_curl(folder, port, theirs)
        self.assertEqual(result.returncode, 0, result.stderr)
        logged = secrets(ours)
        self.assertEqual([label for label, _, _ in logged], ["CLIENT_RANDOM"])
        self.assertEqual(logged, secrets(theirs))
        # Appended to, never truncated.
        self.assertTrue(ours.read_text().startswith("# kept\n"))
        twist.wait_for("listening on")
        warnings = [line for line in twist.output.splitlines() if "TLS secrets" in line]
        self.assertEqual(len(warnings), 1, twist.output)
        self.assertIn("SSLKEYLOGFILE", warnings[0])

    def test_a_key_log_that_cannot_be_created_is_one_line(self) -> None:
        folder = Folder(self)
        missing = folder.path / "no-such-folder" / "keys"
        result = run_twist(
            "--listen",
            f"schannel:tcp:{free_port()}:interface=127.0.0.1:certificate={folder.server}"
            f":keyLogFile={missing}",
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertIn(f"keyLogFile=: cannot open key log file '{missing}'", result.stderr)


def subprocess_curl(folder: Folder, port: int, key_log: Path) -> subprocess.CompletedProcess[str]:
    """curl over TLS 1.2, writing its key log where SSLKEYLOGFILE says."""
    return subprocess.run(
        [
            require("curl"), "-sS", "--max-time", "30", "--cacert", str(folder.ca),
            "--tls-max", "1.2", "--resolve", f"localhost:{port}:127.0.0.1",
            f"https://localhost:{port}/",
        ],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "SSLKEYLOGFILE": str(key_log)},
    )  # fmt: skip


class ConnectKeyLogTests(SynchronousTestCase):
    """The client side: a ``schannel:`` ``--connect`` endpoint with ``keyLogFile=``."""

    def test_connect_side_matches_a_python_ssl_server(self) -> None:
        folder = Folder(self)
        ours, theirs = folder.path / "client.keys", folder.path / "server.keys"
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(str(folder.server))
        server_context.keylog_filename = str(theirs)
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(30)
        self.addCleanup(listener.close)
        backend = listener.getsockname()[1]

        def serve() -> None:
            # wait_for_port's probe is relayed too: serve until the ping.
            for _ in range(5):
                try:
                    raw, _ = listener.accept()
                    with server_context.wrap_socket(raw, server_side=True) as tls:
                        tls.settimeout(30)
                        if tls.recv(100) != b"ping":
                            continue
                        tls.sendall(b"pong")
                        # Until the relay closes: closing first, with bytes
                        # unread, could reset the connection and lose "pong".
                        while tls.recv(100):
                            pass
                        return
                except OSError:
                    continue

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        port = free_port()
        twist = Twist(
            self, "--listen", f"tcp:{port}:interface=127.0.0.1", "--connect",
            f"schannel:tcp:localhost:{backend}:trustRoots={folder.ca}:keyLogFile={ours}",
        )  # fmt: skip
        wait_for_port(port, timeout=30)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(b"ping")
            try:
                answer = client.recv(100)
            except TimeoutError:
                self.fail(twist.output)
            self.assertEqual(answer, b"pong", twist.output)
        thread.join(30)
        # The probe of wait_for_port was relayed too, and may have stopped
        # mid-handshake: compare the connections each side logged in full.
        logged, answered = complete(secrets(ours)), complete(secrets(theirs))
        self.assertTrue(logged)
        self.assertEqual(logged, answered)


class LibraryKeyLogTests(SynchronousTestCase):
    """:meth:`Credentials.client` / :meth:`Credentials.server` and the variable."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-keylog-"))
        # The files opened here stay open for the process otherwise, and
        # trial runs every test module in this one.
        self.addCleanup(keylog.close_key_logs)
        previous = os.environ.pop(keylog.KEY_LOG_VARIABLE, None)
        if previous is not None:
            self.addCleanup(os.environ.__setitem__, keylog.KEY_LOG_VARIABLE, previous)

    def test_new_file_is_private_and_existing_mode_is_kept(self) -> None:
        fresh = self.folder / "fresh.keys"
        Credentials.client(key_log_file=fresh)
        self.assertEqual(stat.S_IMODE(os.stat(fresh).st_mode), 0o600)
        shared = self.folder / "shared.keys"
        shared.write_text("")
        os.chmod(shared, 0o640)
        Credentials.client(key_log_file=shared)
        self.assertEqual(stat.S_IMODE(os.stat(shared).st_mode), 0o640)

    def test_variable_is_honoured_and_false_ignores_it(self) -> None:
        named = self.folder / "from-variable.keys"
        os.environ[keylog.KEY_LOG_VARIABLE] = str(named)
        self.addCleanup(os.environ.pop, keylog.KEY_LOG_VARIABLE, None)
        self.assertEqual(keylog.key_log_path(None), str(named))
        self.assertIsNone(keylog.key_log_path(False))
        Credentials.client(key_log_file=False)
        self.assertFalse(named.exists())
        Credentials.client()
        self.assertTrue(named.exists())

    def test_unopenable_file_is_a_value_error_naming_it(self) -> None:
        missing = self.folder / "no-such-folder" / "keys"
        with self.assertRaises(ValueError) as caught:
            Credentials.client(key_log_file=missing)
        self.assertIn(str(missing), str(caught.exception))

    def test_a_file_others_could_read_gets_no_secrets(self) -> None:
        # Made beforehand in a shared folder by someone waiting for secrets.
        planted = self.folder / "planted.keys"
        planted.write_text("")
        os.chmod(planted, 0o644)
        with self.assertRaises(ValueError) as caught:
            Credentials.client(key_log_file=planted)
        self.assertIn(str(planted), str(caught.exception))
        self.assertIn("open to other users (mode 0644)", str(caught.exception))
        os.chown(planted, 65534, 65534)
        os.chmod(planted, 0o600)
        with self.assertRaises(ValueError) as caught:
            Credentials.client(key_log_file=planted)
        self.assertIn("belongs to another user (uid 65534)", str(caught.exception))
        self.assertEqual(planted.read_bytes(), b"")

    def test_a_named_pipe_is_refused_not_waited_on(self) -> None:
        pipe = self.folder / "pipe.keys"
        os.mkfifo(pipe, 0o600)

        def hung(number: int, frame: object) -> None:
            raise AssertionError("opening the key log waited for a reader of the pipe")

        previous = signal.signal(signal.SIGALRM, hung)
        signal.alarm(10)
        try:
            with self.assertRaises(ValueError) as caught:
                Credentials.client(key_log_file=pipe)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        self.assertIn(str(pipe), str(caught.exception))

    def test_closed_key_log_gets_no_more_lines(self) -> None:
        # After close_key_logs() the old descriptor number may be reused by
        # another file: the credentials must not write secrets there.
        path = self.folder / "closed.keys"
        authority = CertificateAuthority()
        server = authority.server_credentials("localhost", key_log_file=path)
        keylog.close_key_logs()
        other = self.folder / "other"
        with open(other, "wb") as handle:
            connected_pair(Protocol, Protocol, ca=authority, server_credentials=server)
            handle.flush()
        self.assertEqual(other.read_bytes(), b"")
        self.assertEqual(path.read_bytes(), b"")
