"""``--status ENDPOINT``: ``/metrics`` for Prometheus, ``/status`` as JSON and
``/healthz`` for load balancers (:mod:`txschannel.terminator.health`).

The figures are kept by :class:`Metrics` in a registry of its own, with
``prometheus_client`` (which also writes Prometheus' text format and
serves it, from Twisted's thread pool, with its ``MetricsResource``):

``txschannel_connections_open`` (gauge)
    connections accepted and not yet closed (handshaking or relaying).
``txschannel_connections_total`` (counter)
    connections accepted, including those aborted over ``--max-connections``.
``txschannel_handshakes_total{status}`` (counter)
    finished handshakes by outcome: ``OK``, or the :class:`~txschannel.Status`
    name of the failure (``UNTRUSTED_ROOT``, ...); a client that leaves, or
    is dropped by ``handshakeTimeout``, before finishing counts as
    ``INCOMPLETE_MESSAGE``.
``txschannel_sessions_resumed_total`` (counter)
    handshakes that resumed a session.
``txschannel_handshake_seconds`` (histogram)
    from accepting the connection to the end of a successful handshake.
``txschannel_bytes_total{direction}`` (counter)
    application bytes from (``in``) and to (``out``) clients.
``txschannel_certificate_expiry_timestamp_seconds{file}`` (gauge)
    the end of each served certificate's validity (Unix time), by file;
    updated at start and on every reload.

``/status`` gives the same figures as JSON, with the process id, the
listening addresses and each served certificate's dates. It names each
listen endpoint without the options that name files (the private key's,
the passphrase's, CAs', ...): the page is plain HTTP, readable by anyone
who can reach it.

The site is wrapped in a :class:`~txschannel.terminator.limits.BoundedFactory`
(see ``STATUS_MAX_CONNECTIONS``, ``STATUS_REQUEST_TIMEOUT`` and
``STATUS_IDLE_TIMEOUT`` there): at most 64 scrapes at once (more wait in
the kernel's accept queue) and each connection aborted when it has not
sent a whole request within 5 seconds of its accept or of its previous
answer, so that clients of the status port can never use up the file
descriptors that the relay needs, and slow senders holding every slot
cannot keep a health check waiting for more than a few seconds.

With ``--workers``, each worker writes its figures to files in a folder
that its supervisor made (``prometheus_client``'s multiprocess mode), and
whichever worker answers a scrape adds up those of every worker: counters
and the histogram over all workers that ever ran, the open-connection
gauge and certificate expiry over the workers alive now.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.twisted import MetricsResource
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from txschannel.credentials import Credentials
from txschannel.terminator.health import Health, HealthResource
from txschannel.terminator.limits import (
    STATUS_IDLE_TIMEOUT,
    STATUS_MAX_CONNECTIONS,
    STATUS_REQUEST_TIMEOUT,
    BoundedFactory,
)

__all__ = ["Metrics", "status_site"]

#: The endpoint-string options that /status repeats: addresses and
#: settings. Every other option is left out, since it may name a file
#: (privateKey=, passphraseFile=, clientCA=, sni=, ...), including options
#: that do not exist yet.
_SHOWN_OPTIONS = frozenset({
    "port", "interface", "backlog", "alpn", "minimumVersion", "maximumVersion",
    "requireClientCertificate", "handshakeTimeout", "handshakeMemory", "ocsp",
})


class Metrics:
    """The figures of one ``twist schannel`` process (see the module's list).

    :param multiprocess: the folder where every worker of a ``--workers``
        supervisor keeps its figures, or ``None`` for one process. It must
        have been named in ``PROMETHEUS_MULTIPROC_DIR`` before
        ``prometheus_client`` was imported.
    :ivar registry: the ``prometheus_client`` registry to read them from.
    :raises RuntimeError: *multiprocess* was given but ``prometheus_client``
        keeps its figures in memory.
    """

    def __init__(self, multiprocess: str | None = None) -> None:
        registry = CollectorRegistry()
        self.registry = registry
        self.multiprocess = multiprocess
        if multiprocess is not None:
            if not getattr(values.ValueClass, "_multiprocess", False):
                raise RuntimeError(
                    "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set"
                )
            # The metrics below write to this worker's files; what is read
            # is the sum over every worker's files.
            self.registry = CollectorRegistry()
            MultiProcessCollector(  # type: ignore[no-untyped-call]
                self.registry, path=multiprocess
            )
        self.started = time.time()
        self.connections_open = Gauge(
            "txschannel_connections_open",
            "Connections accepted and not yet closed.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.connections = Counter(
            "txschannel_connections",
            "Connections accepted.",
            registry=registry,
        )
        self.handshakes = Counter(
            "txschannel_handshakes",
            "Finished TLS handshakes by outcome: OK or the Status name of the failure.",
            ["status"],
            registry=registry,
        )
        self.sessions_resumed = Counter(
            "txschannel_sessions_resumed",
            "TLS handshakes that resumed a session.",
            registry=registry,
        )
        self.handshake_seconds = Histogram(
            "txschannel_handshake_seconds",
            "Seconds from accepting a connection to the end of its successful handshake.",
            registry=registry,
        )
        bytes_total = Counter(
            "txschannel_bytes",
            "Application bytes from (in) and to (out) clients.",
            ["direction"],
            registry=registry,
        )
        # Children bound once: the byte counters move on every read and write.
        self.bytes_in = bytes_total.labels(direction="in")
        self.bytes_out = bytes_total.labels(direction="out")
        self.certificate_expiry = Gauge(
            "txschannel_certificate_expiry_timestamp_seconds",
            "When each served certificate's validity ends (Unix time), by file.",
            ["file"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._handshake_ok = self.handshakes.labels(status="OK")
        self.certificates: list[dict[str, Any]] = []

    def handshake_succeeded(self, seconds: float, resumed: bool) -> None:
        """A handshake finished with OK after *seconds*."""
        self._handshake_ok.inc()
        self.handshake_seconds.observe(seconds)
        if resumed:
            self.sessions_resumed.inc()

    def handshake_failed(self, status: str) -> None:
        """A handshake ended with *status* (a :class:`~txschannel.Status` name)."""
        self.handshakes.labels(status=status).inc()

    def note_certificates(
        self, listen: Sequence[tuple[str, IStreamServerEndpoint]]
    ) -> None:
        """Read the served certificates' expiry from every listen endpoint's credentials."""
        if self.multiprocess is None:
            # (Not in multiprocess mode: a worker's certificates change only
            # with a new generation of workers.)
            self.certificate_expiry.clear()
        certificates: list[dict[str, Any]] = []
        for description, endpoint in listen:
            credentials = getattr(endpoint, "credentials", None)
            if not isinstance(credentials, Credentials):
                continue
            for identity in credentials.identities:
                leaf = identity.leaf
                name = identity.file or identity.source
                expiry = leaf.not_valid_after_utc
                self.certificate_expiry.labels(file=name).set(expiry.timestamp())
                certificates.append({
                    "endpoint": _shown_endpoint(description),
                    "file": name,
                    "subject": leaf.subject.rfc4514_string(),
                    "not_before": leaf.not_valid_before_utc.isoformat(),
                    "not_after": expiry.isoformat(),
                })
        self.certificates = certificates

    def figures(self) -> dict[str, Any]:
        """Every figure, by metric name (labelled ones as a dict by label value)."""
        figures: dict[str, Any] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                if sample.labels:
                    label = ",".join(
                        v for k, v in sorted(sample.labels.items()) if k != "le"
                    )
                    bucket = sample.labels.get("le")
                    slot = figures.setdefault(sample.name, {})
                    if bucket is not None:
                        slot[bucket] = sample.value
                    else:
                        slot[label] = sample.value
                else:
                    figures[sample.name] = sample.value
        return figures


class _Status(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics, service: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.metrics = metrics
        self.service = service

    def render_GET(self, request: Request) -> bytes:
        limit = getattr(self.service, "limit", None)
        ports = getattr(self.service, "ports", [])
        body = {
            "pid": os.getpid(),
            "started": self.metrics.started,
            "uptime_seconds": round(time.time() - self.metrics.started, 3),
            "listening": [_address_text(port.getHost()) for port in ports],
            "max_connections": getattr(limit, "maximum", None),
            "accepting": not getattr(limit, "paused", False),
            "certificates": self.metrics.certificates,
            "metrics": self.metrics.figures(),
        }
        request.setHeader(b"content-type", b"application/json")  # type: ignore[no-untyped-call]
        request.setHeader(b"cache-control", b"no-store")  # type: ignore[no-untyped-call]
        return json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"


def _address_text(address: Any) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(getattr(address, "name", address))


def _shown_endpoint(description: str) -> str:
    """*description* without its options that could name a file.

    Positional parts (the endpoint type, the port) are kept, and the
    options in a short list of addresses and settings; any other
    ``name=value`` is left out.
    """
    kept: list[str] = []
    for part in _split_unescaped(description, ":"):
        pieces = _split_unescaped(part, "=", 1)
        if len(pieces) == 1 or pieces[0] in _SHOWN_OPTIONS:
            kept.append(part)
    return ":".join(kept)


def _split_unescaped(text: str, separator: str, most: int = -1) -> list[str]:
    """*text* split at each *separator* not escaped by a backslash (kept escaped)."""
    pieces: list[str] = []
    current: list[str] = []
    escaped = False
    for character in text:
        if escaped:
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == separator and (most < 0 or len(pieces) < most):
            pieces.append("".join(current))
            current = []
            continue
        current.append(character)
    pieces.append("".join(current))
    return pieces


def status_site(metrics: Metrics, service: Any, clock: IReactorTime) -> BoundedFactory:
    """The web site of ``--status``: ``/metrics``, ``/status`` and ``/healthz``
    (when *service* has a ``health``, see :mod:`txschannel.terminator.health`);
    404 elsewhere.

    It is bounded (``STATUS_MAX_CONNECTIONS``, ``STATUS_IDLE_TIMEOUT`` and
    ``STATUS_REQUEST_TIMEOUT`` of :mod:`txschannel.terminator.limits`, timed
    by *clock*): give the
    listening port to the result's ``limit`` (``limit.add_port``) so that
    the clients beyond the limit wait.
    """
    root = Resource()  # type: ignore[no-untyped-call]
    root.putChild(b"metrics", MetricsResource(metrics.registry))  # type: ignore[no-untyped-call]
    root.putChild(b"status", _Status(metrics, service))
    health = getattr(service, "health", None)
    if isinstance(health, Health):
        root.putChild(b"healthz", HealthResource(health))
    site = Site(root)  # type: ignore[no-untyped-call]
    # One line per scrape would drown the connection log.
    site.log = lambda request: None  # type: ignore[method-assign]
    site.noisy = False
    return BoundedFactory(
        site, STATUS_MAX_CONNECTIONS, STATUS_IDLE_TIMEOUT, clock, STATUS_REQUEST_TIMEOUT
    )
