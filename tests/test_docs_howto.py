"""The getting-started page and the how-to pages, run as a reader would run them.

Every program and script those pages include lives in ``docs/examples/``;
each test here copies the ones it needs into a folder of its own (the port
numbers of the page, 8443 and 8080, swapped for free ones), runs them as
real processes on loopback, and talks to them with real peers: curl,
``openssl s_client``, Python's ``http.server`` as a backend. The systemd
units are read the way systemd reads them and their ``ExecStart`` is run,
with the socket-activated one started through the page's own launcher. A
missing tool fails the test (``tests.support.peers.require``), it is never skipped.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.peers import free_port, require, wait_for_port
from tests.support.systemd import Systemd
from txschannel.testing import CertificateAuthority

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "docs" / "examples"
PAGE_PORT, PAGE_BACKEND = "8443", "8080"


def q(path: Path) -> str:
    """*path* escaped for an endpoint string."""
    text = str(path)
    for special in ("\\", ":", "="):
        text = text.replace(special, "\\" + special)
    return text


class Workspace:
    """A reader's folder: the certificates of ``certificates.py``, the examples
    copied in with free ports, and the processes started there."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.test = test
        self.folder = Path(test.mktemp()).resolve()
        self.folder.mkdir(parents=True)
        self.port = free_port()
        self.backend_port = free_port()
        self.env = dict(os.environ)
        self.env.pop("XDG_STATE_HOME", None)
        self.env["HOME"] = str(self.folder)
        # The checkout's twisted/plugins hold the schannel: and twist plugins,
        # and `twist` is the one beside this Python.
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        bin_folder = Path(sys.executable).parent
        if not (bin_folder / "twist").exists():
            test.fail(f"no twist beside {sys.executable}: install the project in that venv")
        self.env["PATH"] = os.pathsep.join([str(bin_folder), os.environ.get("PATH", "")])
        self.env.pop("PYTHONWARNINGS", None)
        made = self.run(sys.executable, self.copy("certificates.py"))
        test.assertEqual(
            made.stdout, "wrote ca.pem, ca-key.pem, server.pem, alice.pem and bob.pem\n"
        )

    def copy(self, name: str, *, ports: bool = True) -> str:
        """Copy ``docs/examples/<name>`` here with this workspace's ports (or, with
        *ports* False, as it is); its file name."""
        text = (EXAMPLES / name).read_text()
        if ports:
            text = text.replace(PAGE_PORT, str(self.port))
            text = text.replace(PAGE_BACKEND, str(self.backend_port))
        target = self.folder / Path(name).name
        target.write_text(text)
        return target.name

    def which(self, tool: str) -> str:
        """*tool* as this folder's PATH finds it; a test failure when it is missing."""
        return shutil.which(tool, path=self.env["PATH"]) or require(tool)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run *argv* here to the end; its output (and a failure if it failed)."""
        argv = (self.which(argv[0]), *argv[1:])
        result = subprocess.run(
            list(argv),
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            self.test.fail(f"{argv}: exit {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def start(self, *argv: str, log: str = "server.log") -> subprocess.Popen[bytes]:
        """Start *argv* here, its output into *log*; killed at the end of the test."""
        argv = (self.which(argv[0]), *argv[1:])
        output = open(self.folder / log, "wb")  # noqa: SIM115 - closed by the cleanup
        process = subprocess.Popen(
            list(argv), cwd=self.folder, env=self.env, stdout=output, stderr=subprocess.STDOUT
        )

        def stop() -> None:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
            output.close()

        self.test.addCleanup(stop)
        return process

    def log(self, name: str = "server.log") -> str:
        path = self.folder / name
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_log(self, text: str, name: str = "server.log", timeout: float = 15) -> str:
        """Block until *text* appears in the log *name*; the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log(name):
                return self.log(name)
            time.sleep(0.05)
        self.test.fail(f"{text!r} never appeared in {name}:\n{self.log(name)}")

    def curl(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return self.run("curl", "-sS", "--max-time", "20", *arguments, check=False)

    def served_fingerprint(self) -> str:
        """The SHA-256 fingerprint of the certificate served on the port, by openssl."""
        hello = self.run(
            "openssl", "s_client", "-connect", f"127.0.0.1:{self.port}",
            "-servername", "localhost",
        )  # fmt: skip
        return self.fingerprint_of(hello.stdout)

    def fingerprint_of(self, pem: str) -> str:
        result = subprocess.run(
            ["openssl", "x509", "-noout", "-fingerprint", "-sha256"],
            input=pem, capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return result.stdout.strip()


# -- getting started ---------------------------------------------------------------------


class GettingStartedTests(SynchronousTestCase):
    """docs/getting-started.rst, step by step."""

    def test_twist_schannel_serves_its_page_to_curl(self) -> None:
        place = Workspace(self)
        # The page runs `twist schannel` alone (port 8443, every interface);
        # here it is the same self-signed setup on a free loopback port.
        place.start(
            "twist", "schannel", "--listen", f"schannel:tcp:{place.port}:interface=127.0.0.1"
        )
        wait_for_port(place.port, timeout=30)
        certificate = place.folder / ".local" / "state" / "txschannel" / "localhost.crt"
        # (The port can answer before the log line reaches the file.)
        place.wait_for_log("created the self-signed certificate")
        page = place.curl("--cacert", str(certificate), f"https://localhost:{place.port}/")
        self.assertEqual(page.returncode, 0, page.stderr)
        self.assertIn("txschannel inspector", page.stdout)
        self.assertRegex(page.stdout, r"protocol:\s+TLSv1\.3")

    def test_echo_server_and_client(self) -> None:
        place = Workspace(self)
        place.start(sys.executable, place.copy("echo_server.py"))
        wait_for_port(place.port, timeout=30)
        client = place.run(sys.executable, place.copy("echo_client.py"))
        self.assertEqual(client.stdout, "protocol: TLSv1.3\nserver said: hello over TLS\n")
        self.assertEqual(client.stderr, "")

    def test_echo_client_refuses_a_server_it_does_not_trust(self) -> None:
        place = Workspace(self)
        stranger = CertificateAuthority().issue("localhost").write(place.folder / "stranger.pem")
        place.start(
            sys.executable, place.copy("echo_server.py"),
            f"schannel:tcp:{place.port}:interface=127.0.0.1:certificate={q(stranger)}",
        )  # fmt: skip
        wait_for_port(place.port, timeout=30)
        client = place.run(sys.executable, place.copy("echo_client.py"), check=False)
        self.assertEqual(client.returncode, 1)
        self.assertIn("UNTRUSTED_ROOT", client.stderr)

    def test_the_first_trial_test_passes(self) -> None:
        place = Workspace(self)
        place.copy("echo_server.py")
        place.copy("test_echo.py")
        result = place.run(sys.executable, "-m", "twisted.trial", "test_echo")
        self.assertIn("PASSED (successes=2)", result.stdout)


class OtherPortTests(SynchronousTestCase):
    """What getting-started.rst says about port 8443: the Python examples take
    the endpoint as their first argument, the shell scripts read $PORT. The
    examples run here as written, not with their port replaced."""

    def test_python_examples_take_the_endpoint_as_first_argument(self) -> None:
        place = Workspace(self)
        place.start(
            sys.executable, place.copy("echo_server.py", ports=False),
            f"schannel:tcp:{place.port}:interface=127.0.0.1:certificate=server.pem",
        )  # fmt: skip
        wait_for_port(place.port, timeout=30)
        client = place.run(
            sys.executable, place.copy("echo_client.py", ports=False),
            f"schannel:tcp:localhost:{place.port}:trustRoots=ca.pem",
        )  # fmt: skip
        self.assertEqual(client.stdout, "protocol: TLSv1.3\nserver said: hello over TLS\n")

    def test_shell_scripts_read_the_port_from_the_environment(self) -> None:
        require("curl")
        place = Workspace(self)
        place.env["PORT"] = str(place.port)
        place.start("sh", place.copy("mutual_tls.sh", ports=False))
        wait_for_port(place.port, timeout=30)
        knocks = place.run("sh", place.copy("knock.sh", ports=False)).stdout
        self.assertTrue(knocks.startswith("alice:\nclient certificate: CN=alice"), knocks)

    def test_no_shell_script_hard_codes_the_port(self) -> None:
        for script in sorted(EXAMPLES.glob("*.sh")):
            code = "\n".join(
                line for line in script.read_text().splitlines() if not line.startswith("#")
            )
            self.assertNotRegex(
                code.replace("${PORT:-8443}", ""), r"\b8443\b", f"{script.name} hard-codes 8443"
            )


class VersionPageTests(SynchronousTestCase):
    """docs/twist.rst: ``twist schannel --version`` prints the lines the page shows."""

    def test_version_lines_name_what_the_page_names(self) -> None:
        page = (REPO / "docs" / "twist.rst").read_text()
        shown = page.split("$ twist schannel --version\n", 1)[1].split("\n\n", 1)[0]
        names = [line.split()[0] for line in shown.splitlines()]
        place = Workspace(self)
        printed = place.run("twist", "schannel", "--version").stdout.splitlines()
        self.assertEqual([line.split()[0] for line in printed], names)


class LogFormatTests(SynchronousTestCase):
    """What getting-started.rst says about twist's log: text on a terminal,
    JSON lines otherwise, --log-format to choose."""

    def serve(self, place: Workspace, *twist_options: str, log: str) -> None:
        place.start(
            "twist", *twist_options, "schannel", "--listen",
            f"schannel:tcp:{place.port}:interface=127.0.0.1", log=log,
        )  # fmt: skip
        place.wait_for_log("listening on", log)

    def test_json_lines_when_the_output_is_not_a_terminal(self) -> None:
        place = Workspace(self)
        self.serve(place, log="json.log")
        records = [r for r in place.log("json.log").split("\x1e") if r.strip()]
        self.assertTrue(place.log("json.log").startswith("\x1e{"))
        events = [json.loads(record) for record in records]
        self.assertIn("listening on {endpoint} at {address}", [e.get("log_format") for e in events])

    def test_log_format_text_when_the_output_is_not_a_terminal(self) -> None:
        place = Workspace(self)
        self.serve(place, "--log-format=text", log="text.log")
        text = place.log("text.log")
        self.assertNotIn("\x1e", text)
        self.assertRegex(text, r"(?m)^\S+ \[txschannel#info\] listening on schannel:tcp:")

    def on_a_terminal(self, place: Workspace, *twist_options: str, watch: bool = True) -> bytes:
        """Start twist schannel with a terminal as its standard output and
        error; what the terminal showed until the listening line, or the end
        (nothing, without *watch*)."""
        controller, terminal = pty.openpty()
        listen = f"schannel:tcp:{place.port}:interface=127.0.0.1"
        process = subprocess.Popen(
            [place.which("twist"), *twist_options, "schannel", "--listen", listen],
            cwd=place.folder, env=place.env, stdout=terminal, stderr=terminal,
        )  # fmt: skip
        os.close(terminal)

        def stop() -> None:
            process.kill()
            process.wait(timeout=10)
            os.close(controller)

        self.addCleanup(stop)
        seen = b""
        deadline = time.monotonic() + 30
        while watch and b"listening on" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(controller, 65536)
                except OSError:  # the terminal closed: the process ended
                    break
        return seen

    def test_text_on_a_terminal(self) -> None:
        seen = self.on_a_terminal(Workspace(self))
        self.assertIn(b"[txschannel#info] listening on", seen, seen)
        self.assertNotIn(b"\x1e", seen)

    def test_log_file_gets_text_when_standard_output_is_a_terminal(self) -> None:
        # The page: the check is made on standard output, even with --log-file.
        place = Workspace(self)
        self.on_a_terminal(place, "--log-file=twist.log", watch=False)
        text = place.wait_for_log("listening on", "twist.log")
        self.assertNotIn("\x1e", text)
        self.assertRegex(text, r"(?m)^\S+ \[txschannel#info\] listening on schannel:tcp:")


# -- how-to pages --------------------------------------------------------------------------


class HTTP2HowToTests(SynchronousTestCase):
    """docs/howto/http2.rst and docs/howto/agent.rst: one site, three clients."""

    def test_curl_gets_http2_or_http11_and_agent_and_treq_get_http11(self) -> None:
        require("curl")
        place = Workspace(self)
        place.start(sys.executable, place.copy("http2_site.py"))
        wait_for_port(place.port, timeout=30)
        url = f"https://localhost:{place.port}/"
        for flag, expected in (("--http2", "hello over HTTP/2\n"),
                               ("--http1.1", "hello over HTTP/1.1\n")):  # fmt: skip
            page = place.curl("--cacert", "ca.pem", flag, url)
            self.assertEqual((page.returncode, page.stdout), (0, expected), page.stderr)
        result = place.run(sys.executable, place.copy("https_get.py"))
        self.assertEqual(
            result.stdout, "Agent: 200 hello over HTTP/1.1\ntreq: 200 hello over HTTP/1.1\n"
        )
        self.assertEqual(result.stderr, "")


class MutualTLSHowToTests(SynchronousTestCase):
    """docs/howto/mutual-tls.rst: the allow-list admits alice, refuses bob and
    clients without a certificate."""

    def test_only_alice_gets_in(self) -> None:
        require("curl")
        place = Workspace(self)
        place.start("sh", place.copy("mutual_tls.sh"))
        wait_for_port(place.port, timeout=30)
        knocks = place.run("sh", place.copy("knock.sh")).stdout
        alice, bob, nobody = re.split(r"(?m)^(?:bob|no certificate):\n", knocks)
        self.assertEqual(alice, "alice:\nclient certificate: CN=alice,O=txschannel testing\n")
        # A reset, never a page. curl words it as it meets it: usually exit 56,
        # "Connection reset by peer"; exit 55 when it comes while curl is still
        # looking at its socket.
        self.assertRegex(bob, r"^curl: \((55|56)\) ")
        self.assertIn("certificate required", nobody)
        log = place.wait_for_log("matches none of --allow-cn alice")
        self.assertIn("CN=bob", log)


def code_blocks(page: Path, language: str) -> list[str]:
    """The ``.. code-block:: <language>`` blocks of the reST *page*, dedented."""
    blocks = []
    lines = page.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip() != f".. code-block:: {language}":
            continue
        body: list[str] = []
        for following in lines[number + 1 :]:
            if following.strip() and not following.startswith(" "):
                break
            body.append(following)
        blocks.append(textwrap.dedent("\n".join(body)).strip() + "\n")
    return blocks


class TestingPageTests(SynchronousTestCase):
    """docs/testing.rst: its snippets run, and the expired certificate it makes
    is refused in memory and by curl when served."""

    def test_every_python_block_runs(self) -> None:
        place = Workspace(self)
        blocks = code_blocks(REPO / "docs" / "testing.rst", "python")
        self.assertTrue(blocks)
        for number, block in enumerate(blocks):
            script = place.folder / f"block{number}.py"
            script.write_text(block)
            place.run(sys.executable, script.name)

    def test_expired_certificate_in_memory_and_served(self) -> None:
        require("curl")
        place = Workspace(self)
        made = place.run(sys.executable, place.copy("expired_certificate.py"))
        self.assertEqual(
            made.stdout,
            "the client refused it: CERT_EXPIRED\nwrote expired.pem and expired-ca.pem\n",
        )
        place.start("sh", place.copy("serve_expired.sh"))
        wait_for_port(place.port, timeout=30)
        self.assertIn("has expired", place.wait_for_log("expired.pem"))
        page = place.curl("--cacert", "expired-ca.pem", f"https://localhost:{place.port}/")
        self.assertEqual(page.returncode, 60, page.stderr)
        self.assertIn("certificate has expired", page.stderr)


class WiresharkHowToTests(SynchronousTestCase):
    """docs/howto/wireshark.rst: the server and curl write the same secrets."""

    def test_server_and_curl_key_logs_match(self) -> None:
        require("curl")
        place = Workspace(self)
        place.start("sh", place.copy("keylog_server.sh"))
        wait_for_port(place.port, timeout=30)
        fetched = place.run("sh", place.copy("keylog_fetch.sh"))
        self.assertEqual(fetched.stdout, "same secrets in both key logs: 5 lines\n")
        log = place.wait_for_log("writing TLS secrets to")
        self.assertIn(str(place.folder / "server-keys.log"), log)
        mode = (place.folder / "server-keys.log").stat().st_mode & 0o777
        self.assertEqual(mode, 0o600)


class ReloadHowToTests(SynchronousTestCase):
    """docs/howto/reload.rst: renew.sh puts a new certificate in service; a
    broken one is refused and the old one stays."""

    def test_renew_then_a_broken_renewal(self) -> None:
        require("openssl")
        place = Workspace(self)
        server = place.start(
            "twist", "--log-format=text", "schannel",
            "--listen", f"schannel:tcp:{place.port}:interface=127.0.0.1:certificate=server.pem",
        )  # fmt: skip
        wait_for_port(place.port, timeout=30)
        before = place.served_fingerprint()
        self.assertEqual(before, place.fingerprint_of((place.folder / "server.pem").read_text()))

        issued = place.run(sys.executable, place.copy("renew_certificate.py"))
        self.assertEqual(issued.stdout, "wrote new-server.pem\n")
        renewed = place.folder / "new-server.pem"
        place.run("sh", place.copy("renew.sh"), renewed.name, str(server.pid))
        log = place.wait_for_log("SIGHUP: reloaded")
        after = place.served_fingerprint()
        self.assertEqual(after, place.fingerprint_of(renewed.read_text()))
        self.assertNotEqual(after, before)
        # The log names what is in service by the fingerprint a client sees.
        logged = re.search(r"SIGHUP: reloaded .*: certificate sha256 ([0-9A-F:]+)", log)
        assert logged is not None
        self.assertEqual(after, f"sha256 Fingerprint={logged.group(1)}")
        # Renewed by the same CA: a client trusting ca.pem accepts it.
        page = place.curl("--cacert", "ca.pem", f"https://localhost:{place.port}/")
        self.assertEqual(page.returncode, 0, page.stderr)

        (place.folder / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nhalf")
        place.run("sh", "renew.sh", "broken.pem", str(server.pid))
        place.wait_for_log("failed, keeping the old certificate")
        self.assertEqual(place.served_fingerprint(), after)
        self.assertIsNone(server.poll())


# -- systemd ---------------------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    """The ``Key=value`` settings of a systemd unit file, joined across
    backslash-continued lines, comments dropped; each key's values in order."""
    settings: dict[str, list[str]] = {}
    logical = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped[0] in "#;["):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        key, _, value = logical.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
        logical = ""
    return settings


class SystemdHowToTests(SynchronousTestCase):
    """docs/howto/systemd.rst: the units' command lines run, here, with the
    paths and ports of a test folder; the socket-activated one through the
    launcher that hands it a listening socket as file descriptor 3."""

    def backend(self, place: Workspace) -> None:
        """The page's service on 127.0.0.1:8080: Python's http.server."""
        (place.folder / "www").mkdir()
        (place.folder / "www" / "index.html").write_text("the backend says hello\n")
        place.start(
            sys.executable, "-m", "http.server", str(place.backend_port),
            "--bind", "127.0.0.1", "--directory", "www", log="backend.log",
        )  # fmt: skip
        wait_for_port(place.backend_port, timeout=30)

    def exec_start(self, place: Workspace, unit: str) -> list[str]:
        """The unit's ExecStart, with this folder's certificate and ports, and
        ``python -m twisted`` for the installed ``twist``."""
        settings = unit_settings(EXAMPLES / "systemd" / unit)
        (command,) = settings["ExecStart"]
        command = (
            command.replace("/etc/txschannel/server.pem", q(place.folder / "server.pem"))
            .replace("tcp:443:", f"tcp:{place.port}:interface=127.0.0.1:")
            .replace(f":{PAGE_BACKEND}", f":{place.backend_port}")
        )
        argv = shlex.split(command)
        self.assertEqual(argv[0], "/opt/txschannel/bin/twist")
        self.assertEqual(settings["ExecReload"], ["/bin/kill -HUP $MAINPID"])
        return [sys.executable, "-m", "twisted", *argv[1:]]

    def check_served(self, place: Workspace) -> None:
        require("curl")
        page = place.curl("--cacert", "ca.pem", f"https://localhost:{place.port}/")
        self.assertEqual(
            (page.returncode, page.stdout), (0, "the backend says hello\n"), page.stderr
        )

    def test_the_service_unit_serves_and_reloads(self) -> None:
        place = Workspace(self)
        self.backend(place)
        # Type=notify: systemd's side of NOTIFY_SOCKET is played here.
        self.assertEqual(unit_settings(EXAMPLES / "systemd" / "txschannel.service")["Type"],
                         ["notify"])
        systemd = Systemd(self)
        place.env["NOTIFY_SOCKET"] = systemd.name
        service = place.start(*self.exec_start(place, "txschannel.service"))
        self.assertEqual(systemd.receive(), (service.pid, "READY=1"))
        self.check_served(place)
        # --log-format=text: text even though the output is not a terminal.
        place.wait_for_log("listening on ")
        self.assertRegex(place.log(), r"(?m)^\S+ \[txschannel#info\] listening on ")
        # ExecReload, as systemd runs it with the service's pid.
        os.kill(service.pid, signal.SIGHUP)
        self.assertTrue(systemd.receive()[1].startswith("RELOADING=1\n"))
        self.assertEqual(systemd.receive(), (service.pid, "READY=1"))
        place.wait_for_log("SIGHUP: reloaded")
        self.check_served(place)
        # systemctl stop: SIGTERM.
        service.terminate()
        self.assertEqual(systemd.receive(), (service.pid, "STOPPING=1"))

    def test_the_socket_unit_hands_its_socket_to_the_service(self) -> None:
        place = Workspace(self)
        self.backend(place)
        (listen,) = unit_settings(EXAMPLES / "systemd" / "txschannel-https.socket")["ListenStream"]
        self.assertEqual(listen, "0.0.0.0:443")
        command = self.exec_start(place, "txschannel-https.service")
        self.assertIn("schannel:systemd:domain=INET:index=0:", " ".join(command))
        launcher = EXAMPLES / "systemd" / "socket_activate.py"
        systemd = Systemd(self)
        place.env["NOTIFY_SOCKET"] = systemd.name
        service = place.start(sys.executable, str(launcher), f"127.0.0.1:{place.port}", *command)
        # (The launcher becomes twist: the same pid, systemd's main one.)
        self.assertEqual(systemd.receive(), (service.pid, "READY=1"))
        place.wait_for_log("listening on")
        self.check_served(place)
        self.check_served(place)
        self.assertIsNone(service.poll(), place.log())
        self.assertNotIn("Traceback", place.log())


#: The fleet's backend: reads the PROXY header the instance sends (Twisted's
#: haproxy: endpoint) and answers each line with the client address it names.
FLEET_BACKEND = """
import sys
from twisted.internet import endpoints, protocol, reactor

class Answer(protocol.Protocol):
    received = b""
    def dataReceived(self, data):
        self.received += data
        if b"\\n" in self.received:
            line = self.received.split(b"\\n", 1)[0]
            client = self.transport.getPeer().host.encode()
            self.transport.write(line + b" answered for " + client + b"\\n")
            self.transport.loseConnection()

endpoints.serverFromString(reactor, f"haproxy:tcp:{sys.argv[1]}:interface=127.0.0.1").listen(
    protocol.Factory.forProtocol(Answer))
reactor.run()
"""

#: The test client's address: not 127.0.0.1, which every hop has, so that
#: the backend naming it proves it crossed haproxy and the instance.
FLEET_CLIENT = "127.0.0.5"
#: Seconds each instance goes on accepting after SIGTERM: more than
#: haproxy needs to see two failed checks 200 ms apart.
FLEET_DRAIN_DELAY = "2"


class FleetHowToTests(SynchronousTestCase):
    """docs/howto/fleet.rst: the page's haproxy.cfg, run by the real haproxy in
    front of two ``twist schannel`` instances and one backend, all on loopback."""

    def haproxy(self) -> str:
        # Debian installs it in /usr/sbin, which not every PATH has.
        found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
        return found or require("haproxy")

    def instance(self, place: Workspace, name: str, port: int, status: int, backend: int,
                 ) -> subprocess.Popen[bytes]:
        process = place.start(
            "twist", "--log-format=text", "schannel",
            "--listen", f"schannel:haproxy:tcp:{port}:interface=127.0.0.1:certificate=server.pem",
            "--connect", f"tcp:127.0.0.1:{backend}", "--proxy-protocol", "v2",
            "--status", f"tcp:{status}:interface=127.0.0.1", "--drain-delay", FLEET_DRAIN_DELAY,
            log=f"{name}.log",
        )  # fmt: skip
        place.wait_for_log("serving /metrics and /status", f"{name}.log", timeout=30)
        return process

    def configuration(self, place: Workspace, front: int, servers: dict[str, tuple[int, int]],
                      ) -> Path:
        """The page's haproxy.cfg with this test's ports and a fast check interval."""
        text = (EXAMPLES / "fleet" / "haproxy.cfg").read_text()
        swaps = {
            "bind :443": f"bind 127.0.0.1:{front}",
            # Checks every 200 ms, so that the test takes seconds.
            "inter 1s fall 2 rise 2": "inter 200ms fall 2 rise 1",
        }
        for (name, address), (port, status) in zip(
            (("one", "10.0.0.11"), ("two", "10.0.0.12")), servers.values(), strict=True
        ):
            swaps[f"server {name} {address}:8443 send-proxy-v2 check port 9090"] = (
                f"server {name} 127.0.0.1:{port} send-proxy-v2 check port {status}"
            )
        for old, new in swaps.items():
            self.assertIn(old, text, "the page's haproxy.cfg changed: update this test")
            text = text.replace(old, new)
        path = place.folder / "haproxy.cfg"
        path.write_text(text)
        return path

    def request(self, front: int, number: int) -> tuple[str, int]:
        """One request through the fleet: the outcome and the client's port."""
        context = ssl.create_default_context(cafile="ca.pem")
        raw = socket.socket()
        raw.settimeout(10)
        raw.bind((FLEET_CLIENT, 0))
        source = raw.getsockname()[1]
        try:
            raw.connect(("127.0.0.1", front))
            with context.wrap_socket(raw, server_hostname="localhost",
                                     suppress_ragged_eofs=False) as tls:
                tls.sendall(f"request {number}\n".encode())
                answer = b""
                # To the end: the instance's close_notify (an end without
                # one raises SSLEOFError), answered with ours.
                while data := tls.recv(4096):
                    answer += data
                tls.unwrap()
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError) as e:
            return f"reset: {e!r}", source
        except OSError as e:
            return f"failed: {e!r}", source
        finally:
            raw.close()
        expected = f"request {number} answered for {FLEET_CLIENT}\n".encode()
        return ("answered" if answer == expected else f"wrong answer {answer!r}"), source

    def test_haproxy_spreads_clients_and_a_sigterm_loses_none(self) -> None:
        place = Workspace(self)
        haproxy = self.haproxy()
        (place.folder / "backend.py").write_text(FLEET_BACKEND)
        place.start(sys.executable, "backend.py", str(place.backend_port), log="backend.log")
        wait_for_port(place.backend_port, timeout=30)
        servers = {"one": (free_port(), free_port()), "two": (free_port(), free_port())}
        instances = {
            name: self.instance(place, name, port, status, place.backend_port)
            for name, (port, status) in servers.items()
        }
        front = free_port()
        config = self.configuration(place, front, servers)
        balancer = place.start(haproxy, "-db", "-f", str(config), log="haproxy.log")
        wait_for_port(front, timeout=30)
        cwd = os.getcwd()
        os.chdir(place.folder)  # ca.pem
        self.addCleanup(os.chdir, cwd)

        # A steady client: 200 requests, one every 50 ms; SIGTERM to
        # instance one before the 61st.
        outcomes: list[tuple[str, int]] = []
        stop_at = 60
        for number in range(200):
            if number == stop_at:
                instances["one"].send_signal(signal.SIGTERM)
            outcomes.append(self.request(front, number))
            time.sleep(0.05)
        # (twist ends by the signal it was given, once it has stopped.)
        self.assertEqual(
            instances["one"].wait(timeout=60), -signal.SIGTERM, place.log("one.log")
        )
        self.assertIsNone(instances["two"].poll())
        self.assertIsNone(balancer.poll(), place.log("haproxy.log"))

        # Which instance served each request: its log names the client's
        # address and port, as haproxy's PROXY header gave them.
        served: dict[int, str] = {}
        peer = re.compile(rf"connection closed peer={re.escape(FLEET_CLIENT)}:(\d+) ")
        for name in instances:
            for port in peer.findall(place.log(f"{name}.log")):
                served[int(port)] = name
        failed = [(n, o) for n, (o, _) in enumerate(outcomes) if o != "answered"]
        split = {
            name: sum(served.get(source) == name for _, source in outcomes) for name in instances
        }
        after = {
            name: sum(served.get(source) == name for _, source in outcomes[stop_at:])
            for name in instances
        }
        print(
            f"\nfleet: {len(outcomes)} sent, {len(outcomes) - len(failed)} answered, "
            f"{sum(o.startswith('reset') for o, _ in outcomes)} reset; "
            f"per instance {split}; from the SIGTERM on {after}"
        )
        self.assertEqual(failed, [], place.log("one.log") + place.log("haproxy.log"))
        # Every request went through one of the instances, with the client's
        # address (each answer names it too: the backend got it from the
        # instance's PROXY header).
        self.assertEqual(sum(split.values()), len(outcomes), served)
        self.assertGreater(split["one"], 10)
        self.assertGreater(split["two"], 10)
        # Once haproxy saw instance one's 503, the other took every client.
        self.assertGreater(after["two"], after["one"])
        one = place.log("one.log")
        self.assertIn(
            f"stopping: /healthz says draining; still accepting for {FLEET_DRAIN_DELAY} s", one
        )
        self.assertNotIn("Traceback", one + place.log("two.log"))
        self.assertRegex(place.log("haproxy.log"), r"Server terminators/one is DOWN")


class ExamplesAreRunTests(SynchronousTestCase):
    """No example goes stale: each file in docs/examples is shown by a page
    and named by a test that runs it."""

    def test_every_example_is_included_by_a_page_and_named_by_a_test(self) -> None:
        pages = "".join(page.read_text() for page in (REPO / "docs").rglob("*.rst"))
        included = set(re.findall(r"literalinclude:: (?:\.\./)?examples/(\S+)", pages))
        files = {
            path.relative_to(EXAMPLES).as_posix()
            for path in EXAMPLES.rglob("*")
            if path.suffix in (".py", ".sh", ".service", ".socket", ".cfg")
            and not {"__pycache__", "_trial_temp"} & set(path.parts)
        }
        self.assertEqual(files, included)
        tests = "".join(test.read_text() for test in (REPO / "tests").glob("test_*.py"))
        for name in sorted(files):
            self.assertIn(f'"{Path(name).name}"', tests, f"no test names {name}")
