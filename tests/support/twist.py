"""A real ``twist schannel`` process for a test: start it, read its log,
run bad command lines, and talk to what it serves (``curl``, the served
certificate's fingerprint, its forked workers).

Processes run from the repository checkout with a throw-away HOME, so
Twisted finds ``twisted/plugins/txschannel_tap.py`` on the path.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from twisted.trial.unittest import FailTest, SynchronousTestCase, TestCase

from tests.support.peers import require

#: The repository checkout (tests/support/ is two levels below it).
REPO = Path(__file__).resolve().parent.parent.parent


def environment(home: Path) -> dict[str, str]:
    """The environment of a fresh machine: an empty HOME, the checkout importable."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_STATE_HOME"}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return env


class Twist:
    """One ``twist schannel`` process for a test; its log is read as it grows.

    *command* runs another ``twist`` subcommand instead (``web``: any
    Twisted application reading endpoint strings).
    """

    def __init__(self, test: TestCase | SynchronousTestCase, *arguments: str,
                 home: Path | None = None, python_wrapper: str | None = None,
                 group: bool = False, command: str = "schannel",
                 env: Mapping[str, str] | None = None,
                 twist_options: tuple[str, ...] = ()) -> None:
        self.home = home or Path(tempfile.mkdtemp(prefix="txschannel-home-"))
        self.log_path = self.home / "twist.log"
        # python_wrapper: a script that prepares the process (say, lowers a
        # resource limit) and then runs Python with the arguments after it.
        wrapper = [python_wrapper] if python_wrapper else []
        # twist_options: twist's own, before the subcommand (--log-level=debug).
        self.argv = [sys.executable, *wrapper, "-m", "twisted", "--log-format=text",
                     *twist_options, command, *arguments]
        with open(self.log_path, "wb") as log:
            # group: a process group of its own, so that stop() also kills
            # the processes it forks (--workers).
            self.group = group
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                env={**environment(self.home), **(env or {})}, start_new_session=group,
            )
        test.addCleanup(self.stop)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 20.0, start: int = 0) -> re.Match[str]:
        """The first match of *pattern* in the log after offset *start*."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.compile(pattern).search(self.output, start)
            if match:
                return match
            if self.process.poll() is not None:
                match = re.compile(pattern).search(self.output, start)
                if match:
                    return match
                raise FailTest(
                    f"twist exited ({self.process.returncode}) before logging {pattern!r}:\n"
                    + self.output
                )
            time.sleep(0.05)
        raise FailTest(f"twist did not log {pattern!r} within {timeout}s:\n{self.output}")

    def send_signal(self, number: int) -> None:
        self.process.send_signal(number)

    def stop(self) -> None:
        if self.group:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        elif self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def run_twist(*arguments: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``twist schannel`` expecting it to exit by itself (bad command lines)."""
    home = home or Path(tempfile.mkdtemp(prefix="txschannel-home-"))
    return subprocess.run(
        [sys.executable, "-m", "twisted", "--log-format=text", "schannel", *arguments],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=environment(home),
    )


def served_fingerprint(port: int, server_name: str = "localhost") -> str:
    """SHA-256 of the certificate a TLS server on loopback presents."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).digest().hex(":").upper()


def curl(*arguments: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [require("curl"), "-sS", "--max-time", str(int(timeout)), *arguments],
        capture_output=True, timeout=timeout + 10,
    )


def assert_one_line(
    test: SynchronousTestCase, result: subprocess.CompletedProcess[str], needle: str
) -> None:
    """*result* failed with one line on stderr, from twist schannel, holding *needle*."""
    test.assertNotEqual(result.returncode, 0, result.stderr)
    test.assertNotIn("Traceback", result.stdout + result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    test.assertEqual(len(lines), 1, result.stderr)
    test.assertIn(needle, lines[0])
    test.assertTrue(lines[0].startswith("twist schannel: "), lines[0])


WORKER_STARTED = re.compile(r"worker (\d+) started \((\d+) of (\d+), generation (\d+)\)")


def workers_started(twist: Twist, count: int, generation: int = 1) -> list[int]:
    """The pids of generation *generation*'s *count* workers, once all have started."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = [int(m.group(1)) for m in WORKER_STARTED.finditer(twist.output)
                if int(m.group(4)) == generation]
        if len(pids) >= count:
            return pids
        if twist.process.poll() is not None:
            raise FailTest(f"twist exited ({twist.process.returncode}):\n{twist.output}")
        time.sleep(0.05)
    raise FailTest(f"{count} workers of generation {generation} did not start:\n{twist.output}")


def wait_listening(twist: Twist, count: int) -> None:
    """Wait until *count* workers say they accept connections (past any earlier
    lines; the supervisor alone says where they listen, once)."""
    deadline = time.monotonic() + 30
    while twist.output.count("ready: accepting connections worker=") < count:
        if time.monotonic() > deadline:
            raise FailTest(f"{count} workers did not listen:\n{twist.output}")
        time.sleep(0.05)
