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

from twisted.internet.interfaces import IProtocolFactory

from txschannel.endpoints import SchannelServerEndpoint
from txschannel.terminator.gate import GateFactory
from txschannel.terminator.inspector import InspectorSite
from txschannel.terminator.limits import ConnectionLimit
from txschannel.terminator.options import Options
from txschannel.terminator.proxyheader import header_v1, header_v2, tls_facts
from txschannel.terminator.relay import RelayFactory
from txschannel.terminator.service import VALIDITY_CHECK_INTERVAL, SchannelService, StopSignals

__all__ = ["Options", "makeService"]


def _proxy_header(version: str) -> Callable[[Any], bytes]:
    if version == "v1":
        return lambda transport: header_v1(transport.getPeer(), transport.getHost())
    return lambda transport: header_v2(
        transport.getPeer(), transport.getHost(), tls_facts(transport)
    )


def makeService(options: Options) -> SchannelService:
    """The ``twist schannel`` service for parsed *options* (their :attr:`Options.plan`)."""
    plan = options.plan
    reactor = plan.reactor
    backend = plan.backend
    worker = plan.worker
    application: IProtocolFactory
    if backend.endpoint is None and backend.router is None:
        application = InspectorSite()
        # The page shows what each client offered: the inspector's TLS
        # listeners keep the ClientHello (a relay's never do).
        for _, endpoint in plan.listeners.endpoints:
            if isinstance(endpoint, SchannelServerEndpoint):
                endpoint.keep_client_hello = True
    else:
        application = RelayFactory(
            backend.endpoint, backend.connect, reactor,
            connect_timeout=plan.limits.connect_timeout, router=backend.router,
            proxy_header=(
                _proxy_header(backend.proxy_protocol) if backend.proxy_protocol else None
            ),
        )
    limit = ConnectionLimit(plan.limits.max_connections)
    metrics = None
    if plan.status is not None:
        from txschannel.terminator.metrics import Metrics, status_site

        metrics = Metrics(
            multiprocess=os.environ.get("PROMETHEUS_MULTIPROC_DIR") if worker else None
        )
    gated = GateFactory(
        application, plan.policy, reactor,
        limit=limit, idle_timeout=plan.limits.idle_timeout, metrics=metrics,
        worker=os.getpid() if worker is not None else None,
    )
    router = backend.router
    service = SchannelService(
        list(plan.listeners.endpoints),
        gated,
        reactor,
        reload_interval=plan.lifecycle.reload_interval if worker is None else None,
        announce=list(plan.announce),
        limit=limit,
        prepare=router.install if router is not None else None,
        on_credentials=metrics.note_certificates if metrics is not None else None,
        # Relayed connections may be anything long-lived; the inspector's
        # are idle HTTP keep-alives more often than not.
        drain_timeout=(
            plan.lifecycle.drain_timeout if isinstance(application, RelayFactory) else 0
        ),
        drain_delay=plan.lifecycle.drain_delay,
        # A worker's supervisor reloads and warns, for all workers at once.
        signals=worker is None,
        validity_interval=VALIDITY_CHECK_INTERVAL if worker is None else None,
        worker=worker is not None,
        replaced=worker.replaced if worker is not None else None,
    )
    if worker is not None and worker.board is not None and worker.cell is not None:
        # /healthz answers for every worker: each marks its own cell.
        board, cell = worker.board, worker.cell
        limit.on_turn = lambda at_limit: board.mark(cell, at_limit)
        service.health.board = board
    if metrics is not None and plan.status is not None:
        description, endpoint = plan.status
        service.status = (description, endpoint, status_site(metrics, service, reactor))
    if hasattr(reactor, "callWhenRunning"):
        reactor.callWhenRunning(StopSignals(reactor).install)
    return service
