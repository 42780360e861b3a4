"""How the terminator writes an address: ``host:port``, ``[v6]:port`` or ``unix:path``.

The same text in the inspector's page, each connection's log line and the
"listening on" lines, whether the address is Twisted's or a socket's.
"""

from __future__ import annotations

import socket

__all__ = ["address_text", "socket_text"]


def address_text(address: object) -> str:
    """``host:port``, ``[v6]:port`` or ``unix:path`` for a Twisted address."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    name = getattr(address, "name", None)
    if name is not None:
        return f"unix:{name.decode() if isinstance(name, bytes) else name}"
    return str(address)


def socket_text(listening: socket.socket) -> str:
    """``host:port`` or ``[v6]:port`` of a listening socket (``unix:path`` for one
    systemd passed)."""
    name = listening.getsockname()
    if isinstance(name, tuple):
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"unix:{name.decode(errors='replace') if isinstance(name, bytes) else name}"
