"""``GET /healthz`` on ``--status``, and ``--drain-delay``, from real processes.

Health checks are Python's ``http.client`` and raw sockets; relayed clients
are Python's ``ssl`` through a real ``twist schannel`` to an echo backend.
The fleet behind haproxy is in tests/test_docs_howto.py (FleetHowToTests).
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import threading
import time

from twisted.trial.unittest import FailTest, SynchronousTestCase

from tests.support.edges import ECHO, Edge
from tests.support.peers import free_port
from tests.support.twist import Twist, assert_one_line, run_twist, wait_listening, workers_started
from tests.support.workers import Setup, exchange, start_echo_server


def healthz(status: int) -> tuple[int, str]:
    """One health check: the status code and the body."""
    connection = http.client.HTTPConnection("127.0.0.1", status, timeout=10)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def wait_for_health(status: int, expected: tuple[int, str], timeout: float = 15.0) -> None:
    """Check until /healthz answers *expected* (fails after *timeout*)."""
    deadline = time.monotonic() + timeout
    while (answer := healthz(status)) != expected:
        if time.monotonic() > deadline:
            raise FailTest(f"/healthz answered {answer}, not {expected}")
        time.sleep(0.05)


class HealthzTests(Edge):
    """/healthz: 200 ok while accepting; 503 at limit, 503 draining."""

    def test_ok_then_at_limit_then_ok(self) -> None:
        backend = self.backend(ECHO)
        status = free_port()
        twist, port = self.twist(backend, "--status", f"tcp:{status}", "--max-connections", "1")
        twist.wait_for("serving /metrics and /status on")
        self.assertEqual(healthz(status), (200, "ok\n"))
        with self.tls(port) as client:
            client.sendall(b"x")
            self.assertEqual(client.recv(1), b"x")
            wait_for_health(status, (503, "at limit\n"))
        wait_for_health(status, (200, "ok\n"))
        # Checks are no connections of the service, nor log lines.
        self.assertEqual(twist.output.count("] connection closed peer="), 1, twist.output)

    def test_draining_during_the_drain_without_a_delay(self) -> None:
        backend = self.backend(ECHO)
        status = free_port()
        twist, port = self.twist(backend, "--status", f"tcp:{status}", "--drain-timeout", "60")
        twist.wait_for("serving /metrics and /status on")
        with self.tls(port) as client:
            client.sendall(b"x")
            self.assertEqual(client.recv(1), b"x")
            twist.send_signal(signal.SIGTERM)
            twist.wait_for(r"waiting up to 60 s for 1 open connection")
            # --drain-delay 0 (the default): the listener closed at once.
            with self.assertRaises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=10).close()
            self.assertEqual(healthz(status), (503, "draining\n"))
        self.assertEqual(twist.process.wait(timeout=30), -signal.SIGTERM, twist.output)

    def test_drain_delay_says_draining_while_the_listener_still_accepts(self) -> None:
        backend = self.backend(ECHO)
        status = free_port()
        twist, port = self.twist(backend, "--status", f"tcp:{status}", "--drain-delay", "4")
        twist.wait_for("serving /metrics and /status on")
        self.assertEqual(healthz(status), (200, "ok\n"))
        twist.send_signal(signal.SIGTERM)
        wait_for_health(status, (503, "draining\n"))
        stopping = twist.wait_for(r"stopping: /healthz says draining; still accepting for 4 s")
        # A client the balancer sent before it saw the 503 is still served.
        with self.tls(port) as client:
            client.sendall(b"late")
            self.assertEqual(client.recv(4), b"late")
        self.assertEqual(twist.process.wait(timeout=30), -signal.SIGTERM, twist.output)
        output = twist.output
        served = output.index("] connection closed peer=", stopping.end())
        closed = output.index(f"(TCP Port {port} Closed)")
        self.assertLess(served, closed, output)
        self.assertNotIn("Traceback", output)

    def test_a_flood_of_health_checks_cannot_take_the_relays_descriptors(self) -> None:
        backend = self.backend(ECHO)
        status = free_port()
        # 128 descriptors: 300 health checkers that keep their connection
        # open would take them all, if the status listener accepted them all.
        twist, port = self.twist(backend, "--status", f"tcp:{status}", limit_files=128)
        twist.wait_for("serving /metrics and /status on")
        checkers = self.open_idle(status, 300)
        time.sleep(0.5)
        for checker in checkers:
            # A keep-alive check each, never read: the answers pile up.
            try:
                checker.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            except OSError:
                pass
        time.sleep(1.0)
        self.assert_relays(twist, port)
        # The first checker was answered: the flood was served, in turn.
        checkers[0].setblocking(True)
        checkers[0].settimeout(30)
        self.assertIn(b"200 OK", checkers[0].recv(4096))


class SlowSenderTests(Edge):
    """Slow senders holding every slot of the status listener free them in time."""

    def test_a_health_check_is_answered_while_slow_senders_hold_every_slot(self) -> None:
        backend = self.backend(ECHO)
        status = free_port()
        twist, _ = self.twist(backend, "--status", f"tcp:{status}")
        twist.wait_for("serving /metrics and /status on")
        senders: list[socket.socket] = []
        for _ in range(64):  # the status listener's every slot
            sender = socket.create_connection(("127.0.0.1", status), timeout=10)
            self.addCleanup(sender.close)
            sender.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
            senders.append(sender)
        stop = threading.Event()

        def trickle() -> None:
            # One header byte each every 2 s: well inside the 10 s idle
            # bound, so only a deadline for the whole request frees a slot.
            # At most 25 s, longer than the check below waits.
            deadline = time.monotonic() + 25
            while not stop.wait(2.0) and time.monotonic() < deadline:
                for sender in senders:
                    try:
                        sender.sendall(b"a")
                    except OSError:
                        pass

        trickling = threading.Thread(target=trickle, daemon=True)
        trickling.start()
        self.addCleanup(trickling.join, 30)
        self.addCleanup(stop.set)
        # Before, the senders held their slots as long as they trickled: the
        # check waited in the kernel's queue and was never answered.
        with socket.create_connection(("127.0.0.1", status), timeout=20) as check:
            check.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            answer = b""
            while chunk := check.recv(4096):
                answer += chunk
        stop.set()
        self.assertTrue(answer.startswith(b"HTTP/1.0 200 OK"), answer)
        self.assertTrue(answer.endswith(b"\r\n\r\nok\n"), answer)
        self.assertNotIn("Traceback", twist.output)


class DrainDelayCommandLineTests(SynchronousTestCase):
    def test_bad_values_are_one_line(self) -> None:
        for value, why in (("-1", "must be 0 or more"), ("nan", "must be 0 or more"),
                           ("soon", "expected a number of seconds")):
            result = run_twist("--drain-delay", value)
            assert_one_line(self, result, f"--drain-delay {value!r}: {why}")


class DrainDelayWorkersTests(Edge):
    """--drain-delay with --workers: every worker says draining and accepts on."""

    timeout = 120

    def test_each_worker_says_draining_and_accepts_for_the_delay(self) -> None:
        setup = Setup(self)
        backend, _ = start_echo_server(self)
        status = free_port()
        twist = Twist(
            self, "--workers", "2", "--listen", setup.listen(),
            "--connect", f"tcp:127.0.0.1:{backend}", "--status", f"tcp:{status}",
            "--drain-delay", "4", group=True,
        )
        workers_started(twist, 2)
        wait_listening(twist, 2)
        for _ in range(4):
            self.assertEqual(healthz(status), (200, "ok\n"))
        twist.send_signal(signal.SIGTERM)
        wait_for_health(status, (503, "draining\n"))
        twist.wait_for(r"still accepting for 4 s.*\n(?:.*\n)*.*still accepting for 4 s")
        # Whichever worker answers, and whichever accepts, during the delay.
        for _ in range(4):
            self.assertEqual(healthz(status), (503, "draining\n"))
            exchange(setup, b"late")
        self.assertEqual(twist.process.wait(timeout=60), 0, twist.output)
        self.assertIn("every worker has stopped", twist.output)

    def test_a_new_generation_keeps_saying_ok_and_the_old_one_does_not_wait(self) -> None:
        """SIGHUP replaces the workers, but the service goes on: /healthz never
        says draining (a balancer would take the machine out at every reload),
        and the old workers stop accepting without --drain-delay."""
        setup = Setup(self)
        backend, _ = start_echo_server(self)
        status = free_port()
        twist = Twist(
            self, "--workers", "2", "--listen", setup.listen(),
            "--connect", f"tcp:127.0.0.1:{backend}", "--status", f"tcp:{status}",
            "--drain-delay", "30", group=True,
        )
        old = workers_started(twist, 2)
        wait_listening(twist, 2)
        twist.send_signal(signal.SIGHUP)
        workers_started(twist, 2, generation=2)
        answers = []
        for _ in range(40):
            answers.append(healthz(status))
            exchange(setup)
        self.assertEqual(set(answers), {(200, "ok\n")}, twist.output)
        # Well before the 30 s of --drain-delay.
        for pid in old:
            twist.wait_for(rf"worker {pid} stopped", timeout=20)
        self.assertNotIn("still accepting for", twist.output)
        self.assertEqual(healthz(status), (200, "ok\n"))


class AtLimitWorkersTests(Edge):
    """With --workers, /healthz says at limit for the whole service: while any
    worker that accepts holds its --max-connections, whichever one answers."""

    timeout = 120

    def start(self, setup: Setup, status: int, *extra: str) -> tuple[Twist, list[int]]:
        backend, _ = start_echo_server(self)
        twist = Twist(
            self, "--workers", "2", "--listen", setup.listen(),
            "--connect", f"tcp:127.0.0.1:{backend}", "--status", f"tcp:{status}",
            "--max-connections", "1", *extra, group=True,
        )  # fmt: skip
        pids = workers_started(twist, 2)
        wait_listening(twist, 2)
        return twist, pids

    def hold(self, setup: Setup) -> ssl.SSLSocket:
        """One relayed connection, open until the test closes it: one worker
        (whichever the kernel chose) is at its limit of one."""
        raw = socket.create_connection(("127.0.0.1", setup.port), timeout=10)
        client = setup.client_context().wrap_socket(raw, server_hostname="localhost")
        self.addCleanup(client.close)
        client.sendall(b"x")
        self.assertEqual(client.recv(1), b"x")
        return client

    def answers(self, status: int) -> set[tuple[int, str]]:
        # Each check is a new connection, spread over both workers' status
        # sockets by the kernel: 20 all on one worker would be a 1 in
        # 500,000 chance.
        return {healthz(status) for _ in range(20)}

    def test_at_limit_whichever_worker_answers(self) -> None:
        setup = Setup(self)
        status = free_port()
        self.start(setup, status)
        self.assertEqual(self.answers(status), {(200, "ok\n")})
        client = self.hold(setup)
        wait_for_health(status, (503, "at limit\n"))
        # Before, only the worker at its limit said so: about half the checks.
        self.assertEqual(self.answers(status), {(503, "at limit\n")})
        client.close()
        wait_for_health(status, (200, "ok\n"))
        self.assertEqual(self.answers(status), {(200, "ok\n")})

    def test_a_replaced_worker_at_its_limit_no_longer_counts(self) -> None:
        setup = Setup(self)
        status = free_port()
        twist, _ = self.start(setup, status, "--drain-timeout", "60")
        client = self.hold(setup)
        wait_for_health(status, (503, "at limit\n"))
        twist.send_signal(signal.SIGHUP)
        workers_started(twist, 2, generation=2)
        # The old worker drains its connection and accepts no one: the new
        # generation takes every client. (Before, the old worker, whose
        # status socket stays open while it drains, still said at limit.)
        wait_for_health(status, (200, "ok\n"))
        self.assertEqual(self.answers(status), {(200, "ok\n")})
        # Still held, by the old worker: the drain is not over.
        client.sendall(b"y")
        self.assertEqual(client.recv(1), b"y")
        self.assertNotIn("Traceback", twist.output)

    def test_a_worker_killed_at_its_limit_leaves_no_trace(self) -> None:
        setup = Setup(self)
        status = free_port()
        twist, pids = self.start(setup, status)
        self.hold(setup)
        wait_for_health(status, (503, "at limit\n"))
        # Whichever holds the connection dies at its limit, without a word.
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            twist.wait_for(rf"worker {pid} was killed by SIGKILL")
        wait_listening(twist, 4)
        wait_for_health(status, (200, "ok\n"))
        self.assertEqual(self.answers(status), {(200, "ok\n")})
