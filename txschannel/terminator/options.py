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
from pathlib import Path
from typing import Any, NoReturn

from OpenSSL import SSL
from twisted.internet.interfaces import (
    IStreamServerEndpoint,
)
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
from txschannel.endpoints import (
    SchannelClientEndpoint,
    parse_error_text,
)
from txschannel.haproxy import server_from_string
from txschannel.peertext import PeerText
from txschannel.terminator import notify
from txschannel.terminator.access import AccessPolicy, parse_allowed_name
from txschannel.terminator.addresses import socket_text
from txschannel.terminator.limits import (
    STATUS_IDLE_TIMEOUT,
    STATUS_MAX_CONNECTIONS,
)
from txschannel.terminator.routing import Route, Router, normalize_route_name
from txschannel.terminator.selfsigned import default_state_dir, ensure_self_signed
from txschannel.terminator.service import VALIDITY_CHECK_INTERVAL, SchannelService
from txschannel.terminator.workers import (
    AdoptingReactor,
    RecordingReactor,
    Supervisor,
    Sweep,
    WorkersError,
    make_metrics_folder,
    open_sockets,
    record_listening,
    sweep_metrics_folders,
    worker_count,
)

__all__ = ["DEFAULT_PORT", "Options", "version_lines"]

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
            f"{STATUS_MAX_CONNECTIONS} connections, each aborted after "
            f"{STATUS_IDLE_TIMEOUT:g} s idle).",
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
            "Abort a connection (both sides) after SECONDS without a byte either way.",
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

    def _check_proxy_protocol(self) -> None:
        given = self["proxy-protocol"]
        if given is None:
            return
        version = given.lower()
        if version not in ("v1", "v2"):
            raise usage.UsageError(f"--proxy-protocol {given!r}: expected v1 or v2")
        self["proxy-protocol"] = version
        backends: list[tuple[str, object]] = []
        if self["connect-endpoint"] is not None:
            backends.append((f"--connect {self['connect']!r}", self["connect-endpoint"]))
        if self["router"] is not None:
            backends += [
                (f"--route {route.name}={route.description}", route.endpoint)
                for route in self["router"].routes
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

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse, or exit with one line naming what is wrong (status 64)."""
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as e:
            _usage_exit(str(e))

    def postOptions(self) -> None:
        """Build the endpoints and the default certificate; any problem is a UsageError.

        With ``--workers`` above 1 this process becomes the supervisor: it
        returns from here only in the workers it forks.
        """
        try:
            self["workers"] = worker_count(str(self["workers"]))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["drain-timeout"] = _seconds(
            "drain-timeout", str(self["drain-timeout"]), zero=True
        )
        self["drain-delay"] = _seconds("drain-delay", str(self["drain-delay"]), zero=True)
        self["worker"] = None
        if self["workers"] == 1:
            from twisted.internet import reactor

            self._build(reactor, reactor)
        else:
            self._supervise()

    def _supervise(self) -> None:
        """Parse, open the sockets, build the credentials, fork; return in a worker."""
        if "twisted.internet.reactor" in sys.modules:
            raise usage.UsageError(
                "--workers: a reactor is installed already (by twist --reactor?), and the "
                "workers must each install their own; leave --reactor out"
            )
        recording = RecordingReactor()
        self._build(recording, recording)
        supervised = list(self["endpoints"])
        listening = [(f"--listen {d!r}", d, e) for d, e in supervised]
        if self["status-endpoint"] is not None:
            listening.append(
                (f"--status {self['status']!r}", self["status"], self["status-endpoint"])
            )
        count = self["workers"]
        sockets: list[dict[tuple[object, ...], Any]] = [{} for _ in range(count)]
        # Said once, here, for all the workers: this process opened them.
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
        if "twisted.internet.reactor" in sys.modules:
            raise RuntimeError("the supervisor imported the reactor while parsing (a bug)")
        metrics_folder: str | None = None
        swept = Sweep()
        if self["status-endpoint"] is not None:
            # Each worker writes its figures there; any worker's /metrics
            # adds them all up (prometheus_client's multiprocess mode).
            swept = sweep_metrics_folders()
            metrics_folder, _ = make_metrics_folder()  # locked until we all exit
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_folder
        log = self._supervisor_log()
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
        # Reloads and validity warnings are the supervisor's, with its log.
        keeper = SchannelService(supervised, Factory(), None, validity_interval=None)
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

        for line in self["announce"]:
            log.info("{line}", line=line)
        for option, description, address in where:
            log.info(
                "listening on {endpoint} at {address}" if option == "--listen"
                else "serving /metrics and /status on {endpoint} at {address}",
                endpoint=description, address=address,
            )
        supervisor = Supervisor(
            count, sockets, log, reload, keeper.check_validity,
            # (Each worker accepts for --drain-delay before its own drain.)
            drain_timeout=self["drain-delay"] + self["drain-timeout"],
            reload_interval=self["reload-interval"],
            validity_interval=VALIDITY_CHECK_INTERVAL,
            on_exit=exited, cleanup=cleanup,
        )
        # Every listening socket is bound (the workers adopt them): ready.
        notify.ready()
        worker = supervisor.run()
        # In a worker, from here on: an ordinary twist schannel process
        # whose endpoints adopt the supervisor's sockets and serve its
        # credentials (the same OpenSSL contexts, ticket keys included).
        if os.environ.get("LISTEN_PID") == str(worker.supervisor):
            os.environ["LISTEN_PID"] = str(os.getpid())  # systemd's sockets are ours now
        from twisted.internet import reactor

        self._build(reactor, AdoptingReactor(reactor, worker.sockets))
        for (_, endpoint), (_, built) in zip(self["endpoints"], supervised, strict=True):
            credentials = getattr(built, "credentials", None)
            if isinstance(credentials, Credentials):
                endpoint.credentials = credentials
        self["announce"] = []  # the supervisor said it, once
        self["worker"] = worker
        parent = getattr(self, "parent", None)
        if parent is not None and "fileLogObserverFactory" in parent:
            # twist makes its log observer after parsing, from this factory.
            parent["fileLogObserverFactory"] = _worker_lines(
                parent["fileLogObserverFactory"], os.getpid()
            )

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

    def _build(self, reactor: Any, listen_reactor: Any) -> None:
        """Parse every endpoint (listening ones with *listen_reactor*); check the rest."""
        from twisted.internet.endpoints import clientFromString, serverFromString

        self["reactor"] = reactor
        for name in ("reload-interval", "idle-timeout", "connect-timeout"):
            if self[name] is not None:
                self[name] = _seconds(name, self[name])
        if self["max-connections"] is not None:
            self["max-connections"] = _count("max-connections", self["max-connections"])
        announce: list[str] = []
        descriptions: list[str] = list(self["listen"])
        inspector = self["connect"] is None and not self["route"]
        if not descriptions:
            # A demo: reachable from this machine only, until --listen says
            # otherwise.
            default = f"schannel:tcp:{DEFAULT_PORT}:interface=127.0.0.1"
            descriptions = [default]
            self["default-listen"] = default
        if inspector:
            # The inspector speaks HTTP/1.x: say so in ALPN, so that clients
            # offering h2 do not guess.
            descriptions = [
                d + ":alpn=http/1.1,http/1.0"
                if d.startswith("schannel:") and not _has_option(d, "alpn")
                else d
                for d in descriptions
            ]
        # An endpoint that names a certificate of its own in any way gets
        # the parser's own error when it is incomplete, never this one.
        needs_default = [
            d for d in descriptions
            if d.startswith("schannel:")
            and not any(_has_option(d, option) for option in _IDENTITY_OPTIONS)
        ]
        self["self-signed"] = None
        if needs_default:
            folder = Path(self["state-dir"]) if self["state-dir"] else default_state_dir()
            try:
                kept = ensure_self_signed(folder)
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
            self["self-signed"] = kept
            verb = "created" if kept.created else "using"
            announce += [
                f"{verb} the self-signed certificate for localhost, 127.0.0.1 and ::1: "
                f"{kept.certificate_file}",
                f"its SHA-256 fingerprint: {kept.fingerprint}",
            ]
            suffix = f":certificate={_escape(str(kept.server_file))}"
            descriptions = [d + suffix if d in needs_default else d for d in descriptions]
        listen: list[tuple[str, IStreamServerEndpoint]] = []
        given = self["listen"] or [self["default-listen"]]
        for original, description in zip(given, descriptions, strict=True):
            if not description.startswith("schannel:") and any(
                _has_option(description, option)
                for option in ("ocspResponse", "ocsp", "ocspAllowPrivate")
            ):
                # Said here: the plain parser's "unexpected keyword" would not.
                raise usage.UsageError(
                    f"--listen {original!r}: ocspResponse=/ocsp=/ocspAllowPrivate= need a "
                    "schannel: endpoint"
                )
            # (ocspResponse= and ocsp=auto are the schannel: parser's, which
            # gives the endpoint an OCSP stapler: txschannel.ocsp.)
            # (haproxy: is txschannel's, which checks the header: see
            # txschannel.haproxy.)
            endpoint = _parse(
                server_from_string, listen_reactor, description, f"--listen {original!r}"
            )
            listen.append((description, endpoint))
        self["endpoints"] = listen
        self["connect-endpoint"] = None
        if self["connect"] is not None:
            self["connect-endpoint"] = _parse(
                clientFromString, reactor, self["connect"], f"--connect {self['connect']!r}"
            )
        self["router"] = None
        if self["route"]:
            routes = []
            for name, description, given in self["route"]:
                endpoint = _parse(clientFromString, reactor, description, f"--route {given!r}")
                routes.append(Route(name, description, endpoint))
            fallback = None
            if self["connect-endpoint"] is not None:
                fallback = Route(None, self["connect"], self["connect-endpoint"])
            elif any(not d.startswith("schannel:") for d, _ in listen):
                raise usage.UsageError(
                    "--route without --connect: a plain listener's clients send no server "
                    "name, so they could never be routed; add --connect for them"
                )
            self["router"] = Router(routes, fallback, reactor)
        self._check_proxy_protocol()
        self["status-endpoint"] = None
        if self["status"] is not None:
            _check_status_description(self["status"])
            self["status-endpoint"] = _parse(
                serverFromString, listen_reactor, self["status"], f"--status {self['status']!r}"
            )
            _loopback_unless_given(self["status-endpoint"], self["status"])
        policy = AccessPolicy(tuple(self["allow-cn"]), tuple(self["allow-san"]))
        if policy.active and not any(_asks_for_client_certificates(e) for _, e in listen):
            raise usage.UsageError(
                "--allow-cn/--allow-san need a schannel: listen endpoint that asks for client "
                "certificates: add clientCA=<CA file> (and requireClientCertificate=yes)"
            )
        self["policy"] = policy
        if inspector:
            announce.append("serving the inspector")
        for name, description, _ in self["route"]:
            announce.append(f"relaying server name {name} to {description}")
        if self["connect"] is not None:
            announce.append(
                f"relaying {'other server names ' if self['route'] else ''}to {self['connect']}"
            )
        elif self["route"]:
            announce.append("refusing other server names (unrecognized_name)")
        if self["self-signed"] is not None and inspector:
            ports = [
                match.group(1)
                for match in (re.match(r"schannel:tcp6?:(?:port=)?(\d+)", d) for d in descriptions)
                if match
            ]
            url = f"https://localhost:{ports[0] if ports else 'PORT'}/"
            announce.append(
                f"open {url} (the certificate is self-signed: trust "
                f"{self['self-signed'].certificate_file}, SHA-256 "
                f"{self['self-signed'].fingerprint})"
            )
            announce.append(f"try: curl --cacert {self['self-signed'].certificate_file} {url}")
        self["announce"] = announce


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
