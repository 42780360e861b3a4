"""systemd readiness: the test plays systemd's side of ``$NOTIFY_SOCKET``.

systemd binds a Unix datagram socket, names it in ``NOTIFY_SOCKET``, and
reads each datagram with the sender's credentials (``SO_PASSCRED``): with
the default ``NotifyAccess=main`` it heeds only the main process. So does
this test: every message is taken with the PID that sent it.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.peers import free_port
from tests.support.systemd import Systemd
from tests.support.twist import Twist
from txschannel.terminator import notify
from txschannel.testing import CertificateAuthority


def connectable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError:
        return False
    return True


class SingleProcessTests(SynchronousTestCase):
    """``twist schannel`` as one process: READY, RELOADING/READY, STOPPING."""

    def start(self, systemd: Systemd, *arguments: str) -> tuple[Twist, int]:
        folder = Path(tempfile.mkdtemp(prefix="txschannel-notify-"))
        server = CertificateAuthority().issue("localhost").write(folder / "server.pem")
        port = free_port()
        twist = Twist(
            self, "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={server}", *arguments,
            env={"NOTIFY_SOCKET": systemd.name},
        )  # fmt: skip
        return twist, port

    def test_ready_once_listening_then_reload_then_stopping(self) -> None:
        systemd = Systemd(self)
        status = free_port()
        twist, port = self.start(systemd, "--status", f"tcp:{status}")
        pid, message = systemd.receive()
        self.assertEqual((pid, message), (twist.process.pid, "READY=1"))
        # Ready means bound: both ports take connections now, without a wait.
        self.assertTrue(connectable(port))
        self.assertTrue(connectable(status))
        twist.send_signal(signal.SIGHUP)
        pid, message = systemd.receive()
        self.assertEqual(pid, twist.process.pid)
        reloading, stamp = message.split("\n")
        self.assertEqual(reloading, "RELOADING=1")
        # CLOCK_MONOTONIC is the same clock for every process of the machine.
        microseconds = int(stamp.removeprefix("MONOTONIC_USEC="))
        self.assertLessEqual(microseconds, time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
        self.assertEqual(systemd.receive(), (twist.process.pid, "READY=1"))
        twist.wait_for("SIGHUP: reloaded")
        twist.send_signal(signal.SIGTERM)
        self.assertEqual(systemd.receive(), (twist.process.pid, "STOPPING=1"))
        twist.process.wait(timeout=30)

    def test_abstract_socket_name(self) -> None:
        systemd = Systemd(self, abstract=True)
        twist, port = self.start(systemd)
        self.assertEqual(systemd.receive(), (twist.process.pid, "READY=1"))

    def test_no_ready_when_a_port_is_taken(self) -> None:
        systemd = Systemd(self)
        taken = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(taken.close)
        port = free_port()
        twist = Twist(
            self, "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--listen", f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1",
            "--connect", "tcp:127.0.0.1:9",
            env={"NOTIFY_SOCKET": systemd.name},
        )  # fmt: skip
        twist.process.wait(timeout=30)
        self.assertNotEqual(twist.process.returncode, 0)
        systemd.nothing_more(wait=0.5)


class WorkersTests(SynchronousTestCase):
    """``--workers``: only the supervisor (systemd's main PID) speaks."""

    def test_only_the_supervisor_notifies(self) -> None:
        systemd = Systemd(self)
        port = free_port()
        twist = Twist(
            self, "--workers", "2", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--connect", "tcp:127.0.0.1:9",
            env={"NOTIFY_SOCKET": systemd.name}, group=True,
        )  # fmt: skip
        self.assertEqual(systemd.receive(), (twist.process.pid, "READY=1"))
        twist.wait_for(r"worker \d+ started \(2 of 2")
        twist.send_signal(signal.SIGHUP)
        self.assertEqual(systemd.receive()[0], twist.process.pid)  # RELOADING=1
        self.assertEqual(systemd.receive(), (twist.process.pid, "READY=1"))
        twist.send_signal(signal.SIGTERM)
        self.assertEqual(systemd.receive(), (twist.process.pid, "STOPPING=1"))
        twist.process.wait(timeout=60)
        # Nothing from the workers, ever.
        systemd.nothing_more(wait=0.5)


class NotifyFunctionTests(SynchronousTestCase):
    """:func:`notify.notify` itself."""

    def test_without_the_variable_nothing_is_sent(self) -> None:
        self.assertFalse(notify.notify("READY=1", environ={}))

    def test_a_socket_that_is_gone_is_not_an_error(self) -> None:
        folder = tempfile.mkdtemp(prefix="txschannel-notify-")
        environ = {"NOTIFY_SOCKET": os.path.join(folder, "gone")}
        self.assertFalse(notify.notify("READY=1", environ=environ))
