"""The ``twist schannel`` service: listening, reloading, draining, stopping.

:class:`SchannelService` listens on every ``--listen`` endpoint (and
``--status``), re-reads certificate files on ``SIGHUP`` and
``--reload-interval``, warns of certificates that run out, and on stop
drains relayed connections for ``--drain-timeout``. :class:`StopSignals`
makes a second ``SIGTERM`` or ``SIGINT`` one log line instead of a traceback.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from OpenSSL import SSL
from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from txschannel.credentials import Credentials, validity_warnings
from txschannel.terminator import notify
from txschannel.terminator.addresses import address_text
from txschannel.terminator.health import Health
from txschannel.terminator.limits import ConnectionLimit
from txschannel.terminator.selfsigned import fingerprint

__all__ = ["VALIDITY_CHECK_INTERVAL", "SchannelService", "StopSignals"]

#: Seconds between checks of the served certificates' validity periods, so
#: that a server nobody reloads still says when its certificate runs out.
VALIDITY_CHECK_INTERVAL = 24 * 60 * 60.0


_log = Logger(namespace="txschannel")


def _served_fingerprint(credentials: Credentials) -> str | None:
    """The SHA-256 fingerprint of the certificate *credentials* present, if any."""
    if credentials.identities:
        return fingerprint(credentials.identities[0].leaf)
    # (Credentials of a Twisted creator.) Not for our own: pyOpenSSL refuses
    # changes to a context once a connection was made from it, and a
    # --workers worker installs its OCSP stapler and --route callback on the
    # credentials that its supervisor reloaded and looked at here.
    certificate = SSL.Connection(credentials.openssl_context, None).get_certificate()
    if certificate is None:
        return None
    return fingerprint(certificate.to_cryptography())


class SchannelService(service.Service):
    """Listens on every endpoint; reloads certificates on SIGHUP and on a timer.

    :param listen: ``(description, endpoint)`` pairs.
    :param factory: what serves each connection (already gated).
    :param reactor: for listening, timers and signals.
    :param reload_interval: seconds between certificate reloads, or None.
    :param announce: lines to log when the service starts.
    :param validity_interval: seconds between checks of the served
        certificates' validity periods (daily by default), or None.
    :param limit: the ``--max-connections`` count, whose ports it pauses.
    :param status: ``(description, endpoint, factory)`` of the ``--status``
        listener, or None.
    :param on_credentials: called with the listen endpoints at start and
        after every reload (the ``--status`` certificate figures).
    :param prepare: called with the credentials of every ``schannel:``
        listen endpoint before they serve a handshake: at start and after
        each reload (``--route`` installs its server-name check this way).
    :param drain_timeout: when stopping, how long open connections may take
        to finish before they are aborted.
    :param drain_delay: when stopping, how long to go on accepting (while
        ``/healthz`` says ``503 draining``) before the listeners close, so
        that a load balancer's health checks see it first (``--drain-delay``).
    :param signals: whether ``SIGHUP`` reloads (a ``--workers`` worker
        leaves signals and timers to its supervisor).
    :param worker: a ``--workers`` worker: its supervisor, which opened the
        sockets, said once where they listen, so each worker says only that
        it is ready (``ready: accepting connections``).
    :param replaced: for a worker, whether it stops because a new generation
        took over: then it stops accepting at once and never says
        ``draining`` (the service goes on).

    A certificate that has expired, is not valid yet or expires within 14
    days is logged as a warning (naming its file, subject and dates) on
    every ``SIGHUP``, at each check, and on a timer reload when the warning
    is new; endpoints made from strings also warn when they are parsed,
    that is, at start.
    """

    def __init__(
        self,
        listen: Sequence[tuple[str, IStreamServerEndpoint]],
        factory: IProtocolFactory,
        reactor: Any,
        *,
        reload_interval: float | None = None,
        announce: Sequence[str] = (),
        validity_interval: float | None = VALIDITY_CHECK_INTERVAL,
        limit: ConnectionLimit | None = None,
        prepare: Callable[[Credentials], None] | None = None,
        status: tuple[str, IStreamServerEndpoint, IProtocolFactory] | None = None,
        on_credentials: (
            Callable[[Sequence[tuple[str, IStreamServerEndpoint]]], None] | None
        ) = None,
        drain_timeout: float = 30.0,
        drain_delay: float = 0.0,
        signals: bool = True,
        worker: bool = False,
        replaced: Callable[[], bool] | None = None,
    ) -> None:
        self.listen = list(listen)
        self.drain_delay = drain_delay
        self.replaced = replaced
        #: What ``/healthz`` says (see txschannel.terminator.health).
        self.health = Health(limit)
        self.worker = worker
        self.log = _log
        self.drain_timeout = drain_timeout
        self.signals = signals
        self.status = status
        self.on_credentials = on_credentials
        self._status_port: IListeningPort | None = None
        self._status_limit: ConnectionLimit | None = None
        self.limit = limit
        self.prepare = prepare
        self.factory = factory
        self.reactor = reactor
        self.reload_interval = reload_interval
        self.announce = list(announce)
        self.validity_interval = validity_interval
        self.ports: list[IListeningPort] = []
        self._reloader: LoopingCall | None = None
        self._checker: LoopingCall | None = None
        self._previous_handler: Any = None
        self._last_errors: dict[str, str] = {}
        self._last_warnings: dict[str, set[str]] = {}

    def startService(self) -> None:
        """Listen everywhere; exit with one line when a port cannot be had."""
        super().startService()  # type: ignore[no-untyped-call]
        for line in self.announce:
            _log.info("{line}", line=line)
        starting = True
        problems: list[str] = []

        def listening(port: IListeningPort, description: str) -> None:
            self.ports.append(port)
            if self.limit is not None:
                self.limit.add_port(port)
            if self.worker:
                return
            # The address says which port "tcp:0" got.
            _log.info(
                "listening on {endpoint} at {address}",
                endpoint=description,
                address=address_text(port.getHost()),
            )

        def failed(failure: Failure, description: str) -> None:
            message = f"cannot listen on {description}: {failure.getErrorMessage()}"
            if starting:
                problems.append(message)
            else:
                _log.critical("{message}; stopping", message=message)
                self.reactor.stop()

        bound: list[Deferred[Any]] = []
        for description, endpoint in self.listen:
            credentials = getattr(endpoint, "credentials", None)
            if isinstance(credentials, Credentials):
                self._prepare(credentials)
            waiting = endpoint.listen(self.factory)
            waiting.addCallbacks(
                listening, failed, callbackArgs=(description,), errbackArgs=(description,)
            )
            bound.append(waiting)
        if self.on_credentials is not None:
            self.on_credentials(self.listen)
        if self.status is not None:
            description, endpoint, factory = self.status

            def serving_status(port: IListeningPort) -> None:
                self._status_port = port
                # The status listener's own bound (see status_site): its
                # clients past the bound wait in the kernel's queue.
                bound = getattr(factory, "limit", None)
                if isinstance(bound, ConnectionLimit):
                    self._status_limit = bound
                    bound.add_port(port)
                if self.worker:
                    return
                _log.info(
                    "serving /metrics and /status on {endpoint} at {address}",
                    endpoint=description, address=address_text(port.getHost()),
                )

            waiting = endpoint.listen(factory)
            waiting.addCallbacks(
                serving_status, failed, errbackArgs=(f"--status {description}",)
            )
            bound.append(waiting)
        starting = False
        if problems:
            for port in self.ports:
                port.stopListening()
            if self._status_port is not None:
                self._status_port.stopListening()
            raise SystemExit(f"twist schannel: {problems[0]}")
        if self.worker:
            _log.info("ready: accepting connections")
        if self.signals and hasattr(signal, "SIGHUP"):
            self._previous_handler = signal.signal(signal.SIGHUP, self._on_sighup)
        self.note_warned()
        if self.reload_interval:
            self._reloader = LoopingCall(self.reload, "--reload-interval")
            self._reloader.clock = self.reactor
            self._reloader.start(self.reload_interval, now=False)
        if self.validity_interval:
            self._checker = LoopingCall(self.check_validity, "validity check")
            self._checker.clock = self.reactor
            self._checker.start(self.validity_interval, now=False)
        DeferredList(bound).addCallback(lambda _: self._ready())

    def _ready(self) -> None:
        # systemd's Type=notify: started once every listener is bound.
        status_bound = self.status is None or self._status_port is not None
        if self.running and len(self.ports) == len(self.listen) and status_bound:
            notify.ready()

    def note_warned(self) -> None:
        """Take the listen endpoints' validity warnings as said already.

        Endpoints made from strings warned when they were parsed: a timer
        reload repeats only what is new since.
        """
        for description, endpoint in self.listen:
            credentials = getattr(endpoint, "credentials", None)
            if isinstance(credentials, Credentials):
                self._last_warnings[description] = set(validity_warnings(credentials))

    def _prepare(self, credentials: Credentials) -> None:
        # Before the credentials' first handshake: their OpenSSL context
        # cannot be changed once a connection was made from it. (An OCSP
        # stapler is the endpoint's: it installs it on the same credentials.)
        if self.prepare is not None:
            self.prepare(credentials)

    def _on_sighup(self, number: int, frame: FrameType | None) -> None:
        # A signal handler may run between any two bytecodes: hand the work
        # to the reactor thread.
        self.reactor.callFromThread(self.reload, "SIGHUP")

    def reload(self, why: str) -> tuple[int, int]:
        """Re-read the certificate files of every listen endpoint that has them.

        New handshakes use the new certificate; open connections keep the
        old one. A file that does not load is logged and the old certificate
        stays in use. Timer reloads log only changes, new errors and new
        validity warnings; other reloads warn about every certificate that
        has expired, is not valid yet or expires within 14 days.

        :return: how many endpoints were reloaded, and how many of them now
            serve a different certificate.
        """
        quiet = why == "--reload-interval"
        if why == "SIGHUP":
            notify.reloading()
        reloaded = changed = 0
        for description, endpoint in self.listen:
            reload: Callable[..., Credentials] | None = getattr(endpoint, "reload", None)
            if reload is None:
                continue
            before = _served_fingerprint(endpoint.credentials)  # type: ignore[attr-defined]
            try:
                # (why= for the OCSP stapler's log lines, see txschannel.ocsp.)
                credentials = reload(warn=False, why=why)
            except ValueError as e:
                if not quiet or self._last_errors.get(description) != str(e):
                    self.log.error(
                        "{why}: reloading {endpoint} failed, keeping the old certificate "
                        "(sha256 {fingerprint}): {error}",
                        why=why, endpoint=description, fingerprint=before, error=str(e),
                    )
                self._last_errors[description] = str(e)
                continue
            self._last_errors.pop(description, None)
            self._prepare(credentials)
            after = _served_fingerprint(credentials)
            reloaded += 1
            changed += after != before
            if not quiet or after != before:
                self.log.info(
                    "{why}: reloaded {endpoint}: certificate sha256 {fingerprint}{change}",
                    why=why, endpoint=description, fingerprint=after,
                    change="" if after != before else " (unchanged)",
                )
            self._warn_validity(why, description, credentials, only_new=quiet)
        if self.on_credentials is not None:
            self.on_credentials(self.listen)
        if why == "SIGHUP":
            notify.ready()
        return reloaded, changed

    def check_validity(self, why: str = "validity check") -> None:
        """Warn about every served certificate that is out of date or nearly so.

        Only the certificates in use are looked at; no file is read.
        """
        for description, endpoint in self.listen:
            credentials = getattr(endpoint, "credentials", None)
            if isinstance(credentials, Credentials):
                self._warn_validity(why, description, credentials, only_new=False)

    def _warn_validity(
        self, why: str, description: str, credentials: Credentials, *, only_new: bool
    ) -> None:
        # A warning's text counts the days, so a timer reload repeats it
        # once a day rather than at every tick.
        warnings = list(dict.fromkeys(validity_warnings(credentials)))  # once per file
        previous = self._last_warnings.get(description, set())
        for warning in warnings:
            if not only_new or warning not in previous:
                self.log.warn("{why}: {validity}", why=why, validity=warning)
        self._last_warnings[description] = set(warnings)

    def stopService(self) -> Deferred[Any]:
        """Say ``draining`` on ``/healthz``; after *drain_delay*, stop listening
        and let open connections finish.

        The result fires once every connection has closed, or after
        *drain_timeout*, when those still open are aborted (and logged).
        """
        super().stopService()  # type: ignore[no-untyped-call]
        notify.stopping()
        for timer in (self._reloader, self._checker):
            if timer is not None and timer.running:
                timer.stop()
        if hasattr(signal, "SIGHUP") and self._previous_handler is not None:
            # Not the previous handler yet: that is usually SIG_DFL, and a
            # reload signal (logrotate, systemctl reload) during the drain
            # would kill the process and cut every connection it drains.
            signal.signal(signal.SIGHUP, self._on_sighup_while_stopping)
        stopped = self._stop()
        return stopped.addBoth(self._restore_sighup)

    def _on_sighup_while_stopping(self, number: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self.log.info, "SIGHUP while stopping: ignored")

    def _restore_sighup(self, result: object) -> object:
        if hasattr(signal, "SIGHUP") and self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None
        return result

    def _stop(self) -> Deferred[Any]:
        if self.replaced is not None and self.replaced():
            return self._stop_listening()
        self.health.draining = True
        if not self.drain_delay:
            return self._stop_listening()
        # Listening goes on meanwhile: a balancer sends new clients here
        # until its checks have seen the 503, and those must be served.
        self.log.info(
            "stopping: /healthz says draining; still accepting for {seconds:g} s "
            "(--drain-delay)",
            seconds=self.drain_delay,
        )
        delayed: Deferred[None] = deferLater(self.reactor, self.drain_delay, lambda: None)
        return delayed.addCallback(lambda _: self._stop_listening())

    def _stop_listening(self) -> Deferred[Any]:
        for limit in (self.limit, self._status_limit):
            if limit is not None:
                limit.remove_ports()
        stopping = [port.stopListening() for port in self.ports]
        self.ports = []
        stopped = DeferredList([d for d in stopping if isinstance(d, Deferred)])
        stopped.addCallback(lambda _: self._drain())
        if self._status_port is not None:
            # After the drain: the figures stay readable meanwhile.
            status_port = self._status_port
            self._status_port = None
            stopped.addCallback(lambda _: status_port.stopListening())
        return stopped

    def _drain(self) -> Deferred[None] | None:
        gates = getattr(self.factory, "gates", None)
        if not gates or not self.drain_timeout:
            return None
        self.log.info(
            "stopping: waiting up to {seconds:g} s for {count} open connection(s)",
            seconds=self.drain_timeout, count=len(gates),
        )
        drained: Deferred[None] = Deferred()
        deadline = self.reactor.seconds() + self.drain_timeout
        aborted_at: float | None = None

        def check() -> None:
            nonlocal aborted_at
            now = self.reactor.seconds()
            # After aborting, wait (briefly) for the connections to be gone,
            # so that each still writes its log line and ends its backend.
            if not gates or (aborted_at is not None and now >= aborted_at + 2.0):
                poll.stop()
                drained.callback(None)
            elif aborted_at is None and now >= deadline:
                aborted_at = now
                self.log.warn(
                    "stopping: aborting {count} connection(s) still open after {seconds:g} s",
                    count=len(gates), seconds=self.drain_timeout,
                )
                for gate in list(gates):
                    gate.abort("aborted: still open when the drain timeout ran out")

        poll = LoopingCall(check)
        poll.clock = self.reactor
        poll.start(0.1, now=False)
        return drained


class StopSignals:
    """Twisted's SIGTERM and SIGINT handlers, made safe to run twice.

    Each stops the reactor, and a second signal while it stops makes
    ``reactor.stop()`` raise ReactorNotRunning: a critical log line with a
    traceback. Under systemd that is every stop with ``--workers``: systemd
    signals every process of the service and the supervisor passes its
    SIGTERM on, so each worker gets two; a drain also leaves time for a
    second Ctrl-C. The first signal still goes to Twisted's handler (which
    notes it for twist's exit status); any signal once the reactor is
    stopping, for whatever reason, is one log line.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.stopping = False

    def install(self) -> None:
        """Wrap the reactor's own handlers (installed as it started)."""
        for number in (signal.SIGTERM, signal.SIGINT):
            original = signal.getsignal(number)
            if callable(original) and getattr(original, "__self__", None) is self.reactor:
                signal.signal(number, self._wrap(original))
        self.reactor.addSystemEventTrigger("before", "shutdown", self._stopping)

    def _stopping(self) -> None:
        self.stopping = True

    def _wrap(self, original: Callable[[int, FrameType | None], Any]) -> Any:
        def handler(number: int, frame: FrameType | None) -> None:
            if self.stopping:
                # (In a signal handler: the reactor logs it, not this frame.)
                self.reactor.callFromThread(
                    _log.info, "{signal} again: already stopping",
                    signal=signal.Signals(number).name,
                )
                return
            self.stopping = True
            original(number, frame)

        return handler
