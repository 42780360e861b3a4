"""Attack on ``schannel:haproxy:`` with ``--proxy-protocol v2``: a PROXY
header with an impossible port is refused without leaking a descriptor.

``twist schannel`` runs with RLIMIT_NOFILE 64 behind a ``schannel:haproxy:``
listener and relays with a PROXY v2 header of its own. ``--clients`` (40,
more than the limit leaves free) connections each send a PROXY v1 header
with source port 99999, try a TLS handshake and a request, and close. Then
a well-behaved client (a valid header) asks for a page. The figure is
twist's descriptors before and after, and whether the good client was
served. Bounded: about 50 s at most::

    python benchmarks/attacks/proxy_port_leak.py [--clients 40]
"""

from __future__ import annotations

import argparse
import socket
import ssl
import time

from _peers import Answerer, Certificates, Twist, free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=40, help="forged clients")
    args = parser.parse_args()
    certificates = Certificates()
    backend = Answerer("http")
    port = free_port()
    context = certificates.client_context()
    with Twist("--listen", certificates.listen(port, kind="schannel:haproxy:tcp"),
               "--connect", f"tcp:127.0.0.1:{backend.port}", "--proxy-protocol", "v2",
               nofile=64) as twist:
        twist.wait_for("listening on")
        before = twist.descriptors()
        refused = 0
        deadline = time.monotonic() + 40
        for _ in range(args.clients):
            if time.monotonic() > deadline:
                break
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
                    raw.sendall(b"PROXY TCP4 6.6.6.6 10.0.0.1 99999 443\r\n")
                    with context.wrap_socket(raw, server_hostname="localhost") as tls:
                        tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
            except (OSError, ssl.SSLError):
                refused += 1
        time.sleep(5)
        after = twist.descriptors()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(b"PROXY TCP4 1.2.3.4 10.0.0.1 1234 443\r\n")
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    answer = tls.recv(100)
            good = "served" if answer.startswith(b"HTTP/1.0 200") else f"got {answer[:20]!r}"
        except (OSError, ssl.SSLError) as e:
            good = f"failed ({type(e).__name__})"
        print(f"forged clients refused: {refused} of {args.clients}; backend requests: "
              f"{backend.requests - (1 if good == 'served' else 0)}")
        print("close reasons:", twist.close_reasons())
    print(f"RESULT proxy port leak, {args.clients} forged headers, RLIMIT_NOFILE 64: "
          f"twist descriptors {before} before, {after} after; well-behaved client {good}")


if __name__ == "__main__":
    main()
