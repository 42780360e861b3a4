"""``twist schannel --max-connections``, ``--idle-timeout`` and ``--connect-timeout``.

Real ``twist schannel`` processes on loopback, real backends (Python
processes) and Python's ``ssl`` as the client. Waits are generous; no
assertion depends on how fast the machine is, beyond "not served within a
second while paused".
"""

from __future__ import annotations

import errno
import os
import queue
import socket
import ssl
import threading
import time

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from tests.support.edges import ECHO, RECORDER, Edge, read_to_end
from tests.support.peers import free_port
from tests.support.twist import Twist, assert_one_line, run_twist
from txschannel.terminator.limits import ConnectionLimit, LimitBoard
from txschannel.terminator.workers import Supervisor


class MaxConnectionsTests(Edge):
    """At N open connections the listening port pauses; below N it resumes."""

    def test_at_the_limit_new_clients_wait_and_are_served_when_one_closes(self) -> None:
        backend = self.backend(ECHO)
        twist, port = self.twist(backend, "--max-connections", "2")
        first, second = self.tls(port), self.tls(port)
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        for client in (first, second):
            client.sendall(b"x")
            self.assertEqual(client.recv(1), b"x")
        twist.wait_for(r"at --max-connections 2: stopped accepting until a connection closes")

        answers: list[bytes | BaseException] = []

        def third() -> None:
            try:
                with self.tls(port, timeout=30) as client:
                    client.sendall(b"3")
                    answers.append(client.recv(1))
            except BaseException as e:  # reported by the assertion below
                answers.append(e)

        waiting = threading.Thread(target=third, daemon=True)
        waiting.start()
        waiting.join(1.0)
        # The kernel holds the client in its accept queue: no handshake yet.
        self.assertTrue(waiting.is_alive(), f"served while paused: {answers}")
        self.assertEqual(twist.output.count("stopped accepting"), 1, twist.output)

        first.close()
        waiting.join(30)
        self.assertEqual(answers, [b"3"])
        twist.wait_for(r"below --max-connections 2 \(1 open\): accepting again")

    def test_queued_clients_are_served_in_turn_and_none_is_reset(self) -> None:
        # Six clients queue behind a limit of 2. A port accepts up to 100
        # clients per turn of the reactor: before the fix, the first freed
        # slot accepted all six, served one and reset five.
        backend = self.backend(ECHO)
        port = free_port()
        # handshakeTimeout=1: the clients wait longer than that in the
        # queue, and its clock must not have started for them.
        twist = Twist(
            self, "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={self.folder}/server.pem"
            ":handshakeTimeout=1",
            "--connect", f"tcp:127.0.0.1:{backend}", "--max-connections", "2",
        )
        twist.wait_for("listening on")
        held = [self.tls(port), self.tls(port)]
        for tls in held:
            self.addCleanup(tls.close)
            tls.sendall(b"x")
            self.assertEqual(tls.recv(1), b"x")
        twist.wait_for(r"at --max-connections 2: stopped accepting")

        # (number, outcome) as each queued client is served or fails.
        outcomes: queue.Queue[tuple[int, str]] = queue.Queue()
        count = 6
        released = [threading.Event() for _ in range(count)]

        def client(number: int, raw: socket.socket) -> None:
            try:
                with self.client_context().wrap_socket(
                    raw, server_hostname="localhost", suppress_ragged_eofs=False
                ) as tls:
                    tls.sendall(bytes([number]))
                    answer = tls.recv(1)
                    outcomes.put((number, "served" if answer == bytes([number]) else repr(answer)))
                    released[number].wait(60)  # holds its slot until then
            except (OSError, ssl.SSLError) as e:
                outcomes.put((number, f"{type(e).__name__}: {e}"))

        for number in range(count):
            # Connected one after another: the kernel queues them in this order.
            raw = socket.create_connection(("127.0.0.1", port), timeout=60)
            self.addCleanup(raw.close)
            threading.Thread(target=client, args=(number, raw), daemon=True).start()
        self.addCleanup(lambda: [event.set() for event in released])
        time.sleep(1.5)  # longer than handshakeTimeout=1
        self.assertTrue(outcomes.empty(), outcomes.queue)

        # Free one slot at a time: the two held, then each served client in
        # turn. Each time the next client in the queue, and only it, is served.
        frees = [held[1].close, held[0].close] + [event.set for event in released[:count - 2]]
        for number, free in enumerate(frees):
            free()
            self.assertEqual(outcomes.get(timeout=30), (number, "served"), twist.output)
        for event in released:
            event.set()
        self.assertTrue(outcomes.empty(), outcomes.queue)
        self.assertNotIn("were aborted", twist.output)
        self.assertNotIn("over --max-connections", twist.output)


class IdleTimeoutTests(Edge):
    """No bytes either way for the idle timeout aborts both sides, with the reason logged."""

    def test_an_idle_connection_is_aborted_on_both_sides(self) -> None:
        record = self.folder / "record.txt"
        backend = self.backend(RECORDER, str(record))
        twist, port = self.twist(backend, "--idle-timeout", "1")
        started = time.monotonic()
        with self.tls(port, timeout=30) as client:
            client.sendall(b"q" * 100)
            size, how = read_to_end(client)
        self.assertEqual(size, 0)
        # Not a clean end: the stream was cut, not finished by either peer.
        self.assertNotEqual(how, "close_notify")
        self.assertGreaterEqual(time.monotonic() - started, 1.0)
        twist.wait_for(
            r'connection closed .*bytes_in=100 .*reason="idle timeout: no bytes either way '
            r'for 1 s"'
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "100" not in (
            record.read_text() if record.exists() else ""
        ):
            time.sleep(0.05)
        self.assertIn("RESET 100", record.read_text())

    def test_traffic_keeps_a_connection_open(self) -> None:
        backend = self.backend(ECHO)
        twist, port = self.twist(backend, "--idle-timeout", "2")
        with self.tls(port, timeout=30) as client:
            # A fixed count, not a deadline: 25 pings 0.2 s apart keep the
            # connection busy for at least 5 s, well past the 2 s limit, and
            # the log line's byte count does not depend on the machine's pace.
            for _ in range(25):
                client.sendall(b"ping")
                self.assertEqual(client.recv(4), b"ping")
                time.sleep(0.2)
            client.unwrap().close()
        twist.wait_for(r'connection closed .*bytes_in=100 .*reason="(client|backend) closed"')
        self.assertNotIn("idle timeout", twist.output)


class ConnectTimeoutTests(Edge):
    """A backend that does not accept within --connect-timeout aborts the client."""

    def test_a_backend_whose_accept_queue_is_full_times_out(self) -> None:
        # A listening socket that never accepts, its queue filled: the
        # kernel drops further SYNs, so connecting hangs.
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        backend = server.getsockname()[1]
        for _ in range(3):
            filler = socket.socket()
            self.addCleanup(filler.close)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", backend))
        twist, port = self.twist(backend, "--connect-timeout", "1")
        with self.tls(port, timeout=30) as client:
            try:
                client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
                how = "aborted before the write"
            else:
                how = read_to_end(client)[1]
        self.assertNotEqual(how, "close_notify")
        twist.wait_for(
            r'reason="connect endpoint timed out: no connection within --connect-timeout 1 s"'
        )
        twist.wait_for(r"cannot reach tcp:127\.0\.0\.1:\d+: no connection within "
                       r"--connect-timeout 1 s")


class HandOverTests(SynchronousTestCase):
    """A slot counted at accept (PROXY header reader) passes to the gate."""

    def test_the_gate_takes_the_slot_and_an_unclaimed_one_is_given_back(self) -> None:
        limit = ConnectionLimit(2, announce=False)
        self.assertTrue(limit.opened())
        # The protocol started counts the connection: no second slot.
        limit.hand_over(limit.opened)
        self.assertEqual(limit.open, 1)
        self.assertTrue(limit.opened())
        self.assertTrue(limit.paused)
        # A protocol that counts nothing: the slot is freed, accepting resumes.
        limit.hand_over(lambda: None)
        self.assertEqual((limit.open, limit.paused), (1, False))
        # And no slot is left to be taken for free later.
        self.assertTrue(limit.opened())
        self.assertFalse(limit.opened())
        self.assertEqual(limit.open, 2)


class BadLimitTests(SynchronousTestCase):
    """Bad values are one line naming the option, exit status 64."""

    def assertRefused(self, option: str, value: str, needle: str) -> None:
        result = run_twist(option, value)
        assert_one_line(self, result, f"{option} {value!r}: {needle}")
        self.assertEqual(result.returncode, 64)

    def test_max_connections(self) -> None:
        self.assertRefused("--max-connections", "0", "must be at least 1")
        self.assertRefused("--max-connections", "many", "expected a whole number")

    def test_timeouts(self) -> None:
        self.assertRefused("--idle-timeout", "-1", "must be above 0")
        self.assertRefused("--idle-timeout", "nan", "must be above 0")
        self.assertRefused("--connect-timeout", "soon", "expected a number of seconds")


class LimitBoardTests(SynchronousTestCase):
    """The workers' board: one cell each, seen across fork, freed with the worker."""

    def test_a_mark_in_a_forked_child_is_seen_by_its_parent(self) -> None:
        board = LimitBoard(cells=4)
        cell = board.take()
        assert cell is not None
        self.assertFalse(board.any_at_limit())
        pid = os.fork()
        if pid == 0:  # the child: a worker marking its own cell
            board.mark(cell, True)
            os._exit(0)
        os.waitpid(pid, 0)
        self.assertTrue(board.any_at_limit())
        # Given back (the worker is gone): cleared, and free for the next.
        board.give_back(cell)
        self.assertFalse(board.any_at_limit())
        self.assertEqual(board.take(), cell)

    def test_cells_run_out_and_come_back(self) -> None:
        board = LimitBoard(cells=2)
        first, second = board.take(), board.take()
        self.assertEqual({first, second}, {0, 1})
        self.assertIsNone(board.take())
        board.give_back(first)
        self.assertEqual(board.take(), first)

    def test_a_fork_that_fails_gives_its_cell_back(self) -> None:
        supervisor = Supervisor(
            1, [{}], Logger(), reload=lambda why: False, check_validity=lambda: None,
            drain_timeout=1.0, board=LimitBoard(cells=1),
        )

        def no_fork() -> int:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

        self.patch(os, "fork", no_fork)
        self.assertRaises(OSError, supervisor._start, 0)
        self.assertEqual(supervisor.board.take(), 0)
