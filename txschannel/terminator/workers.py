"""``--workers N``: N processes serve the same listening sockets.

The process that ``twist schannel --workers N`` starts becomes a
*supervisor* that never runs a reactor. It parses the command line with a
:class:`RecordingReactor` standing in for Twisted's (so every error is
reported once, before anything listens), opens the listening sockets
itself, builds the credentials, and then forks the workers. A forked
worker installs a fresh reactor, adopts its sockets and carries on as an
ordinary ``twist schannel`` process.

Why fork, and why from a process without a reactor:

- credentials built before the fork are the same OpenSSL contexts in every
  worker, session-ticket keys included, so a ticket issued by one worker
  resumes a session on any other (pyOpenSSL has no call to set ticket keys);
- a reactor holds an ``epoll`` descriptor, which a forked child would share
  with its parent and siblings; the workers each install their own.

Each TCP listen endpoint gets one socket per worker, bound with
``SO_REUSEPORT`` so that the kernel spreads new connections over the
workers; a socket passed by systemd is shared by all. The supervisor keeps
every socket open, so connections waiting in a socket's queue survive a
worker that dies or is replaced.

The supervisor replaces a worker that dies (logging why), starts a new
generation on ``SIGHUP`` and at ``--reload-interval`` when a certificate
changed (the old generation drains and exits: it is sent ``SIGUSR2``, which
it takes as ``SIGTERM`` without ``--drain-delay``, since the service goes
on), and on ``SIGTERM``/``SIGINT`` passes the signal on and waits for every
worker to drain.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from twisted.internet.abstract import isIPv6Address
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorPluggableNameResolver,
    IReactorSocket,
    IReactorTCP,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from txschannel.terminator import notify
from txschannel.terminator.limits import LimitBoard

__all__ = [
    "ListenRequest",
    "RecordingReactor",
    "AdoptingReactor",
    "Supervisor",
    "Worker",
    "WorkersError",
    "open_sockets",
    "record_listening",
    "worker_count",
]

#: A worker that exits sooner than this after it started is replaced only
#: after a pause, which doubles with each such exit in a row (up to
#: _LONGEST_PAUSE). Five in a row in the supervisor's first
#: _STARTUP_SECONDS stop it: the workers cannot start at all. Later, a
#: client that can crash workers must not be able to stop the service, so
#: the supervisor goes on replacing them.
_QUICK_EXIT_SECONDS = 1.0
_QUICK_EXITS_ALLOWED = 5
_STARTUP_SECONDS = 30.0
_LONGEST_PAUSE = 30.0
#: Signals the supervisor waits for (blocked, and taken with sigtimedwait).
_SIGNALS = (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
#: prctl(2): the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1
#: What the supervisor sends a worker of an old generation: stop as on
#: SIGTERM, but the service goes on (see Worker.replaced).
_REPLACED = signal.SIGUSR2


class WorkersError(Exception):
    """A listen endpoint that the workers cannot share; the message names why."""


def worker_count(text: str) -> int:
    """``--workers``' value: a count of at least 1, or ``auto`` (the usable CPUs).

    :raises ValueError: naming what was expected.
    """
    if text.strip().lower() == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--workers {text!r}: expected a number of processes or auto") from None
    if not 1 <= value <= 1024:
        raise ValueError(f"--workers {text!r}: must be from 1 to 1024")
    return value


# -- what the endpoints ask for -------------------------------------------------


@dataclass(frozen=True)
class ListenRequest:
    """One listening socket an endpoint asked the reactor for.

    ``kind`` is ``"tcp"`` (``port``, ``interface``, ``backlog``) or
    ``"adopt"`` (an inherited descriptor ``fd`` of ``family``, such as a
    systemd socket, and ``duplicate``, a descriptor of the same socket that
    outlives the endpoint's closing ``fd``).
    """

    kind: str
    port: int = 0
    interface: str = ""
    backlog: int = 50
    fd: int = -1
    family: int = socket.AF_INET
    duplicate: int = -1

    @property
    def key(self) -> tuple[object, ...]:
        """What identifies the request when the worker's endpoint asks again."""
        if self.kind == "tcp":
            return ("tcp", self.interface, self.port)
        return ("adopt", self.fd)


@implementer(IListeningPort)
class _NotListening:
    """What the recording reactor hands back: nothing listens yet."""

    def __init__(self, request: ListenRequest) -> None:
        self.request = request

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred[None]:
        return succeed(None)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", self.request.interface or "0.0.0.0", self.request.port)


@implementer(IReactorTCP, IReactorSocket, IReactorPluggableNameResolver)
class RecordingReactor:
    """Stands in for the reactor while the supervisor parses the command line.

    Endpoints keep it and never use it, except that asking one to listen
    records what it asked for (:attr:`requests`). Anything else an endpoint
    might do with a reactor (connect, call later) is an error: the
    supervisor must not do it.
    """

    nameResolver: Any = None

    def __init__(self) -> None:
        self.requests: list[ListenRequest] = []

    def listenTCP(
        self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = ""
    ) -> _NotListening:
        request = ListenRequest("tcp", port=port, interface=interface, backlog=backlog)
        self.requests.append(request)
        return _NotListening(request)

    def adoptStreamPort(
        self, fileDescriptor: int, addressFamily: int, factory: IProtocolFactory
    ) -> _NotListening:
        # Twisted's endpoint closes the descriptor once it is adopted.
        request = ListenRequest(
            "adopt", fd=fileDescriptor, family=addressFamily, duplicate=os.dup(fileDescriptor)
        )
        self.requests.append(request)
        return _NotListening(request)

    def listenUNIX(self, address: str, factory: IProtocolFactory, *args: object,
                   **kwargs: object) -> NoReturn:
        raise WorkersError(
            "--workers shares TCP and systemd sockets only; a UNIX socket needs one "
            "process (leave --workers out)"
        )

    def __getattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"the supervisor parses endpoints without a reactor ({name})")


def record_listening(
    endpoint: IStreamServerEndpoint, reactor: RecordingReactor
) -> list[ListenRequest]:
    """The sockets *endpoint*, parsed with *reactor*, listens on.

    A ``schannel:`` endpoint is asked through its inner endpoint, so that no
    TLS factory (and no reactor) is made.

    :raises WorkersError: the endpoint cannot be shared by workers.
    """
    inner = getattr(endpoint, "inner", endpoint)
    before = len(reactor.requests)
    failures: list[BaseException] = []

    def failed(failure: Failure) -> None:
        failures.append(failure.value or WorkersError(failure.getErrorMessage()))

    inner.listen(Factory()).addErrback(failed)
    if failures:
        error = failures[0]
        if isinstance(error, WorkersError):
            raise error
        raise WorkersError(f"cannot listen: {error}")
    for request in reactor.requests[before:]:
        if request.kind == "adopt":
            # Back under its own number, for the workers' endpoints to find.
            os.dup2(request.duplicate, request.fd, inheritable=False)
    if len(reactor.requests) == before:
        raise WorkersError(
            f"--workers cannot share {type(inner).__name__} listening ports (TCP and systemd "
            "sockets only)"
        )
    return reactor.requests[before:]


def open_sockets(
    requests: Sequence[ListenRequest], count: int
) -> list[dict[tuple[object, ...], socket.socket]]:
    """For each of *count* workers, its listening socket for every request (by key).

    A TCP request gets one socket per worker, all bound to the same address
    with ``SO_REUSEPORT``; port 0 is chosen once and shared. An adopted
    descriptor is shared as it is.

    :raises OSError: binding failed (the caller names the endpoint).
    """
    slots: list[dict[tuple[object, ...], socket.socket]] = [{} for _ in range(count)]
    for request in requests:
        if request.kind == "adopt":
            shared = socket.socket(fileno=request.duplicate)
            shared.setblocking(False)
            for slot in slots:
                slot[request.key] = shared
            continue
        family = socket.AF_INET6 if isIPv6Address(request.interface) else socket.AF_INET
        port = request.port
        for slot in slots:
            listening = socket.socket(family, socket.SOCK_STREAM)
            try:
                listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                listening.bind((request.interface, port))
                listening.listen(request.backlog)
            except OSError:
                listening.close()
                raise
            listening.setblocking(False)
            port = listening.getsockname()[1]
            slot[request.key] = listening
    return slots


class AdoptingReactor:
    """The worker's reactor, but listening means adopting the supervisor's socket.

    Everything else is passed to *reactor*, which this object provides the
    interfaces of.
    """

    def __init__(self, reactor: Any, sockets: Mapping[tuple[object, ...], socket.socket]) -> None:
        self._reactor = reactor
        self._sockets = sockets
        directlyProvides(self, providedBy(reactor))

    def listenTCP(
        self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = ""
    ) -> IListeningPort:
        shared = self._sockets.get(ListenRequest("tcp", port=port, interface=interface).key)
        if shared is None:
            raise WorkersError(f"the supervisor opened no socket for {interface}:{port}")
        return self._adopt(shared, factory)

    def adoptStreamPort(
        self, fileDescriptor: int, addressFamily: int, factory: IProtocolFactory
    ) -> IListeningPort:
        shared = self._sockets.get(ListenRequest("adopt", fd=fileDescriptor).key)
        if shared is None:
            listening: IListeningPort = self._reactor.adoptStreamPort(
                fileDescriptor, addressFamily, factory
            )
            return listening
        return self._adopt(shared, factory)

    def _adopt(self, shared: socket.socket, factory: IProtocolFactory) -> IListeningPort:
        listening: IListeningPort = self._reactor.adoptStreamPort(
            shared.fileno(), shared.family, factory
        )
        # The port has a duplicate: once it stops listening, nothing here
        # keeps the socket open.
        shared.close()
        return listening

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


# -- the supervisor ---------------------------------------------------------------


@dataclass
class Worker:
    """What a forked worker is told: which of the workers it is, its sockets,
    and its cell on the supervisor's :class:`LimitBoard` (``None``: none was
    free)."""

    slot: int
    count: int
    generation: int
    sockets: Mapping[tuple[object, ...], socket.socket]
    supervisor: int
    board: LimitBoard | None = None
    cell: int | None = None

    def replaced(self) -> bool:
        """Whether this worker stops because a new generation took over.

        The service goes on then: the worker neither says ``draining`` on
        ``/healthz`` (a load balancer would take the whole machine out at
        every reload) nor waits ``--drain-delay`` before it stops accepting.
        """
        return _replaced


#: Set in a worker by _REPLACED from its supervisor.
_replaced = False


def _on_replaced(number: int, frame: object) -> None:
    global _replaced
    _replaced = True
    # Then stop as on SIGTERM, through the reactor's own handler.
    os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class _Running:
    slot: int
    generation: int
    started: float
    stopping: bool = False
    cell: int | None = None


#: The folders where supervisors keep their workers' ``--status`` figures
#: (``prometheus_client``'s multiprocess files) are named with this prefix,
#: in the temporary directory.
METRICS_PREFIX = "txschannel-metrics-"
#: In each such folder: a file that its supervisor holds locked (``flock``)
#: for as long as it, or any worker it forked, lives.
_METRICS_LOCK = ".lock"


@dataclass
class Sweep:
    """What :func:`sweep_metrics_folders` did.

    :ivar removed: the folders removed.
    :ivar skipped: the folders left alone because their lock file is not
        what a supervisor makes (a FIFO, a link, a folder, another user's
        file), each with why: something else put it there.
    """

    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def make_metrics_folder() -> tuple[str, int]:
    """A new folder for the workers' figures, and the descriptor that holds its lock.

    Workers inherit the descriptor by ``fork``, and with it the lock. The
    lock is taken on a file of another name that is then renamed into
    place, so a folder whose lock file exists is locked until its last
    process is gone: :func:`sweep_metrics_folders` in another supervisor
    can never take a folder that is still being set up.
    """
    folder = tempfile.mkdtemp(prefix=METRICS_PREFIX)
    staging = os.path.join(folder, _METRICS_LOCK + ".new")
    descriptor = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    os.rename(staging, os.path.join(folder, _METRICS_LOCK))
    return folder, descriptor


def sweep_metrics_folders(directory: str | None = None) -> Sweep:
    """Remove the figures folders that supervisors killed with ``SIGKILL`` left.

    A folder is removed only if it is a directory of this user (not a
    link), its lock file is a regular file of this user, and its lock is
    free: its supervisor and all its workers are gone. Anything else
    (another user's folder, one from an older version without a lock, one
    in use) is left alone. Nothing here waits: a FIFO or a device named as
    the lock file is opened without blocking and then refused, and the lock
    is only tried.

    :param directory: where to look; the temporary directory by default.
    """
    directory = directory or tempfile.gettempdir()
    sweep = Sweep()
    try:
        names = os.listdir(directory)
    except OSError:
        return sweep
    for name in names:
        if not name.startswith(METRICS_PREFIX):
            continue
        path = os.path.join(directory, name)
        try:
            # O_DIRECTORY fails on a FIFO before opening it; O_NONBLOCK anyway.
            folder = os.open(
                path,
                os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            )
        except OSError:
            continue  # not a folder (a link to one included), or gone
        try:
            lock = _stale_lock(folder)
        except _Planted as planted:
            sweep.skipped.append((path, str(planted)))
            continue
        finally:
            os.close(folder)
        if lock is None:
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(lock)
        sweep.removed.append(path)
    return sweep


class _Planted(Exception):
    """A figures folder's lock file is not one a supervisor makes: why."""


def _stale_lock(folder: int) -> int | None:
    """The lock file of the folder open as *folder*, locked, if the folder is
    stale; ``None`` to leave it alone (another user's, no lock file, in use).

    :raises _Planted: the lock file is not a regular file of this user.
    """
    if os.fstat(folder).st_uid != os.getuid():
        return None
    try:
        # O_NONBLOCK: opening a FIFO for reading would wait for a writer.
        # O_NOFOLLOW: a link could lead anywhere (it fails with ELOOP).
        descriptor = os.open(
            _METRICS_LOCK,
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
            dir_fd=folder,
        )
    except FileNotFoundError:
        return None  # an older version's folder, or one being set up
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _Planted(f"its {_METRICS_LOCK} is a symbolic link") from None
        raise _Planted(f"its {_METRICS_LOCK} cannot be opened ({e.strerror})") from None
    try:
        info = os.fstat(descriptor)
        if stat.S_ISDIR(info.st_mode):
            raise _Planted(f"its {_METRICS_LOCK} is a folder")
        if stat.S_ISFIFO(info.st_mode):
            raise _Planted(f"its {_METRICS_LOCK} is a FIFO")
        if not stat.S_ISREG(info.st_mode):
            raise _Planted(f"its {_METRICS_LOCK} is not a regular file")
        if info.st_uid != os.getuid():
            raise _Planted(f"its {_METRICS_LOCK} belongs to user {info.st_uid}")
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            return None  # in use
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


@dataclass
class Supervisor:
    """Forks *count* workers and looks after them; :meth:`run` returns only in a worker.

    :param sockets: each worker's sockets (from :func:`open_sockets`).
    :param log: where the supervisor's lines go (twist's log file and format).
    :param reload: called with the reason on ``SIGHUP`` and at each
        *reload_interval*; re-reads the certificates and returns whether any
        changed (or the reload was asked for by a person), so that a new
        generation of workers should start.
    :param check_validity: called daily to warn about certificates near
        their end.
    :param drain_timeout: how long workers may take to drain before the
        supervisor kills them at shutdown (beyond their own limit).
    :param on_exit: called with each pid that exited (the metrics files).
    :param cleanup: called once, when the supervisor exits.
    :ivar board: which workers are at ``--max-connections``, shared with
        each worker forked (see :class:`LimitBoard`).
    """

    count: int
    sockets: Sequence[Mapping[tuple[object, ...], socket.socket]]
    log: Logger
    reload: Callable[[str], bool]
    check_validity: Callable[[], None]
    drain_timeout: float
    reload_interval: float | None = None
    validity_interval: float | None = None
    on_exit: Callable[[int], None] = lambda pid: None
    cleanup: Callable[[], None] = lambda: None
    board: LimitBoard = field(default_factory=LimitBoard)
    _running: dict[int, _Running] = field(default_factory=dict)
    _generation: int = 0
    _waiting: dict[int, float] = field(default_factory=dict)  # slot -> when to start
    _quick_exits: int = 0
    _began: float = 0.0
    _stopping_since: float | None = None
    _exit_status: int = 0
    _next_reload: float | None = None  # when --reload-interval next reloads
    _next_check: float | None = None  # when the validity check next runs

    def run(self) -> Worker:
        """Start the workers, then supervise until they have all stopped.

        Returns in each forked worker; the supervisor itself ends with
        ``SystemExit``.
        """
        # (_REPLACED too: a worker it reaches before it has a handler for
        # it gets it once it has, rather than dying of it.)
        signal.pthread_sigmask(signal.SIG_BLOCK, (*_SIGNALS, _REPLACED))
        self._generation = 1
        self._began = time.monotonic()
        self.log.info(
            "supervisor {pid}: starting {count} workers", pid=os.getpid(), count=self.count
        )
        for slot in range(self.count):
            worker = self._start(slot)
            if worker is not None:
                return worker
        now = time.monotonic()
        self._next_reload = now + self.reload_interval if self.reload_interval else None
        self._next_check = now + self.validity_interval if self.validity_interval else None
        while True:
            worker = self._supervise_once()
            if worker is not None:
                return worker

    def _supervise_once(self) -> Worker | None:
        """Wait for a signal or the next deadline and do what is due; the
        worker if this process has become one (forked)."""
        received = signal.sigtimedwait(_SIGNALS, self._timeout(time.monotonic()))
        worker = self._on_signal(received.si_signo if received is not None else None)
        if worker is not None:
            return worker
        now = time.monotonic()
        worker = self._on_timers(now)
        if worker is not None:
            return worker
        worker = self._start_waiting(now)
        if worker is not None:
            return worker
        if self._stopping_since is not None:
            self._watch_drain(now, self._stopping_since)
        return None

    def _timeout(self, now: float) -> float:
        """Seconds until the nearest deadline (timers, paused restarts, the
        drain's end), or an hour when nothing is due."""
        deadlines = [d for d in (self._next_reload, self._next_check) if d is not None]
        deadlines += self._waiting.values()
        if self._stopping_since is not None:
            deadlines.append(self._kill_after(self._stopping_since))
        return max(0.0, min(deadlines) - now) if deadlines else 3600.0

    def _kill_after(self, stopping_since: float) -> float:
        """When workers still running after a stop begun at *stopping_since*
        are killed (their own drain limit, and some time to exit)."""
        return stopping_since + self.drain_timeout + 10.0

    def _on_signal(self, number: int | None) -> Worker | None:
        """Act on one signal taken (``None``: the wait timed out)."""
        if number == signal.SIGCHLD:
            return self._reap()
        if number in (signal.SIGTERM, signal.SIGINT):
            self._stop(signal.Signals(number).name)
        elif number == signal.SIGHUP and self._stopping_since is None:
            if self.reload("SIGHUP"):
                return self._new_generation("SIGHUP")
        return None

    def _on_timers(self, now: float) -> Worker | None:
        """Run the ``--reload-interval`` reload and the daily validity check
        when they are due."""
        if self._next_reload is not None and now >= self._next_reload:
            self._next_reload = now + (self.reload_interval or 0)
            if self._stopping_since is None and self.reload("--reload-interval"):
                worker = self._new_generation("--reload-interval")
                if worker is not None:
                    return worker
        if self._next_check is not None and now >= self._next_check:
            self._next_check = now + (self.validity_interval or 0)
            self.check_validity()
        return None

    def _start_waiting(self, now: float) -> Worker | None:
        """Start the replacements whose pause after quick exits has ended."""
        for slot, due in list(self._waiting.items()):
            if now >= due and self._stopping_since is None:
                del self._waiting[slot]
                worker = self._start(slot)
                if worker is not None:
                    return worker
        return None

    def _watch_drain(self, now: float, stopping_since: float) -> None:
        """While stopping: exit once every worker has gone; kill those still
        running past the drain's limit."""
        if not self._running:
            self._exit(0)
        if now >= self._kill_after(stopping_since):
            for pid in self._running:
                self.log.error("worker {pid} did not stop: killing it", pid=pid)
                _signal(pid, signal.SIGKILL)
            self._stopping_since = now  # another round to reap them

    def _start(self, slot: int) -> Worker | None:
        sys.stdout.flush()
        sys.stderr.flush()
        cell = self.board.take()
        try:
            pid = os.fork()
        except OSError:
            # No worker: its cell is free again.
            self.board.give_back(cell)
            raise
        if pid == 0:
            supervisor = os.getppid()
            signal.signal(_REPLACED, _on_replaced)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, (*_SIGNALS, _REPLACED))
            _stop_with(supervisor)
            # systemd hears from the supervisor (its main PID) only.
            os.environ.pop(notify.NOTIFY_VARIABLE, None)
            # Only the supervisor holds every socket: a worker that stopped
            # listening must not keep the others' (or its own) open.
            own = {id(listening) for listening in self.sockets[slot].values()}
            for sockets in self.sockets:
                for listening in sockets.values():
                    if id(listening) not in own:
                        listening.close()
            return Worker(
                slot, self.count, self._generation, self.sockets[slot], supervisor,
                self.board, cell,
            )
        self._running[pid] = _Running(slot, self._generation, time.monotonic(), cell=cell)
        self.log.info(
            "worker {pid} started ({slot} of {count}, generation {generation})",
            pid=pid, slot=slot + 1, count=self.count, generation=self._generation,
        )
        return None

    def _reap(self) -> Worker | None:
        while self._running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == 0:
                return None
            running = self._running.pop(pid, None)
            self.on_exit(pid)
            if running is None:
                continue
            # Gone: it holds no connection, and its cell may serve another.
            self.board.give_back(running.cell)
            how = _exit_text(status)
            if running.stopping or self._stopping_since is not None:
                self.log.info("worker {pid} stopped", pid=pid)
                continue
            if running.generation != self._generation:
                continue
            lived = time.monotonic() - running.started
            if lived < _QUICK_EXIT_SECONDS:
                self._quick_exits += 1
            else:
                self._quick_exits = 0
            starting = time.monotonic() - self._began < _STARTUP_SECONDS
            if starting and self._quick_exits >= _QUICK_EXITS_ALLOWED:
                self.log.critical(
                    "worker {pid} {how} {seconds:.1f} s after it started, {n} times in a "
                    "row: stopping",
                    pid=pid, how=how, seconds=lived, n=self._quick_exits,
                )
                self._stop("repeated worker failures", status=1)
                return None
            delay = 0.0
            if self._quick_exits:
                delay = min(_QUICK_EXIT_SECONDS * 2 ** (self._quick_exits - 1), _LONGEST_PAUSE)
            self.log.warn(
                "worker {pid} {how}; starting another in its place{later}",
                pid=pid, how=how, later=f" in {delay:.0f} s" if delay else "",
            )
            if delay:
                self._waiting[running.slot] = time.monotonic() + delay
            else:
                worker = self._start(running.slot)
                if worker is not None:
                    return worker
        return None

    def _new_generation(self, why: str) -> Worker | None:
        old = [pid for pid, running in self._running.items() if not running.stopping]
        self._generation += 1
        self._waiting.clear()
        self.log.info(
            "{why}: starting generation {generation}; the {n} workers of the previous one "
            "drain and stop",
            why=why, generation=self._generation, n=len(old),
        )
        for slot in range(self.count):
            worker = self._start(slot)
            if worker is not None:
                return worker
        for pid in old:
            self._running[pid].stopping = True
            _signal(pid, _REPLACED)
        return None

    def _stop(self, why: str, status: int = 0) -> None:
        if self._stopping_since is None:
            notify.stopping()
            self.log.info(
                "{why}: stopping {n} workers (each drains its connections first)",
                why=why, n=len(self._running),
            )
        self._exit_status = max(self._exit_status, status)
        self._stopping_since = time.monotonic()
        self._waiting.clear()
        # New clients are refused once the workers have stopped listening too.
        for sockets in self.sockets:
            for listening in sockets.values():
                listening.close()
        for pid in self._running:
            _signal(pid, signal.SIGTERM)
        if not self._running:
            self._exit(status)

    def _exit(self, status: int) -> NoReturn:
        status = max(status, self._exit_status)
        self.log.info("supervisor {pid}: every worker has stopped", pid=os.getpid())
        self.cleanup()
        raise SystemExit(status)


def _stop_with(supervisor: int) -> None:
    """Have this worker drain and stop (SIGTERM) when its supervisor dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: workers outlive a killed supervisor
        return
    if os.getppid() != supervisor:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = str(number)
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
