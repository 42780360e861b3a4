"""A normal ``pip install`` makes ``schannel:`` work in every Twisted program.

Twisted finds endpoint parsers by scanning ``twisted/plugins`` on
``sys.path``; that only works from an installed wheel if the wheel carries
``twisted/plugins/txschannel_endpoints.py`` (and no ``__init__.py`` that
would shadow Twisted's own package). A test run from the repository would
find the plugin in the source tree and prove nothing, so these tests build
the wheel, install it into a fresh virtual environment, and run everything
from a folder outside the repository.

The venv is built once for the module (about ten seconds with pip's cache)
and shared by its tests.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import trustme
from twisted.trial.unittest import FailTest, SynchronousTestCase

from tests.support.peers import free_port, require, wait_for_port

REPO = Path(__file__).resolve().parent.parent

# Everything that is not part of the source: other venvs, caches, builds.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "_trial_temp*", "__pycache__",
    ".mypy_cache", ".ruff_cache", ".hypothesis", "_build", "dropin.cache",
)  # fmt: skip


class Installed:
    """A fresh venv with txschannel installed from its wheel, and files to use."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="txschannel-install-"))
        atexit.register(shutil.rmtree, self.root, True)
        # Build from a copy, so that the build leaves nothing in the
        # repository and sees exactly the files a checkout has.
        source = self.root / "source"
        shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
        self.venv = self.root / "venv"
        self._run([sys.executable, "-m", "venv", str(self.venv)])
        wheels = self.root / "wheels"
        self._run([str(self.pip), "wheel", "--no-deps", "-w", str(wheels), str(source)])
        found = sorted(wheels.glob("txschannel-*.whl"))
        if len(found) != 1:
            raise FailTest(f"expected one txschannel wheel, found {found}")
        self.wheel = found[0]
        self._run([str(self.pip), "install", str(self.wheel)])

        # A working folder far from the repository, holding the PKI.
        self.outside = self.root / "outside"
        self.outside.mkdir()
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(self.outside / "ca.pem"))
        server = ca.issue_cert("localhost", "127.0.0.1")
        server.private_key_and_cert_chain_pem.write_to_path(str(self.outside / "server.pem"))

    @property
    def pip(self) -> Path:
        return self.venv / "bin" / "pip"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def twist(self) -> Path:
        return self.venv / "bin" / "twist"

    def _run(self, argv: list[str]) -> None:
        result = subprocess.run(
            argv, capture_output=True, timeout=300, check=False, env=_clean_env()
        )
        if result.returncode != 0:
            raise FailTest(
                f"{' '.join(argv)} failed ({result.returncode}):\n"
                + result.stdout.decode(errors="replace")[-3000:]
                + result.stderr.decode(errors="replace")[-3000:]
            )

    def script(self, code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run *code* with the venv's Python, from the outside folder."""
        return subprocess.run(
            [str(self.python), "-c", textwrap.dedent(code)],
            cwd=self.outside,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=_clean_env(),
        )


def _clean_env() -> dict[str, str]:
    # No PYTHONPATH (it could point at the repository) and no venv of ours.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(sys.prefix)
    )
    return env


_installed: Installed | None = None


def installed() -> Installed:
    """The module's venv, built on first use."""
    global _installed
    if _installed is None:
        _installed = Installed()
    return _installed


class WheelTests(SynchronousTestCase):
    """The wheel carries the plugin module the way Twisted needs it."""

    def test_wheel_carries_the_plugin_module_and_no_plugins_init(self) -> None:
        names = zipfile.ZipFile(installed().wheel).namelist()
        self.assertIn("twisted/plugins/txschannel_endpoints.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertIn("txschannel/endpoints.py", names)


class DiscoveryTests(SynchronousTestCase):
    """From outside the repository, Twisted finds the installed parsers."""

    def test_get_plugins_lists_both_parsers(self) -> None:
        result = installed().script(
            """
            import json, txschannel
            from twisted.plugin import getPlugins
            from twisted.internet.interfaces import (
                IStreamClientEndpointStringParserWithReactor,
                IStreamServerEndpointStringParser,
            )
            print(json.dumps({
                "server": [p.prefix for p in getPlugins(IStreamServerEndpointStringParser)],
                "client": [
                    p.prefix for p in getPlugins(IStreamClientEndpointStringParserWithReactor)
                ],
                "module": txschannel.__file__,
            }))
            """
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        found = json.loads(result.stdout)
        self.assertIn("schannel", found["server"])
        self.assertIn("schannel", found["client"])
        # The installed copy, not the repository's.
        self.assertTrue(found["module"].startswith(str(installed().venv)), found["module"])

    def test_bad_string_error_reaches_the_caller_from_the_installed_plugin(self) -> None:
        result = installed().script(
            """
            from twisted.internet import reactor
            from twisted.internet.endpoints import serverFromString
            try:
                serverFromString(reactor, "schannel:tcp:0:certificate=server.pem:colour=blue")
            except ValueError as e:
                print(e)
            """
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("unknown option 'colour'", result.stdout)


_SCRIPT = """
import sys
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString, connectProtocol, serverFromString
from twisted.internet.protocol import Factory, Protocol


class Reply(Protocol):
    def dataReceived(self, data):
        self.transport.write(b"reply to " + data)
        self.transport.loseConnection()


class Ask(Protocol):
    def connectionMade(self):
        self.got = b""
        self.transport.write(b"own client\\n")

    def dataReceived(self, data):
        self.got += data

    def connectionLost(self, reason):
        print("OWN:", self.got.decode().strip(), flush=True)


def listening(port):
    number = port.getHost().port
    print("PORT", number, flush=True)
    client = clientFromString(reactor, f"schannel:tcp:localhost:{number}:trustRoots=ca.pem")
    connectProtocol(client, Ask())


server = serverFromString(reactor, "schannel:tcp:0:interface=127.0.0.1:certificate=server.pem")
server.listen(Factory.forProtocol(Reply)).addCallback(listening)
# Serve until the test kills us, or a minute at most.
reactor.callLater(60, reactor.stop)
reactor.run()
"""


class ScriptTests(SynchronousTestCase):
    """A script using schannel: strings talks TLS to its own client and to real peers."""

    def test_script_serves_openssl_curl_and_its_own_client(self) -> None:
        openssl = require("openssl")
        curl = require("curl")
        outside = installed().outside
        (outside / "serve.py").write_text(_SCRIPT)
        with Process([str(installed().python), "serve.py"]) as script:
            port = _read_port(script)
            own = _read_line(script)
            self.assertEqual(own, "OWN: reply to own client")
            result = subprocess.run(
                [
                    openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                    "localhost", "-CAfile", str(outside / "ca.pem"), "-verify_return_error",
                    "-quiet",
                ],
                input=b"from openssl\n", capture_output=True, timeout=30, check=False,
            )  # fmt: skip
            self.assertIn(b"reply to from openssl", result.stdout, result.stderr)
            result = subprocess.run(
                [
                    curl, "--silent", "--show-error", "--max-time", "20", "--http0.9",
                    "--cacert", str(outside / "ca.pem"),
                    "--resolve", f"localhost:{port}:127.0.0.1", f"https://localhost:{port}/",
                ],
                capture_output=True, timeout=30, check=False,
            )  # fmt: skip
            # The toy server answers without HTTP headers (HTTP/0.9 style).
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertTrue(result.stdout.startswith(b"reply to GET / HTTP/1.1"), result.stdout)


class Process:
    """A process run from the outside folder for one test; killed on exit."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            argv,
            cwd=installed().outside,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_clean_env(),
        )

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> bytes:
        """Kill it (if still running) and return everything it printed."""
        if self.process.poll() is None:
            self.process.kill()
        out, _ = self.process.communicate(timeout=10)
        return out or b""


def _read_line(peer: Process) -> str:
    assert peer.process.stdout is not None
    line = peer.process.stdout.readline().decode(errors="replace").strip()
    if not line:
        raise FailTest(f"the script ended early: {peer.stop().decode(errors='replace')}")
    return line


def _read_port(peer: Process) -> int:
    line = _read_line(peer)
    if not line.startswith("PORT "):
        raise FailTest(f"expected 'PORT n', got {line!r}: {peer.stop().decode(errors='replace')}")
    return int(line.split()[1])


class TwistWebTests(SynchronousTestCase):
    """``twist web --listen schannel:...`` serves files that curl downloads."""

    def test_twist_web_serves_a_file_over_schannel(self) -> None:
        curl = require("curl")
        outside = installed().outside
        site = outside / "site"
        site.mkdir(exist_ok=True)
        (site / "hello.txt").write_text("hello from twist web over schannel\n")
        port = free_port()
        listen = f"schannel:tcp:{port}:interface=127.0.0.1:certificate=server.pem"
        argv = [str(installed().twist), "web", "--listen", listen, "--path", str(site)]
        with Process(argv) as twist:
            wait_for_port(port, timeout=30)
            result = subprocess.run(
                [
                    curl, "--silent", "--show-error", "--max-time", "20",
                    "--cacert", str(outside / "ca.pem"),
                    "--resolve", f"localhost:{port}:127.0.0.1",
                    f"https://localhost:{port}/hello.txt",
                ],
                capture_output=True, timeout=30, check=False,
            )  # fmt: skip
            self.assertEqual(
                result.returncode, 0, result.stderr + twist.stop()
            )
        self.assertEqual(result.stdout, b"hello from twist web over schannel\n")
