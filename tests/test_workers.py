"""``twist schannel --workers N``: a supervisor and N forked workers, as real processes.

Clients are Python's ``ssl`` module and ``openssl s_client``; which worker
served a connection is read from its log line (``worker=PID``), matched by
the client's own port.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from twisted.trial.unittest import FailTest, TestCase

from tests.support.peers import free_port, require
from tests.support.twist import (
    REPO,
    WORKER_STARTED,
    Twist,
    environment,
    run_twist,
    served_fingerprint,
    wait_listening,
    workers_started,
)
from tests.support.workers import Setup, exchange, start_echo_server


@contextmanager
def relayed(setup: Setup) -> Iterator[ssl.SSLSocket]:
    """A TLS connection through the relay, once "hello" came back through it.

    Python's ssl reports an end without close_notify as b"" unless told not
    to: here it raises, so that a cut stream cannot pass for a clean one.
    """
    context = setup.client_context()
    with socket.create_connection(("127.0.0.1", setup.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost",
                                 suppress_ragged_eofs=False) as tls:
            tls.sendall(b"hello")
            if tls.recv(100) != b"hello":
                raise FailTest("the relay did not echo")
            yield tls


def backend_ends(test: WorkersTests, count: int) -> list[str]:
    """How the backend's connections ended, once *count* have (the first is
    wait_for_port's, when the backend started)."""
    deadline = time.monotonic() + 10
    while len(ends := test.ends_file.read_text().splitlines()) < count:
        if time.monotonic() > deadline:
            raise FailTest(f"the backend saw {ends}, not {count} ends")
        time.sleep(0.05)
    return ends


def served_by(twist: Twist, local_port: int) -> int:
    """The worker pid whose log line names the connection from *local_port*."""
    match = twist.wait_for(rf"peer=127\.0\.0\.1:{local_port} .*? worker=(\d+)")
    return int(match.group(1))


class WorkersTests(TestCase):
    """Connections over two workers, resumption across them, and their supervisor."""

    timeout = 120

    def relay(self, setup: Setup, *arguments: str, workers: int = 2,
              env: dict[str, str] | None = None) -> Twist:
        backend, self.ends_file = start_echo_server(self)
        twist = Twist(
            self, "--workers", str(workers), "--listen", setup.listen(),
            "--connect", f"tcp:127.0.0.1:{backend}", *arguments, group=True, env=env,
        )
        workers_started(twist, workers)
        wait_listening(twist, workers)
        return twist

    def test_connections_spread_over_workers(self) -> None:
        """Forty connections are served by both workers, and each line names its worker."""
        setup = Setup(self)
        twist = self.relay(setup)
        pids = set(workers_started(twist, 2))
        ports = [exchange(setup)[0] for _ in range(40)]
        serving = [served_by(twist, port) for port in ports]
        self.assertEqual(set(serving), pids, twist.output)
        supervisor = re.search(r"supervisor (\d+): starting 2 workers", twist.output)
        assert supervisor is not None
        self.assertEqual(int(supervisor.group(1)), twist.process.pid)

    def test_listening_is_said_once(self) -> None:
        """The supervisor, which opened the sockets, says where it listens once; each
        worker, of each generation, says that it is ready."""
        setup = Setup(self)
        status = free_port()
        twist = self.relay(setup, "--status", f"tcp:{status}:interface=127.0.0.1")
        twist.send_signal(signal.SIGHUP)
        workers_started(twist, 2, generation=2)
        wait_listening(twist, 4)
        exchange(setup)
        lines = twist.output.splitlines()
        listening = [line for line in lines if " listening on " in line]
        self.assertEqual(len(listening), 1, twist.output)
        self.assertRegex(
            listening[0],
            rf"\[txschannel\.workers#info\] listening on schannel:tcp:{setup.port}:\S+ at "
            rf"127\.0\.0\.1:{setup.port}$",
        )
        serving = [line for line in lines if "serving /metrics and /status on" in line]
        self.assertEqual(len(serving), 1, twist.output)
        self.assertTrue(serving[0].endswith(f" at 127.0.0.1:{status}"), serving[0])

    def test_every_line_of_a_worker_names_it(self) -> None:
        """A failed handshake, an unreachable backend and each connection's close:
        every line a worker writes ends with worker=PID (Twisted's own too)."""
        setup = Setup(self)
        twist = Twist(
            self, "--workers", "2", "--listen", setup.listen(),
            "--connect", f"tcp:127.0.0.1:{free_port()}", group=True,  # nothing there
        )
        pids = workers_started(twist, 2)
        wait_listening(twist, 2)
        with socket.create_connection(("127.0.0.1", setup.port), timeout=10) as raw:
            plain = raw.getsockname()[1]
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
            raw.recv(100)
        with socket.create_connection(("127.0.0.1", setup.port), timeout=10) as raw:
            tls = raw.getsockname()[1]
            try:
                with setup.client_context().wrap_socket(raw, server_hostname="localhost") as c:
                    self.assertEqual(c.recv(100), b"")  # aborted: no backend
            except OSError:
                pass
        failed = twist.wait_for(
            rf"TLS handshake with 127\.0\.0\.1:{plain} failed: .* worker=(\d+)\n"
        )
        self.assertEqual(served_by(twist, plain), int(failed.group(1)))
        unreachable = twist.wait_for(r"cannot reach tcp:127\.0\.0\.1:\d+: .* worker=(\d+)\n")
        self.assertEqual(served_by(twist, tls), int(unreachable.group(1)))
        twist.send_signal(signal.SIGTERM)
        twist.process.wait(timeout=30)
        stamp = re.compile(r"^\d{4}-\d\d-\d\dT\S+ \[")
        for line in twist.output.splitlines():
            if not stamp.match(line) or "[txschannel.workers#" in line:
                continue  # a traceback's lines, or the supervisor's
            match = re.search(r" worker=(\d+)$", line)
            self.assertIsNotNone(match, line)
            assert match is not None
            self.assertIn(int(match.group(1)), pids, line)
        self.assertEqual(twist.output.count(" worker="), twist.output.count("worker="))
        self.assertNotRegex(twist.output, r"worker=\d+ worker=")

    def test_session_resumed_on_another_worker(self) -> None:
        """A ticket issued by one worker resumes on the other (TLS 1.3 and 1.2).

        The credentials were built once, before the fork, so the workers
        share the ticket keys.
        """
        setup = Setup(self)
        twist = self.relay(setup)
        for maximum in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            context = setup.client_context(maximum)  # a session is its context's
            port, session, reused = exchange(setup, context=context)
            self.assertFalse(reused)
            self.assertIsNotNone(session)
            issuer = served_by(twist, port)
            for _ in range(60):
                port, _, reused = exchange(setup, session=session, context=context)
                if served_by(twist, port) != issuer:
                    break
            else:
                raise FailTest(f"60 connections all went to worker {issuer}")
            self.assertTrue(reused, f"{maximum.name}: not resumed on the other worker")

    def test_dead_worker_replaced(self) -> None:
        """A worker killed with SIGKILL is replaced and logged; clients are still served."""
        setup = Setup(self)
        twist = self.relay(setup)
        first, second = workers_started(twist, 2)
        os.kill(first, signal.SIGKILL)
        twist.wait_for(
            rf"worker {first} was killed by SIGKILL; starting another in its place"
        )
        # Killed so soon after it started, it is replaced after a pause.
        pids = workers_started(twist, 3)
        wait_listening(twist, 3)
        serving = {served_by(twist, exchange(setup)[0]) for _ in range(30)}
        self.assertEqual(serving, {second, pids[2]}, twist.output)

    def test_workers_that_cannot_start_stop_the_supervisor(self) -> None:
        """Workers dying as they start: pauses that double, then exit status 1."""
        setup = Setup(self)
        twist = self.relay(setup)
        killed: set[int] = set()
        deadline = time.monotonic() + 60
        while twist.process.poll() is None:
            if time.monotonic() > deadline:
                raise FailTest(f"the supervisor did not give up:\n{twist.output}")
            for match in WORKER_STARTED.finditer(twist.output):
                pid = int(match.group(1))
                if pid not in killed:
                    killed.add(pid)
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        self.assertEqual(twist.process.returncode, 1, twist.output)
        self.assertIn("starting another in its place in 2 s", twist.output)
        self.assertRegex(twist.output, r"after it started, 5 times in a row: stopping")

    def test_sighup_new_generation_and_drain(self) -> None:
        """SIGHUP: new workers serve the new certificate; old connections finish first."""
        setup = Setup(self)
        twist = self.relay(setup)
        old = workers_started(twist, 2)
        before = served_fingerprint(setup.port)
        # Clients that keep connecting throughout the switch are all served.
        done, served, errors = threading.Event(), [], []

        def keep_connecting() -> None:
            while not done.is_set():
                try:
                    served.append(exchange(setup)[0])
                except Exception as e:
                    errors.append(repr(e))

        connecting = threading.Thread(target=keep_connecting)
        connecting.start()
        self.addCleanup(connecting.join)
        self.addCleanup(done.set)
        context = setup.client_context()
        with socket.create_connection(("127.0.0.1", setup.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"before")
                self.assertEqual(tls.recv(100), b"before")
                setup.ca.issue("localhost", "127.0.0.1").write(setup.server_file)
                twist.send_signal(signal.SIGHUP)
                twist.wait_for(r"SIGHUP: starting generation 2")
                new = workers_started(twist, 2, generation=2)
                wait_listening(twist, 4)
                self.assertNotEqual(served_fingerprint(setup.port), before)
                # The old worker still relays this connection.
                tls.sendall(b"after")
                self.assertEqual(tls.recv(100), b"after")
        for pid in old:
            twist.wait_for(rf"worker {pid} stopped")
        done.set()
        connecting.join()
        self.assertEqual(errors, [])
        # Some by the old generation, some by the new: they spanned the switch.
        serving_then = {served_by(twist, port) for port in served}
        self.assertTrue(serving_then & set(old), twist.output)
        self.assertTrue(serving_then & set(new), twist.output)
        self.assertTrue(set(new).isdisjoint(old))
        serving = {served_by(twist, exchange(setup)[0]) for _ in range(20)}
        self.assertTrue(serving <= set(new), twist.output)

    def test_reload_interval_new_generation_only_on_change(self) -> None:
        """--reload-interval: the same certificate keeps the workers; a new one replaces them."""
        setup = Setup(self)
        twist = self.relay(setup, "--reload-interval", "0.5")
        before = served_fingerprint(setup.port)
        time.sleep(2)  # four reloads of the same files
        self.assertNotIn("generation 2", twist.output)
        setup.ca.issue("localhost", "127.0.0.1").write(setup.server_file)
        twist.wait_for(r"--reload-interval: reloaded .* certificate sha256")
        twist.wait_for(r"--reload-interval: starting generation 2")
        workers_started(twist, 2, generation=2)
        deadline = time.monotonic() + 20
        while served_fingerprint(setup.port) == before:
            if time.monotonic() > deadline:
                raise FailTest(f"the new certificate is not served:\n{twist.output}")
            time.sleep(0.1)

    def test_sigterm_drains_then_exits(self) -> None:
        """SIGTERM: workers stop accepting, finish the open connection, and all exit 0."""
        setup = Setup(self)
        twist = self.relay(setup, "--drain-timeout", "60")
        pids = workers_started(twist, 2)
        with relayed(setup) as tls:
            twist.send_signal(signal.SIGTERM)
            twist.wait_for(r"waiting up to 60 s for 1 open connection")
            # The other worker, which has nothing to drain, has stopped too:
            # until then it may still hold the listening socket open.
            twist.wait_for(r"worker \d+ stopped")
            with self.assertRaises(OSError):
                socket.create_connection(("127.0.0.1", setup.port), timeout=5).close()
            tls.sendall(b"still here")
            self.assertEqual(tls.recv(100), b"still here")
            # A clean end (close_notify both ways) during the drain...
            tls.unwrap()
        self.assertEqual(twist.process.wait(timeout=30), 0, twist.output)
        # ... reaches the backend as a clean end.
        self.assertEqual(backend_ends(self, 2), ["fin", "fin"])
        for pid in pids:
            self.assertIn(f"worker {pid} stopped", twist.output)
        self.assertIn("every worker has stopped", twist.output)

    def test_every_process_signalled_as_systemd_does(self) -> None:
        """systemd's stop signals every process of the service, and the supervisor
        passes its SIGTERM on: each worker gets two, and another arrives during
        the drain. A repeat is one log line; no ReactorNotRunning traceback."""
        setup = Setup(self)
        twist = self.relay(setup, "--drain-timeout", "60")
        pids = workers_started(twist, 2)


        def signal_workers() -> None:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass  # the worker without a connection has nothing to drain

        with relayed(setup) as tls:
            twist.send_signal(signal.SIGTERM)
            signal_workers()
            twist.wait_for(r"waiting up to 60 s for 1 open connection")
            # (The kernel merges a signal into one still pending: only this
            # one, sent during the drain, is sure to be a second.)
            signal_workers()
            twist.wait_for(r"SIGTERM again: already stopping")
            tls.sendall(b"still here")
            self.assertEqual(tls.recv(100), b"still here")
            tls.unwrap()
        self.assertEqual(twist.process.wait(timeout=30), 0, twist.output)
        self.assertNotIn("Traceback", twist.output)
        self.assertNotIn("ReactorNotRunning", twist.output)

    def signal_during_a_drain(self, second: signal.Signals, line: str) -> None:
        """One process drains one connection after SIGTERM; *second* sent then is
        one log line (*line*), and the connection still finishes."""
        setup = Setup(self)
        backend, _ = start_echo_server(self)
        twist = Twist(self, "--listen", setup.listen(), "--connect", f"tcp:127.0.0.1:{backend}",
                      "--drain-timeout", "60")
        twist.wait_for("listening on schannel:")
        with relayed(setup) as tls:
            twist.send_signal(signal.SIGTERM)
            twist.wait_for(r"waiting up to 60 s for 1 open connection")
            twist.send_signal(second)
            twist.wait_for(line)
            tls.sendall(b"still here")
            self.assertEqual(tls.recv(100), b"still here")
            tls.unwrap()
        # twist ends by the SIGTERM it was sent (-15), not by a second signal.
        self.assertEqual(twist.process.wait(timeout=30), -signal.SIGTERM, twist.output)
        self.assertIn("Main loop terminated", twist.output)
        self.assertNotIn("Traceback", twist.output)

    def test_second_sigterm_during_a_drain_without_workers(self) -> None:
        """A second SIGTERM is one line, not ReactorNotRunning. (Not SIGINT: a
        test run in the background inherits it ignored, and Twisted then leaves
        it so.)"""
        self.signal_during_a_drain(signal.SIGTERM, r"SIGTERM again: already stopping")

    def test_sighup_during_a_drain_neither_kills_nor_cuts(self) -> None:
        """A reload signal (logrotate, systemctl reload) while draining is one
        line; the process does not die of it (SIGHUP's default)."""
        self.signal_during_a_drain(signal.SIGHUP, r"SIGHUP while stopping: ignored")

    def test_drain_timeout_aborts_what_is_left(self) -> None:
        """A connection still open when --drain-timeout runs out is aborted, not closed,
        on both sides: the client gets no close_notify, the backend a reset."""
        setup = Setup(self)
        twist = self.relay(setup, "--drain-timeout", "1")
        with relayed(setup) as tls:
            twist.send_signal(signal.SIGTERM)
            twist.wait_for(r"aborting 1 connection\(s\) still open after 1 s")
            # No close_notify: the stream did not end, it was cut.
            with self.assertRaises((ConnectionResetError, ssl.SSLEOFError)):
                tls.recv(100)
        self.assertEqual(twist.process.wait(timeout=30), 0, twist.output)
        self.assertIn("reason=\"aborted: still open when the drain timeout ran out\"",
                      twist.output)
        self.assertEqual(backend_ends(self, 2), ["fin", "reset"])

    def test_killed_worker_ends_its_connections_as_the_kernel_does(self) -> None:
        """A worker killed outright can send nothing more: its client sees no
        close_notify (a truncated stream), but its backend sees a FIN, which looks
        like a clean end. Documented in docs/reliability.rst; nothing can do better
        once the process is gone."""
        setup = Setup(self)
        twist = self.relay(setup)
        with relayed(setup) as tls:
            for pid in workers_started(twist, 2):
                os.kill(pid, signal.SIGKILL)
            with self.assertRaises((ssl.SSLEOFError, ConnectionResetError)):
                tls.recv(100)
        self.assertEqual(backend_ends(self, 2), ["fin", "fin"])

    def test_workers_stop_with_their_supervisor(self) -> None:
        """A supervisor killed with SIGKILL takes its workers with it (they drain)."""
        setup = Setup(self)
        twist = self.relay(setup)
        kill_supervisor(twist)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", setup.port), timeout=5).close()

    def test_systemd_socket_shared(self) -> None:
        """A socket passed the systemd way (LISTEN_FDS) is shared: the workers serve it."""
        setup = Setup(self)
        backend, _ = start_echo_server(self)
        wrapper = Path(self.mktemp() + ".py").resolve()
        wrapper.write_text(
            "import os, socket, sys\n"
            "listening = socket.socket()\n"
            f"listening.bind(('127.0.0.1', {setup.port}))\n"
            "listening.listen(64)\n"
            "os.dup2(listening.fileno(), 3)\n"
            "os.set_inheritable(3, True)\n"
            "os.environ.update(LISTEN_FDS='1', LISTEN_FDNAMES='relay',\n"
            "                  LISTEN_PID=str(os.getpid()))\n"
            "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
        )
        twist = Twist(
            self, "--workers", "2", "--listen",
            f"schannel:systemd:domain=INET:index=0:certificate={setup.server_file}",
            "--connect", f"tcp:127.0.0.1:{backend}", python_wrapper=str(wrapper), group=True,
        )
        pids = set(workers_started(twist, 2))
        wait_listening(twist, 2)
        serving = [served_by(twist, exchange(setup)[0]) for _ in range(40)]
        self.assertTrue(set(serving) <= pids, twist.output)
        self.assertEqual(len(serving), 40)

    def test_metrics_cover_every_worker(self) -> None:
        """/metrics counts the connections of both workers, whichever one answers."""
        setup = Setup(self)
        status = free_port()
        # No interface=: the supervisor's socket and the workers' are on loopback.
        twist = self.relay(setup, "--status", f"tcp:{status}")
        ports = [exchange(setup)[0] for _ in range(12)]
        self.assertEqual(len({served_by(twist, port) for port in ports}), 2, twist.output)
        curl = require("curl")
        for _ in range(4):
            text = subprocess.run(
                [curl, "-sS", f"http://127.0.0.1:{status}/metrics"],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout
            self.assertIn("txschannel_connections_total 12.0", text)
            self.assertIn('txschannel_handshakes_total{status="OK"} 12.0', text)
            self.assertIn("txschannel_connections_open 0.0", text)
        self.assertIn(f"serving /metrics and /status on tcp:{status} at 127.0.0.1:{status}",
                      twist.output)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", status), timeout=10).close()

    def test_metrics_folder_of_a_killed_supervisor_is_swept(self) -> None:
        """A supervisor killed with SIGKILL cannot remove its figures folder; the next
        one with --status does, and leaves alone a folder in use (its lock held)
        and one without a lock (an older version's, or being set up)."""
        temporary = Path(self.mktemp()).resolve()
        temporary.mkdir()
        env = {"TMPDIR": str(temporary)}
        stale = temporary / "txschannel-metrics-stale"
        stale.mkdir()
        (stale / ".lock").touch()
        (stale / "counter_1.db").write_bytes(b"x")
        # Named by any process of the same user: it must not forge a log line.
        forged = temporary / "txschannel-metrics-x\n2026-12-01T00:00:00+0000 [txschannel] forged"
        forged.mkdir()
        (forged / ".lock").touch()
        held = temporary / "txschannel-metrics-held"
        held.mkdir()
        (held / ".lock").touch()
        holder = os.open(held / ".lock", os.O_RDONLY)
        self.addCleanup(os.close, holder)
        fcntl.flock(holder, fcntl.LOCK_EX)
        unlocked = temporary / "txschannel-metrics-nolock"
        unlocked.mkdir()

        twist = self.relay(Setup(self), "--status", f"tcp:{free_port()}:interface=127.0.0.1",
                           env=env)
        self.assertFalse(stale.exists())
        self.assertIn(f"removed {stale}, left by a supervisor that was killed", twist.output)
        self.assertFalse(forged.exists())
        self.assertIn("txschannel-metrics-x\\x0a2026-12-01T00:00:00", twist.output)
        self.assertNotIn("\n2026-12-01T00:00:00+0000 [txschannel] forged", twist.output)
        self.assertTrue(held.exists())
        self.assertTrue(unlocked.exists())
        ours = set(temporary.glob("txschannel-metrics-*")) - {held, unlocked}
        self.assertEqual(len(ours), 1)

        kill_supervisor(twist)
        self.assertTrue(all(folder.exists() for folder in ours))  # left behind

        again = self.relay(Setup(self), "--status", f"tcp:{free_port()}:interface=127.0.0.1",
                           env=env)
        self.assertFalse(any(folder.exists() for folder in ours), again.output)
        self.assertTrue(held.exists())


    def test_metrics_folder_with_a_planted_lock_is_left_alone(self) -> None:
        """A .lock that is a FIFO (which open() would wait on for good), a symbolic
        link or a folder: the supervisor starts, leaves the folder alone, says so
        in one escaped line each, and serves."""
        temporary = Path(self.mktemp()).resolve()
        temporary.mkdir()
        fifo = temporary / "txschannel-metrics-fifo\n2026-12-01T00:00:00+0000 [txschannel] forged"
        fifo.mkdir()
        os.mkfifo(fifo / ".lock")
        elsewhere = temporary / "elsewhere"
        elsewhere.write_text("")
        link = temporary / "txschannel-metrics-link"
        link.mkdir()
        (link / ".lock").symlink_to(elsewhere)
        folder = temporary / "txschannel-metrics-folder"
        (folder / ".lock").mkdir(parents=True)
        # Not even a folder: a FIFO by the folders' name.
        os.mkfifo(temporary / "txschannel-metrics-fifo")

        setup = Setup(self)
        twist = self.relay(setup, "--status", f"tcp:{free_port()}:interface=127.0.0.1",
                           env={"TMPDIR": str(temporary)})
        exchange(setup)
        for planted in (fifo, link, folder):
            self.assertTrue((planted / ".lock").exists() or (planted / ".lock").is_symlink())
        self.assertTrue(elsewhere.exists())
        escaped = "txschannel-metrics-fifo\\x0a2026-12-01T00:00:00+0000 [txschannel] forged"
        for name, kind in (
            (escaped, "a FIFO"), ("txschannel-metrics-link", "a symbolic link"),
            ("txschannel-metrics-folder", "a folder"),
        ):
            self.assertIn(
                f"left {temporary}/{name} alone: its .lock is {kind}, where a supervisor's is "
                "a regular file of this user", twist.output,
            )
        self.assertNotIn("\n2026-12-01T00:00:00+0000 [txschannel] forged", twist.output)
        self.assertEqual(twist.output.count(" alone: "), 3, twist.output)

def kill_supervisor(twist: Twist, workers: int = 2) -> list[int]:
    """SIGKILL the supervisor; return its workers' pids once they have all exited
    (they get SIGTERM from the kernel and drain)."""
    pids = workers_started(twist, workers)
    os.kill(twist.process.pid, signal.SIGKILL)
    twist.process.wait(timeout=10)
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise FailTest(f"workers {pids} outlived their supervisor:\n{twist.output}")
        time.sleep(0.05)
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


class WorkersCommandLineTests(TestCase):
    """What --workers refuses, with one line naming why."""

    def assert_refused(self, option: str, given: str, expected: str) -> None:
        """``twist schannel OPTION GIVEN`` exits 64 with one line saying *expected*."""
        result = run_twist(option, given)
        self.assertEqual(result.returncode, 64)
        self.assertIn(f"{option} {given!r}: {expected}", result.stderr)

    def test_bad_counts(self) -> None:
        self.assert_refused("--workers", "0", "must be from 1 to 1024")
        self.assert_refused("--workers", "two", "expected a number of processes or auto")

    def test_drain_timeout_values(self) -> None:
        """0 (in any spelling) is allowed; a negative or non-number is one line."""
        from txschannel.terminator.options import Options

        for given in ("0", "0.00", "2.5"):
            options = Options()
            options.parseOptions(["--drain-timeout", given, "--connect", "tcp:127.0.0.1:1",
                                  "--listen", "tcp:0:interface=127.0.0.1"])
            self.assertEqual(options.plan.lifecycle.drain_timeout, float(given))
        self.assert_refused("--drain-timeout", "-1", "must be 0 or more")
        self.assert_refused("--drain-timeout", "soon", "expected a number of seconds")

    def test_unix_socket_refused(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        result = run_twist("--workers", "2", "--listen", f"unix:{folder / 'socket'}",
                           "--connect", "tcp:127.0.0.1:1")
        self.assertEqual(result.returncode, 64, result.stderr)
        self.assertIn("--workers shares TCP and systemd sockets only", result.stderr)

    def test_port_in_use_named(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            result = run_twist("--workers", "2", "--listen",
                               f"tcp:{port}:interface=127.0.0.1",
                               "--connect", "tcp:127.0.0.1:1")
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn(
            f"twist schannel: cannot listen on tcp:{port}:interface=127.0.0.1: "
            "Address already in use", result.stderr)

    def test_reactor_option_refused(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "twisted", "--reactor=poll", "schannel", "--workers", "2"],
            capture_output=True, text=True, timeout=60, cwd=REPO,
            env=environment(Path(self.mktemp())),
        )
        self.assertEqual(result.returncode, 64, result.stderr)
        self.assertIn("--workers: a reactor is installed already", result.stderr)

    def test_auto(self) -> None:
        """--workers auto starts one worker per usable CPU."""
        count = len(os.sched_getaffinity(0))
        twist = Twist(self, "--workers", "auto", "--listen",
                      f"schannel:tcp:{free_port()}:interface=127.0.0.1",
                      "--state-dir", os.path.abspath(self.mktemp()), group=True)
        twist.wait_for(rf"supervisor \d+: starting {count} workers")
        self.assertEqual(len(workers_started(twist, count)), count)

