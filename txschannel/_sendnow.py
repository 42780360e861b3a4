"""TCP transports that send a write at once when nothing is queued before it.

Twisted's TCP transport (``twisted.internet.tcp.Server`` and ``Client``)
queues every write and asks the reactor to wake it when the socket is
writable, which on a socket that almost always is (loopback, a fast
network) costs two ``epoll_ctl`` calls and one more reactor turn per
write: per 64 KiB chunk of a bulk transfer, and per flight of a short TLS
connection. :func:`send_at_once` switches such a transport to a subclass
whose ``write`` tries ``send()`` first when its queue is empty, and queues
only what the kernel does not take, through Twisted's own ``write``. In
everything else (flow control, pausing its producer, closing, errors) the
transport stays Twisted's.

Twisted's queue also paced a producer that writes until it is paused: the
queue filled, the producer was paused, and the reactor ran (other
connections, timers) before it was resumed. Sent at once to a peer that
keeps up, nothing is ever queued and such a loop would keep the reactor
until its data ran out. So a transport sends at most
:data:`AT_ONCE_BUDGET` bytes at once between two of the reactor's calls to
its ``doWrite()``; past that its writes take the queue, which pauses the
producer as Twisted's always did, and the next ``doWrite()`` (a later
reactor turn) starts a new budget. A relay, which writes once per turn,
takes the queue once per :data:`AT_ONCE_BUDGET` bytes.

Private: txschannel's TLS transport applies it to the TCP transport under
it, and ``twist schannel`` to its plain connections.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

__all__ = ["AT_ONCE_BUDGET", "send_at_once"]

#: Bytes a switched transport sends at once between two reactor calls to
#: its doWrite(): with Twisted's 64 KiB pause threshold on top, a producer
#: writing until paused gives the reactor back every 1.1 MiB at most. (512
#: KiB cost bulk transfers about 10% in alternating runs: a relay queues,
#: and a writer pauses, once per budget.)
AT_ONCE_BUDGET = 1024 * 1024


def _sends_at_once(cls: type) -> type:
    """A subclass of *cls* (a Twisted TCP transport class) whose ``write``
    sends at once when nothing is queued, and otherwise is *cls*'s own."""
    queue = cls.write  # type: ignore[attr-defined]
    write_queued = cls.doWrite  # type: ignore[attr-defined]

    def write(transport: Any, data: bytes) -> None:
        spent = transport.sent_at_once
        if (
            type(data) is bytes
            and data
            and spent < AT_ONCE_BUDGET
            and not transport.dataBuffer
            and not transport._tempDataBuffer
            and transport.connected
            and not transport._writeDisconnected
            # After abortConnection() the transport stays connected until
            # its connectionLost() a turn later; what is queued meanwhile
            # is dropped, and must not be sent here either.
            and not transport._aborting
            and not transport.TLS
            # A paused producer, or a pull producer, is asked for more by
            # doWrite() once the queue drains: their writes take the queue,
            # or they would never be asked again.
            and (
                transport.producer is None
                or (transport.streamingProducer and not transport.producerPaused)
            )
        ):
            try:
                sent = transport.socket.send(data)
            except OSError:
                # EAGAIN; or an error, which the queued write's doWrite()
                # meets again and reports as the connection's loss, as it
                # always has.
                sent = 0
            transport.sent_at_once = spent + sent
            if sent == len(data):
                return
            data = data[sent:]
        queue(transport, data)

    def doWrite(transport: Any) -> Any:
        # The reactor found the socket writable in a turn of its own: a new
        # budget (see the module's docstring).
        transport.sent_at_once = 0
        return write_queued(transport)

    return type(
        cls.__name__,
        (cls,),
        {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
            "write": write,
            "doWrite": doWrite,
            #: Bytes sent at once since the reactor last called doWrite().
            "sent_at_once": 0,
        },
    )


#: The attributes of Twisted's transport that the switched ``write`` reads.
#: A Twisted that renames one would break every write, so the switch is
#: made only on a transport that has them all (checked on the first one).
_READS = (
    "dataBuffer",
    "_tempDataBuffer",
    "connected",
    "_writeDisconnected",
    "_aborting",
    "TLS",
    "producer",
    "streamingProducer",
    "producerPaused",
    "socket",
)

#: Twisted's TCP transport classes, and their send-at-once subclasses.
_SWITCHED: dict[type, type] = {cls: _sends_at_once(cls) for cls in (tcp.Server, tcp.Client)}
#: Whether this Twisted's transports were found to carry every name of _READS.
_checked = False


def send_at_once(transport: object) -> None:
    """Switch *transport*, a Twisted TCP transport, to sending each write at
    once when nothing is queued before it (see the module's docstring).

    Transports of any other class (Unix sockets, another reactor's TCP, a
    test's transport, one already switched) are left alone, and so is every
    transport when this Twisted's lacks a name the switched ``write`` reads
    (:data:`_READS`). Never raises.
    """
    global _checked
    switched = _SWITCHED.get(type(transport))
    if switched is not None and not _checked:
        if not all(hasattr(transport, name) for name in _READS):
            # Another Twisted than the ones tested: keep its own write.
            _SWITCHED.clear()
            return
        _checked = True
    if switched is not None:
        # The class, not an instance attribute: a connection holds nothing more.
        transport.__class__ = switched
