"""systemd readiness: ``sd_notify`` in a few lines, with no new dependency.

A service with ``Type=notify`` (or ``notify-reload``) counts as started only
once it says ``READY=1`` on the datagram socket that ``$NOTIFY_SOCKET``
names; ``twist schannel`` says so once every listener is bound, wraps a
``SIGHUP`` reload in ``RELOADING=1`` ... ``READY=1`` and says
``STOPPING=1`` when it starts to drain. Without the variable (not under
systemd, or another ``Type=``) nothing is sent.

A name starting with ``@`` is a socket in Linux's abstract namespace: its
address starts with a NUL byte instead.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from twisted.logger import Logger

__all__ = ["NOTIFY_VARIABLE", "notify", "ready", "reloading", "stopping"]

#: The variable systemd sets for ``Type=notify`` services.
NOTIFY_VARIABLE = "NOTIFY_SOCKET"

_log = Logger(namespace="txschannel")
# A failure is said once per process: systemd going away should not fill
# the log at every reload.
_failed: list[str] = []


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send *state* (``"READY=1"``, ...) to ``$NOTIFY_SOCKET``.

    :return: whether it was sent; False without the variable, or when the
        socket cannot be reached (logged once, never raised: readiness must
        not stop the service).
    """
    name = (os.environ if environ is None else environ).get(NOTIFY_VARIABLE, "")
    if not name:
        return False
    address = "\0" + name[1:] if name.startswith("@") else name
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sender:
            sender.connect(address)
            sender.sendall(state.encode("utf-8"))
    except OSError as e:
        if not _failed:
            _failed.append(name)
            _log.warn(
                "cannot tell systemd {state} on {socket} ({variable}): {error}",
                state=state.splitlines()[0], socket=name, variable=NOTIFY_VARIABLE,
                error=e.strerror or str(e),
            )
        return False
    return True


def ready() -> bool:
    """``READY=1``: every listener is bound (again, after a reload)."""
    return notify("READY=1")


def reloading() -> bool:
    """``RELOADING=1`` with the time, as ``Type=notify-reload`` requires."""
    microseconds = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={microseconds}")


def stopping() -> bool:
    """``STOPPING=1``: draining, then exiting."""
    return notify("STOPPING=1")
