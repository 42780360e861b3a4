"""The command line of ``twist schannel``: parsed and checked before anything listens.

:class:`Options` turns the command line into endpoints, the self-signed
certificate, routes and the access policy, or exits with one line naming
what is wrong (status 64). With ``--workers`` above 1 this process becomes
the supervisor (:mod:`~txschannel.terminator.workers`) and returns from
parsing only in the workers it forks.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from OpenSSL import SSL
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    textFileLogObserver,
)
from twisted.python import usage
from zope.interface import implementer

from txschannel.credentials import Credentials
from txschannel.endpoints import SchannelClientEndpoint, parse_error_text
from txschannel.haproxy import server_from_string
from txschannel.peertext import PeerText
from txschannel.terminator import notify
from txschannel.terminator.access import AccessPolicy, AllowedName, parse_allowed_name
from txschannel.terminator.addresses import socket_text
from txschannel.terminator.limits import STATUS_MAX_CONNECTIONS, STATUS_REQUEST_TIMEOUT
from txschannel.terminator.routing import Route, Router, normalize_route_name
from txschannel.terminator.selfsigned import (
    SelfSignedCertificate,
    default_state_dir,
    ensure_self_signed,
)
from txschannel.terminator.service import VALIDITY_CHECK_INTERVAL, SchannelService
from txschannel.terminator.workers import (
    AdoptingReactor,
    RecordingReactor,
    Supervisor,
    Sweep,
    Worker,
    WorkersError,
    make_metrics_folder,
    open_sockets,
    record_listening,
    sweep_metrics_folders,
    worker_count,
)

__all__ = [
    "DEFAULT_PORT",
    "Backend",
    "Lifecycle",
    "Limits",
    "Listeners",
    "Options",
    "Plan",
    "version_lines",
]

#: The port ``twist schannel`` listens on when no ``--listen`` is given.
DEFAULT_PORT = 8443


#: ``twist``'s own exit status for a bad command line (EX_USAGE).
_EX_USAGE = 64


#: Options by which a listen endpoint names its own certificate: such an
#: endpoint never gets the self-signed one.
_IDENTITY_OPTIONS = ("certificate", "privateKey", "chain", "sni", "passphraseFile")


def _has_option(description: str, name: str) -> bool:
    """Whether endpoint *description* sets option *name* (``:name=`` not escaped)."""
    return re.search(rf"(?:^|(?<!\\):){re.escape(name)}=", description) is not None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


@dataclass(frozen=True)
class Listeners:
    """The ``--listen`` endpoints, parsed, and what was added to them.

    :ivar endpoints: (description as parsed, endpoint) for each ``--listen``,
        in order; the description has the self-signed certificate and the
        inspector's ALPN added where they apply.
    :ivar self_signed: the default certificate, when an endpoint uses it.
    :ivar inspector: whether the inspector is served (no ``--connect``, no
        ``--route``).
    """

    endpoints: tuple[tuple[str, IStreamServerEndpoint], ...]
    self_signed: SelfSignedCertificate | None
    inspector: bool


@dataclass(frozen=True)
class Backend:
    """Where relayed connections go: ``--connect``, ``--route`` and ``--proxy-protocol``.

    :ivar connect: the ``--connect`` description, or None.
    :ivar endpoint: its parsed client endpoint, or None.
    :ivar router: the ``--route`` router (with ``--connect`` as its
        fallback), or None without ``--route``.
    :ivar proxy_protocol: ``"v1"``, ``"v2"`` or None.
    """

    connect: str | None
    endpoint: IStreamClientEndpoint | None
    router: Router | None
    proxy_protocol: str | None


@dataclass(frozen=True)
class Limits:
    """``--max-connections``, ``--idle-timeout`` and ``--connect-timeout``; None when not given."""

    max_connections: int | None
    idle_timeout: float | None
    connect_timeout: float | None


@dataclass(frozen=True)
class Lifecycle:
    """How the process runs and stops: ``--workers``, ``--reload-interval``,
    ``--drain-delay`` and ``--drain-timeout``."""

    workers: int
    reload_interval: float | None
    drain_delay: float
    drain_timeout: float


@dataclass(frozen=True)
class Plan:
    """What ``twist schannel``'s command line asks for, checked and parsed:
    what :func:`~txschannel.terminator.tap.makeService` builds the service from.

    :ivar reactor: the reactor the service runs on.
    :ivar status: the ``--status`` description and its parsed endpoint, or None.
    :ivar announce: the lines to log once listening (what is served, and how
        to reach the self-signed certificate); empty in a ``--workers``
        worker, whose supervisor said them.
    :ivar worker: in a ``--workers`` worker, the supervisor's view of it.
    """

    reactor: Any
    listeners: Listeners
    backend: Backend
    policy: AccessPolicy
    limits: Limits
    lifecycle: Lifecycle
    status: tuple[str, IStreamServerEndpoint] | None
    announce: tuple[str, ...]
    worker: Worker | None = None


class Options(usage.Options):
    """The command line of ``twist schannel``; checks everything before starting.

    Endpoint strings are parsed here, so a bad endpoint, an unknown option or
    an unreadable certificate is reported as one line naming it, and the
    process exits (status 64) before anything listens.
    """

    synopsis = "[--listen ENDPOINT]... [--connect ENDPOINT] [options]"
    longdesc = (
        "A TLS terminator and tunnel. Accept on every --listen endpoint and relay each "
        "connection both ways to a new connection on --connect; either side may be plain "
        "or schannel:. Without --connect, answer HTTP requests with a page describing the "
        "connection's TLS. Without --listen, listen on schannel:tcp:8443:interface=127.0.0.1 "
        "(this machine only) with a self-signed "
        "certificate for localhost, kept in the state folder. A schannel: listen endpoint "
        "that names no certificate (certificate=, sni=, ...) uses that certificate too. "
        "SIGHUP re-reads certificate files. A certificate that has expired, is not valid "
        "yet or expires within 14 days is logged as a warning at start, on every reload "
        "and once a day."
    )
    optParameters = [
        [
            "state-dir", None, None,
            "Folder for the self-signed certificate "
            "(default: $XDG_STATE_HOME/txschannel or ~/.local/state/txschannel).",
        ],
        [
            "reload-interval", None, None,
            "Also re-read certificate files every SECONDS (a changed certificate is logged).",
        ],
        [
            "status", None, None,
            "Serve /metrics (Prometheus), /status (JSON) and /healthz (200 ok, or 503 when "
            "draining or at --max-connections) on this server endpoint, e.g. "
            f"tcp:9090 (on loopback unless interface= is given; at most "
            f"{STATUS_MAX_CONNECTIONS} connections, each aborted when it has not sent a whole "
            f"request within {STATUS_REQUEST_TIMEOUT:g} s of its accept or of its previous "
            "answer).",
        ],
        [
            "proxy-protocol", None, None,
            "Start every backend connection with a PROXY protocol header, v1 or v2 (v2 "
            "carries ALPN, the server name, and the TLS version, cipher and client "
            "certificate's CN).",
        ],
        [
            "max-connections", None, None,
            "At N open connections stop accepting (the listening ports pause) until one "
            "closes.",
        ],
        [
            "idle-timeout", None, None,
            "Abort a --listen connection (and its backend's) after SECONDS without a byte "
            "either way (not the --status listener's: see --status).",
        ],
        [
            "connect-timeout", None, None,
            "Give up on a --connect connection not made within SECONDS (the client is "
            "aborted).",
        ],
        [
            "workers", None, "1",
            "Serve with N processes (or auto: one per CPU) sharing the listening ports and "
            "the session-ticket keys; a supervisor replaces workers that die, and SIGHUP "
            "starts a new generation with the re-read certificates.",
        ],
        [
            "drain-delay", None, "0",
            "On SIGTERM, answer 503 draining on /healthz at once but go on accepting for "
            "SECONDS, so that a load balancer's health checks take this process out of its "
            "pool before the listeners close; then drain as --drain-timeout says.",
        ],
        [
            "drain-timeout", None, "30",
            "When stopping (SIGTERM, or an old generation of --workers), let relayed "
            "connections finish for up to SECONDS (0: not at all), then abort them. The "
            "inspector's connections are closed at once.",
        ],
    ]

    #: What the command line asks for, checked and parsed (set by :meth:`postOptions`).
    plan: Plan

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = []
        self["route"] = []
        self["connect"] = None
        self["allow-cn"] = []
        self["allow-san"] = []

    def opt_route(self, route: str) -> None:
        """NAME=ENDPOINT: relay server name NAME (wildcards too) to ENDPOINT (repeatable)."""
        name, equals, description = route.partition("=")
        if not equals or not description.strip():
            raise usage.UsageError(
                f"--route {route!r}: expected NAME=ENDPOINT, such as "
                "--route api.example.com=tcp:127.0.0.1:8081"
            )
        try:
            normalized = normalize_route_name(name)
        except ValueError as e:
            raise usage.UsageError(f"--route {route!r}: {name!r}: {e}") from None
        if any(given == normalized for given, _, _ in self["route"]):
            raise usage.UsageError(f"--route {route!r}: {normalized} has a route already")
        self["route"].append((normalized, description, route))

    def opt_version(self) -> NoReturn:
        """Print the versions of txschannel, pyOpenSSL, cryptography, OpenSSL and Twisted."""
        print("\n".join(version_lines()))
        sys.exit(0)

    def opt_listen(self, description: str) -> None:
        """Listen on this server endpoint (repeatable; default: schannel:tcp:8443 on 127.0.0.1)."""
        self["listen"].append(description)

    opt_l = opt_listen

    def opt_connect(self, description: str) -> None:
        # (The help text is set below: it is longer than a docstring line.)
        if self["connect"] is not None:
            # Twisted's parameters let the last one win, which would
            # silently drop a backend the operator meant to use.
            raise usage.UsageError(
                f"--connect {description!r}: --connect {self['connect']!r} was given "
                "already; give one (--route NAME=ENDPOINT relays server names elsewhere)"
            )
        self["connect"] = description

    opt_connect.__doc__ = (
        "Relay every connection to this client endpoint, e.g. tcp:127.0.0.1:8080 or "
        "schannel:tcp:db.example:5432:trustRoots=ca.pem (default: serve the inspector)."
    )
    opt_c = opt_connect

    def opt_allow_cn(self, name: str) -> None:
        """Admit client certificates with this subject common name (repeatable)."""
        if not name.strip():
            raise usage.UsageError(
                f"--allow-cn {name!r}: expected a certificate's common name, "
                "such as --allow-cn alice"
            )
        if re.match(r"\s*CN\s*=", name, re.IGNORECASE):
            bare = name.split("=", 1)[1].strip()
            raise usage.UsageError(
                f"--allow-cn {name!r}: give the common name alone, such as "
                f"--allow-cn {bare or 'alice'}"
            )
        self["allow-cn"].append(name)

    def opt_allow_san(self, name: str) -> None:
        """Admit clients with this SAN: dns:, uri:, ip: or email:VALUE (repeatable)."""
        try:
            self["allow-san"].append(parse_allowed_name(name))
        except ValueError as e:
            raise usage.UsageError(f"--allow-san {name!r}: {e}") from None

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse, or exit with one line naming what is wrong (status 64)."""
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as e:
            _usage_exit(str(e))

    def postOptions(self) -> None:
        """Build the endpoints and the default certificate into :attr:`plan`;
        any problem is a UsageError.

        With ``--workers`` above 1 this process becomes the supervisor: it
        returns from here only in the workers it forks.
        """
        try:
            workers = worker_count(str(self["workers"]))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        drain_timeout = _seconds("drain-timeout", str(self["drain-timeout"]), zero=True)
        drain_delay = _seconds("drain-delay", str(self["drain-delay"]), zero=True)
        reload_interval = _optional_seconds(self, "reload-interval")
        lifecycle = Lifecycle(workers, reload_interval, drain_delay, drain_timeout)
        if workers == 1:
            from twisted.internet import reactor

            self.plan = self._build(reactor, reactor, lifecycle)
        else:
            self.plan = self._supervise(lifecycle)

    def _supervise(self, lifecycle: Lifecycle) -> Plan:
        """Parse, open the sockets, build the credentials, fork; return in a worker."""
        if "twisted.internet.reactor" in sys.modules:
            raise usage.UsageError(
                "--workers: a reactor is installed already (by twist --reactor?), and the "
                "workers must each install their own; leave --reactor out"
            )
        recording = RecordingReactor()
        plan = self._build(recording, recording, lifecycle)
        sockets, where = _open_for_workers(plan, recording)
        if "twisted.internet.reactor" in sys.modules:
            raise RuntimeError("the supervisor imported the reactor while parsing (a bug)")
        metrics_folder: str | None = None
        swept = Sweep()
        if plan.status is not None:
            # Each worker writes its figures there; any worker's /metrics
            # adds them all up (prometheus_client's multiprocess mode).
            swept = sweep_metrics_folders()
            metrics_folder, _ = make_metrics_folder()  # locked until we all exit
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_folder
        log = self._supervisor_log()
        _log_sweep(log, swept)
        for line in plan.announce:
            log.info("{line}", line=line)
        for option, description, address in where:
            log.info(
                "listening on {endpoint} at {address}" if option == "--listen"
                else "serving /metrics and /status on {endpoint} at {address}",
                endpoint=description, address=address,
            )
        supervisor = _supervisor(plan, sockets, log, metrics_folder)
        # Every listening socket is bound (the workers adopt them): ready.
        notify.ready()
        worker = supervisor.run()
        # In a worker, from here on: an ordinary twist schannel process
        # whose endpoints adopt the supervisor's sockets and serve its
        # credentials (the same OpenSSL contexts, ticket keys included).
        return self._become_worker(worker, plan)

    def _become_worker(self, worker: Worker, supervised: Plan) -> Plan:
        """The plan of a worker forked by the supervisor that made *supervised*."""
        if os.environ.get("LISTEN_PID") == str(worker.supervisor):
            os.environ["LISTEN_PID"] = str(os.getpid())  # systemd's sockets are ours now
        from twisted.internet import reactor

        plan = self._build(
            reactor, AdoptingReactor(reactor, worker.sockets), supervised.lifecycle
        )
        for (_, endpoint), (_, built) in zip(
            plan.listeners.endpoints, supervised.listeners.endpoints, strict=True
        ):
            credentials = getattr(built, "credentials", None)
            if isinstance(credentials, Credentials):
                endpoint.credentials = credentials  # type: ignore[attr-defined]
        parent = getattr(self, "parent", None)
        if parent is not None and "fileLogObserverFactory" in parent:
            # twist makes its log observer after parsing, from this factory.
            parent["fileLogObserverFactory"] = _worker_lines(
                parent["fileLogObserverFactory"], os.getpid()
            )
        # (The supervisor said the announcements, once.)
        return replace(plan, announce=(), worker=worker)

    def _supervisor_log(self) -> Logger:
        """A logger writing where twist writes, in its format, for the supervisor."""
        parent = getattr(self, "parent", None)
        if parent is not None and "fileLogObserverFactory" in parent:
            observer = parent["fileLogObserverFactory"](parent["logFile"])
            level = parent.get("logLevel", LogLevel.info)
        else:
            observer, level = textFileLogObserver(sys.stdout), LogLevel.info
        predicate = LogLevelFilterPredicate(defaultLogLevel=level)
        return Logger(
            namespace="txschannel.workers",
            observer=FilteringLogObserver(observer, [predicate]),
        )

    def _build(self, reactor: Any, listen_reactor: Any, lifecycle: Lifecycle) -> Plan:
        """Parse every endpoint (listening ones with *listen_reactor*); check the rest."""
        limits = Limits(
            idle_timeout=_optional_seconds(self, "idle-timeout"),
            connect_timeout=_optional_seconds(self, "connect-timeout"),
            max_connections=(
                None if self["max-connections"] is None
                else _count("max-connections", self["max-connections"])
            ),
        )
        inspector = self["connect"] is None and not self["route"]
        listeners = _listeners(self["listen"], inspector, self["state-dir"], listen_reactor)
        backend = _backend(self["connect"], self["route"], listeners, reactor)
        backend = _with_proxy_protocol(backend, self["proxy-protocol"])
        status = None if self["status"] is None else _status(self["status"], listen_reactor)
        policy = _policy(self["allow-cn"], self["allow-san"], listeners)
        return Plan(
            reactor, listeners, backend, policy, limits, lifecycle, status,
            announce=_announcements(listeners, backend, self["route"]),
        )


def _optional_seconds(options: Options, name: str) -> float | None:
    """Option *name* as seconds above 0, or None when it is not given."""
    given = options[name]
    return None if given is None else _seconds(name, str(given))


def _listeners(
    given: Sequence[str], inspector: bool, state_dir: str | None, reactor: Any
) -> Listeners:
    """Parse the ``--listen`` endpoints (the default one when none is *given*),
    adding the inspector's ALPN and the self-signed certificate where they apply."""
    originals = list(given) or [f"schannel:tcp:{DEFAULT_PORT}:interface=127.0.0.1"]
    descriptions = originals
    if inspector:
        # The inspector speaks HTTP/1.x: say so in ALPN, so that clients
        # offering h2 do not guess.
        descriptions = [
            d + ":alpn=http/1.1,http/1.0"
            if d.startswith("schannel:") and not _has_option(d, "alpn")
            else d
            for d in descriptions
        ]
    descriptions, kept = _with_self_signed(descriptions, state_dir)
    endpoints: list[tuple[str, IStreamServerEndpoint]] = []
    for original, description in zip(originals, descriptions, strict=True):
        option = f"--listen {original!r}"
        if not description.startswith("schannel:") and any(
            _has_option(description, name)
            for name in ("ocspResponse", "ocsp", "ocspAllowPrivate")
        ):
            # Said here: the plain parser's "unexpected keyword" would not.
            raise usage.UsageError(
                f"{option}: ocspResponse=/ocsp=/ocspAllowPrivate= need a schannel: endpoint"
            )
        # (ocspResponse= and ocsp=auto are the schannel: parser's, which
        # gives the endpoint an OCSP stapler: txschannel.ocsp.)
        # (haproxy: is txschannel's, which checks the header: see
        # txschannel.haproxy.)
        endpoints.append(
            (description, _parse(server_from_string, reactor, description, option))
        )
    return Listeners(tuple(endpoints), kept, inspector)


def _status(description: str, reactor: Any) -> tuple[str, IStreamServerEndpoint]:
    """Parse ``--status``, which listens on loopback unless it names an interface."""
    _check_status_description(description)
    endpoint = _parse(_server_from_string, reactor, description, f"--status {description!r}")
    _loopback_unless_given(endpoint, description)
    return description, endpoint


def _with_self_signed(
    descriptions: list[str], state_dir: str | None
) -> tuple[list[str], SelfSignedCertificate | None]:
    """*descriptions* with the self-signed certificate added to each ``schannel:``
    one that names no certificate of its own, and that certificate (None when
    none needs it)."""
    # An endpoint that names a certificate of its own in any way gets
    # the parser's own error when it is incomplete, never this one.
    needs_default = [
        d for d in descriptions
        if d.startswith("schannel:")
        and not any(_has_option(d, option) for option in _IDENTITY_OPTIONS)
    ]
    if not needs_default:
        return descriptions, None
    folder = Path(state_dir) if state_dir else default_state_dir()
    try:
        kept = ensure_self_signed(folder)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None
    suffix = f":certificate={_escape(str(kept.server_file))}"
    return [d + suffix if d in needs_default else d for d in descriptions], kept


def _backend(
    connect: str | None,
    routes: Sequence[tuple[str, str, str]],
    listeners: Listeners,
    reactor: Any,
) -> Backend:
    """Parse ``--connect`` and the ``--route`` endpoints into where relayed
    connections go."""
    endpoint: IStreamClientEndpoint | None = None
    if connect is not None:
        endpoint = _parse(_client_from_string, reactor, connect, f"--connect {connect!r}")
    router = None
    if routes:
        parsed = [
            Route(name, description,
                  _parse(_client_from_string, reactor, description, f"--route {given!r}"))
            for name, description, given in routes
        ]
        fallback = None
        if connect is not None and endpoint is not None:
            fallback = Route(None, connect, endpoint)
        elif any(not d.startswith("schannel:") for d, _ in listeners.endpoints):
            raise usage.UsageError(
                "--route without --connect: a plain listener's clients send no server "
                "name, so they could never be routed; add --connect for them"
            )
        router = Router(parsed, fallback, reactor)
    return Backend(connect, endpoint, router, None)


def _with_proxy_protocol(backend: Backend, given: str | None) -> Backend:
    """*backend* with ``--proxy-protocol`` *given*, checked against its endpoints."""
    if given is None:
        return backend
    version = given.lower()
    if version not in ("v1", "v2"):
        raise usage.UsageError(f"--proxy-protocol {given!r}: expected v1 or v2")
    backends: list[tuple[str, object]] = []
    if backend.endpoint is not None:
        backends.append((f"--connect {backend.connect!r}", backend.endpoint))
    if backend.router is not None:
        backends += [
            (f"--route {route.name}={route.description}", route.endpoint)
            for route in backend.router.routes
        ]
    if not backends:
        raise usage.UsageError(
            f"--proxy-protocol {given}: there is no backend to tell (add --connect)"
        )
    for option, endpoint in backends:
        if isinstance(endpoint, SchannelClientEndpoint):
            raise usage.UsageError(
                f"--proxy-protocol {given}: {option} is TLS, and the header would have to "
                "come before its handshake, which is not supported; use a plain backend"
            )
    return replace(backend, proxy_protocol=version)


def _policy(
    allow_cn: Sequence[str], allow_san: Sequence[AllowedName], listeners: Listeners
) -> AccessPolicy:
    """``--allow-cn`` and ``--allow-san``, which need a listener asking for
    client certificates."""
    policy = AccessPolicy(tuple(allow_cn), tuple(allow_san))
    if policy.active and not any(
        _asks_for_client_certificates(e) for _, e in listeners.endpoints
    ):
        raise usage.UsageError(
            "--allow-cn/--allow-san need a schannel: listen endpoint that asks for client "
            "certificates: add clientCA=<CA file> (and requireClientCertificate=yes)"
        )
    return policy


def _announcements(
    listeners: Listeners, backend: Backend, routes: Sequence[tuple[str, str, str]]
) -> tuple[str, ...]:
    """The lines logged once listening: the self-signed certificate, what is
    served, and how to try it."""
    announce: list[str] = []
    kept = listeners.self_signed
    if kept is not None:
        verb = "created" if kept.created else "using"
        announce += [
            f"{verb} the self-signed certificate for localhost, 127.0.0.1 and ::1: "
            f"{kept.certificate_file}",
            f"its SHA-256 fingerprint: {kept.fingerprint}",
        ]
    if listeners.inspector:
        announce.append("serving the inspector")
    for name, description, _ in routes:
        announce.append(f"relaying server name {name} to {description}")
    if backend.connect is not None:
        announce.append(
            f"relaying {'other server names ' if routes else ''}to {backend.connect}"
        )
    elif routes:
        announce.append("refusing other server names (unrecognized_name)")
    if kept is not None and listeners.inspector:
        ports = [
            match.group(1)
            for match in (
                re.match(r"schannel:tcp6?:(?:port=)?(\d+)", d)
                for d, _ in listeners.endpoints
            )
            if match
        ]
        url = f"https://localhost:{ports[0] if ports else 'PORT'}/"
        announce.append(
            f"open {url} (the certificate is self-signed: trust "
            f"{kept.certificate_file}, SHA-256 {kept.fingerprint})"
        )
        announce.append(f"try: curl --cacert {kept.certificate_file} {url}")
    return tuple(announce)


def _open_for_workers(
    plan: Plan, recording: RecordingReactor
) -> tuple[list[dict[tuple[object, ...], Any]], list[tuple[str, str, str]]]:
    """Open the sockets of every listening endpoint (``--listen`` and ``--status``)
    once per worker: the sockets of each worker, and (option, description,
    address) for the log."""
    listening = [(f"--listen {d!r}", d, e) for d, e in plan.listeners.endpoints]
    if plan.status is not None:
        description, endpoint = plan.status
        listening.append((f"--status {description!r}", description, endpoint))
    count = plan.lifecycle.workers
    sockets: list[dict[tuple[object, ...], Any]] = [{} for _ in range(count)]
    # Said once, by the supervisor, for all the workers: it opened them.
    where: list[tuple[str, str, str]] = []
    for option, description, endpoint in listening:
        try:
            requests = record_listening(endpoint, recording)
            per_worker = open_sockets(requests, count)
            for slot, opened in zip(sockets, per_worker, strict=True):
                slot.update(opened)
            where.append((
                option.split(" ", 1)[0], description,
                ", ".join(socket_text(s) for s in per_worker[0].values()),
            ))
        except WorkersError as e:
            raise usage.UsageError(f"{option}: {e}") from None
        except OSError as e:
            # As without --workers: a port that cannot be had is status 1,
            # and --status is named.
            named = description if option.startswith("--listen") else f"--status {description}"
            raise SystemExit(
                f"twist schannel: cannot listen on {named}: {e.strerror or e}"
            ) from None
    return sockets, where


def _log_sweep(log: Logger, swept: Sweep) -> None:
    """Say which metrics folders of killed supervisors were removed or left alone."""
    # (Escaped: any process of this user could have named them.)
    for folder in swept.removed:
        log.info(
            "removed {folder}, left by a supervisor that was killed", folder=PeerText(folder)
        )
    for folder, why in swept.skipped:
        log.warn(
            "left {folder} alone: {why}, where a supervisor's is a regular file of this "
            "user",
            folder=PeerText(folder), why=why,
        )


def _supervisor(
    plan: Plan,
    sockets: list[dict[tuple[object, ...], Any]],
    log: Logger,
    metrics_folder: str | None,
) -> Supervisor:
    """The supervisor of *plan*'s workers, which reloads and warns for them all."""
    # Reloads and validity warnings are the supervisor's, with its log.
    keeper = SchannelService(
        list(plan.listeners.endpoints), Factory(), None, validity_interval=None
    )
    keeper.log = log
    keeper.note_warned()

    def reload(why: str) -> bool:
        reloaded, changed = keeper.reload(why)
        return changed > 0 if why == "--reload-interval" else reloaded > 0

    def exited(pid: int) -> None:
        if metrics_folder is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                pid, metrics_folder
            )

    def cleanup() -> None:
        if metrics_folder is not None:
            shutil.rmtree(metrics_folder, ignore_errors=True)

    lifecycle = plan.lifecycle
    return Supervisor(
        lifecycle.workers, sockets, log, reload, keeper.check_validity,
        # (Each worker accepts for --drain-delay before its own drain.)
        drain_timeout=lifecycle.drain_delay + lifecycle.drain_timeout,
        reload_interval=lifecycle.reload_interval,
        validity_interval=VALIDITY_CHECK_INTERVAL,
        on_exit=exited, cleanup=cleanup,
    )


def _server_from_string(reactor: Any, description: str) -> Any:
    from twisted.internet.endpoints import serverFromString

    return serverFromString(reactor, description)  # type: ignore[no-untyped-call]


def _client_from_string(reactor: Any, description: str) -> Any:
    from twisted.internet.endpoints import clientFromString

    return clientFromString(reactor, description)  # type: ignore[no-untyped-call]



def _worker_lines(
    factory: Callable[[Any], ILogObserver], pid: int
) -> Callable[[Any], ILogObserver]:
    """twist's log-observer factory, for a ``--workers`` worker: every line
    the worker writes ends with ``worker=PID``, so that each connection's
    lines (a failed handshake, a refusal, an unreachable backend, the close)
    name the process that served it, as do Twisted's own."""

    def make(log_file: Any) -> ILogObserver:
        observer = factory(log_file)

        def named(event: LogEvent) -> None:
            # A copy: the other observers of the event see it as it was.
            format = event.get("log_format")
            observer({
                **event,
                "log_format": (f"{format} " if format else "") + "worker={txschannel_worker}",
                "txschannel_worker": pid,
            })

        provider: ILogObserver = implementer(ILogObserver)(named)
        return provider

    return make


def _check_status_description(description: str) -> None:
    """Refuse ``--status`` endpoints that would escape its loopback default.

    ``haproxy:`` would take a PROXY header from anyone who can connect and
    bind every address through its inner endpoint; an empty ``interface=``
    is Twisted's spelling of every address, easy to write by mistake.

    :raises usage.UsageError: naming the option and what to write instead.
    """
    segments = re.split(r"(?<!\\):", description)
    types = [segment.lower() for segment in segments[:2]]
    if types[0] == "haproxy" or types[:2] == ["schannel", "haproxy"]:
        raise usage.UsageError(
            f"--status {description!r}: the status listener reads no PROXY header (health "
            "checks and scrapes come to it directly): use tcp:PORT"
        )
    if any(segment == "interface=" for segment in segments):
        raise usage.UsageError(
            f"--status {description!r}: interface= is empty, which means every address: "
            "write interface=0.0.0.0 (or interface=::) if that is meant"
        )


def _loopback_unless_given(endpoint: IStreamServerEndpoint, description: str) -> None:
    """Make a TCP *endpoint* that names no interface listen on loopback only.

    For ``--status``: its pages have no access control, so ``tcp:9090``
    means 127.0.0.1 (``tcp6:9090``: ::1) unless ``interface=`` (or an
    interface given in place) says otherwise. Twisted's TCP endpoints keep
    the interface in ``_interface`` with no public way to change it; the
    defaults are "" (every IPv4 address) and "::" (every IPv6 address).
    """
    if _has_option(description, "interface"):
        return
    from twisted.internet.endpoints import (
        SSL4ServerEndpoint,
        TCP4ServerEndpoint,
        TCP6ServerEndpoint,
    )

    # (schannel:tcp:... keeps its TCP endpoint as .inner.)
    inner = getattr(endpoint, "inner", endpoint)
    if isinstance(inner, TCP6ServerEndpoint):
        if inner._interface == "::":
            inner._interface = "::1"
    elif isinstance(inner, (TCP4ServerEndpoint, SSL4ServerEndpoint)):
        if inner._interface == "":
            inner._interface = "127.0.0.1"


def version_lines() -> list[str]:
    """What ``twist schannel --version`` prints: one ``name version`` per line.

    OpenSSL is the library pyOpenSSL (and so txschannel) links; cryptography
    may link another copy, said when it does.
    """
    import platform

    import cryptography
    import OpenSSL
    from cryptography.hazmat.backends.openssl import backend

    import twisted
    import txschannel

    linked = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode("ascii", "replace")
    theirs = backend.openssl_version_text()
    lines = [
        f"txschannel {txschannel.__version__}",
        f"pyOpenSSL {OpenSSL.__version__}",
        f"cryptography {cryptography.__version__}"
        + ("" if theirs == linked else f" (with {theirs})"),
        linked,
        f"Twisted {twisted.__version__}",
        f"Python {platform.python_version()}",
    ]
    return lines


def _seconds(option: str, text: str, *, zero: bool = False) -> float:
    """*text* as a number of seconds: above 0 (or, with *zero*, 0 too)."""
    try:
        value = float(text)
    except ValueError:
        raise usage.UsageError(f"--{option} {text!r}: expected a number of seconds") from None
    # (NaN and infinity are no durations either.)
    if not (0 <= value if zero else 0 < value) or not value < 1e9:
        raise usage.UsageError(
            f"--{option} {text!r}: must be {'0 or more' if zero else 'above 0'}"
        )
    return value


def _count(option: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise usage.UsageError(f"--{option} {text!r}: expected a whole number") from None
    if value < 1:
        raise usage.UsageError(f"--{option} {text!r}: must be at least 1")
    return value


def _parse(parse: Callable[[Any, str], Any], reactor: Any, description: str, option: str) -> Any:
    """*parse* (serverFromString or clientFromString) of *description*, or a
    UsageError naming *option* with what was wrong."""
    try:
        return parse(reactor, description)
    except Exception as e:  # Twisted's parsers raise ValueError, TypeError, ...
        kind = "server" if option.startswith(("--listen", "--status")) else "client"
        raise usage.UsageError(f"{option}: {parse_error_text(e, description, kind)}") from None


def _asks_for_client_certificates(endpoint: IStreamServerEndpoint) -> bool:
    credentials = getattr(endpoint, "credentials", None)
    if not isinstance(credentials, Credentials):
        return False
    return bool(credentials.openssl_context.get_verify_mode() & SSL.VERIFY_PEER)


def _usage_exit(message: str) -> NoReturn:
    sys.stderr.write(f"twist schannel: {message} (see twist schannel --help)\n")
    sys.stderr.flush()
    raise SystemExit(_EX_USAGE)
