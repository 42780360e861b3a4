"""Attack on ``schannel:haproxy:`` with ``handshakeMemory``: the bytes of an
unfinished PROXY header count against the same handshake budget as an
unfinished ClientHello.

The listener has the smallest budget (``handshakeMemory=131445``). First
``--connections`` (12) clients each send a PROXY v2 header announcing
``--header-bytes`` (16,384, the largest a listener takes) and all but 16
of them, then stall (12 of them hold more than the budget); then 12 clients send a valid PROXY
header and a stalled 64,000-byte ClientHello. The figure is how many of
each stay open (over budget they must be closed) and twist's resident
memory. About 10 s::

    python benchmarks/attacks/proxy_header_memory.py [--connections 12] [--header-bytes 16384]
"""

from __future__ import annotations

import argparse
import os
import socket
import time

from _peers import Certificates, Twist, free_port

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11"  # PROXY TCP4; the length follows


def unfinished_header(size: int) -> bytes:
    """A PROXY v2 header announcing *size* bytes in all, less its last 16."""
    return PROXY_V2_SIGNATURE + (size - 16).to_bytes(2, "big") + os.urandom(size - 32)


def states(sockets: list[socket.socket]) -> dict[str, int]:
    """How many of *sockets* are open, closed by the server or reset."""
    counts: dict[str, int] = {}
    for s in sockets:
        s.settimeout(0.2)
        try:
            state = "closed" if s.recv(10) == b"" else "data"
        except TimeoutError:
            state = "open"
        except ConnectionResetError:
            state = "reset"
        counts[state] = counts.get(state, 0) + 1
    return counts


def main() -> None:
    from tests.support.hellos import (
        claimed_client_hello,  # after _peers put the checkout on the path
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=12)
    parser.add_argument("--header-bytes", type=int, default=16384)
    args = parser.parse_args()
    certificates = Certificates()
    port = free_port()
    extra = ":handshakeMemory=131445:handshakeTimeout=20"
    with Twist("--listen", certificates.listen(port, extra, kind="schannel:haproxy:tcp")) as twist:
        twist.wait_for("listening on")
        rss_before = twist.rss_kib()
        headers = []
        for _ in range(args.connections):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(unfinished_header(args.header_bytes))
            headers.append(s)
            time.sleep(0.05)
        time.sleep(0.5)
        rss_headers = twist.rss_kib()
        header_states = states(headers)
        for s in headers:
            s.close()
        time.sleep(0.5)
        hellos = []
        for _ in range(args.connections):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n" + claimed_client_hello(130816, 64000))
            hellos.append(s)
            time.sleep(0.05)
        time.sleep(0.5)
        hello_states = states(hellos)
        for s in hellos:
            s.close()
        print("stalled PROXY headers:", header_states)
        print("stalled ClientHellos: ", hello_states)
        print("close reasons:", twist.close_reasons())
    print(f"RESULT proxy header memory, {args.connections} stalled "
          f"{args.header_bytes - 16}-byte PROXY headers: "
          f"{header_states.get('open', 0)} held, {args.connections - header_states.get('open', 0)} "
          f"refused (stalled ClientHellos: {hello_states.get('open', 0)} held), "
          f"twist RSS {rss_before} -> {rss_headers} KiB")


if __name__ == "__main__":
    main()
