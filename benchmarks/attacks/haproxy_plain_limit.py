"""Attack on ``--max-connections`` with a plain ``haproxy:tcp:`` listener:
connections that never send their PROXY header are bounded too.

``twist schannel --max-connections 5`` runs with RLIMIT_NOFILE 256 behind
``haproxy:tcp:`` (no TLS) relaying to a plain backend. ``--connections``
(230) clients connect and send nothing. Then a well-behaved balancer
connection sends a valid header and a request. The figure is twist's
descriptors before and after the idle clients, and whether the balancer's
request was answered. About 10 s::

    python benchmarks/attacks/haproxy_plain_limit.py [--connections 230]
"""

from __future__ import annotations

import argparse
import socket
import time

from _peers import Answerer, Twist, free_port, raise_nofile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=230)
    args = parser.parse_args()
    raise_nofile()
    backend = Answerer("http")
    port = free_port()
    with Twist("--listen", f"haproxy:tcp:{port}:interface=127.0.0.1",
               "--connect", f"tcp:127.0.0.1:{backend.port}", "--max-connections", "5",
               nofile=256) as twist:
        twist.wait_for("listening on")
        time.sleep(1)
        before = twist.descriptors()
        sockets = []
        for _ in range(args.connections):
            try:
                sockets.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError as e:
                print(f"connect {len(sockets)}: {e}")
                break
        time.sleep(2)
        after = twist.descriptors()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as good:
                good.sendall(b"PROXY TCP4 1.2.3.4 127.0.0.1 1111 2222\r\nGET / HTTP/1.0\r\n\r\n")
                good.settimeout(4)
                answer = good.recv(100)
            result = "answered" if answer.startswith(b"HTTP/1.0 200") else f"got {answer[:20]!r}"
        except OSError as e:
            result = f"not answered ({type(e).__name__})"
        for s in sockets:
            s.close()
        print("close reasons:", twist.close_reasons())
    print(f"RESULT haproxy plain limit, {len(sockets)} header-less connections, "
          f"--max-connections 5, RLIMIT_NOFILE 256: twist descriptors {before} -> {after}; "
          f"balancer request {result}")


if __name__ == "__main__":
    main()
