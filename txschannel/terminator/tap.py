"""``twist schannel``: a TLS terminator and tunnel, as a Twisted service.

``twist schannel [--listen ENDPOINT]... [--connect ENDPOINT]`` accepts on
every listen endpoint and relays each connection both ways to a new
connection on the connect endpoint (:mod:`~txschannel.terminator.relay`);
either side may be plain or ``schannel:``. Without ``--connect`` it serves
the inspector (:mod:`~txschannel.terminator.inspector`). Without
``--listen`` it listens on ``schannel:tcp:8443`` with a self-signed
certificate (:mod:`~txschannel.terminator.selfsigned`).

This module assembles the parts: the command line
(:mod:`~txschannel.terminator.options`), the gate around every connection
(:mod:`~txschannel.terminator.gate`) and the service that listens, reloads
and drains (:mod:`~txschannel.terminator.service`). The plugin module
``twisted/plugins/txschannel_tap.py`` makes :class:`Options` and
:func:`makeService` the ``schannel`` subcommand of ``twist``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import (
    IProtocolFactory,
    IStreamClientEndpoint,
)

from txschannel.endpoints import (
    SchannelServerEndpoint,
)
from txschannel.terminator.gate import GateFactory
from txschannel.terminator.inspector import InspectorSite
from txschannel.terminator.limits import (
    ConnectionLimit,
)
from txschannel.terminator.options import Options
from txschannel.terminator.proxyheader import header_v1, header_v2, tls_facts
from txschannel.terminator.relay import RelayFactory
from txschannel.terminator.routing import Router
from txschannel.terminator.service import VALIDITY_CHECK_INTERVAL, SchannelService, StopSignals
from txschannel.terminator.workers import (
    Worker,
)

__all__ = ["Options", "makeService"]


def _proxy_header(version: str) -> Callable[[Any], bytes]:
    if version == "v1":
        return lambda transport: header_v1(transport.getPeer(), transport.getHost())
    return lambda transport: header_v2(
        transport.getPeer(), transport.getHost(), tls_facts(transport)
    )


def makeService(options: Options) -> SchannelService:
    """The ``twist schannel`` service for parsed *options*."""
    reactor = options["reactor"]
    connect: IStreamClientEndpoint | None = options["connect-endpoint"]
    router: Router | None = options["router"]
    application: IProtocolFactory
    if connect is None and router is None:
        application = InspectorSite()
        # The page shows what each client offered: the inspector's TLS
        # listeners keep the ClientHello (a relay's never do).
        for _, endpoint in options["endpoints"]:
            if isinstance(endpoint, SchannelServerEndpoint):
                endpoint.keep_client_hello = True
    else:
        application = RelayFactory(
            connect, options["connect"], reactor,
            connect_timeout=options["connect-timeout"], router=router,
            proxy_header=(
                _proxy_header(options["proxy-protocol"]) if options["proxy-protocol"] else None
            ),
        )
    limit = ConnectionLimit(options["max-connections"])
    worker: Worker | None = options.get("worker")
    metrics = None
    if options["status-endpoint"] is not None:
        from txschannel.terminator.metrics import Metrics, status_site

        metrics = Metrics(
            multiprocess=os.environ.get("PROMETHEUS_MULTIPROC_DIR") if worker else None
        )
    gated = GateFactory(
        application, options["policy"], reactor,
        limit=limit, idle_timeout=options["idle-timeout"], metrics=metrics,
        worker=os.getpid() if worker is not None else None,
    )
    service = SchannelService(
        options["endpoints"],
        gated,
        reactor,
        reload_interval=options["reload-interval"] if worker is None else None,
        announce=options["announce"],
        limit=limit,
        prepare=router.install if router is not None else None,
        on_credentials=metrics.note_certificates if metrics is not None else None,
        # Relayed connections may be anything long-lived; the inspector's
        # are idle HTTP keep-alives more often than not.
        drain_timeout=options["drain-timeout"] if isinstance(application, RelayFactory) else 0,
        drain_delay=options["drain-delay"],
        # A worker's supervisor reloads and warns, for all workers at once.
        signals=worker is None,
        validity_interval=VALIDITY_CHECK_INTERVAL if worker is None else None,
        worker=worker is not None,
        replaced=worker.replaced if worker is not None else None,
    )
    if metrics is not None:
        service.status = (
            options["status"], options["status-endpoint"], status_site(metrics, service, reactor)
        )
    if hasattr(reactor, "callWhenRunning"):
        reactor.callWhenRunning(StopSignals(reactor).install)
    return service
