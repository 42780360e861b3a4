"""Attack on ``--status``: slowloris clients must not keep a balancer's
``/healthz`` from being answered.

``twist schannel --status`` runs beside a plain relay. ``--connections``
(64) clients each start a request to the status port and send one more
header byte every 4 s (inside any per-read idle bound) for 36 s. Meanwhile
a balancer asks ``/healthz`` three times, 10 s allowed each. The figure is
how many health checks were answered, and how many slowloris connections
were still open at the end. About 40 s::

    python benchmarks/attacks/status_slowloris.py [--connections 64]
"""

from __future__ import annotations

import argparse
import socket
import threading
import time

from _peers import Answerer, Twist, free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    backend = Answerer("http")
    port, status = free_port(), free_port()
    with Twist("--listen", f"tcp:{port}:interface=127.0.0.1",
               "--connect", f"tcp:127.0.0.1:{backend.port}",
               "--status", f"tcp:{status}:interface=127.0.0.1") as twist:
        twist.wait_for("serving /metrics")
        sockets = []
        for _ in range(args.connections):
            s = socket.create_connection(("127.0.0.1", status), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nX-a: ")
            sockets.append(s)
        start = time.monotonic()
        stop = start + 36

        def trickle() -> None:
            while time.monotonic() < stop:
                time.sleep(4)
                for s in sockets:
                    try:
                        s.sendall(b"a")
                    except OSError:
                        pass

        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(1)
        answered = 0
        for attempt in range(3):
            began = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", status), timeout=10) as check:
                    check.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                    answer = check.recv(100)
                print(f"healthz {attempt}: {answer[:20]!r} after {time.monotonic() - began:.1f} s")
                answered += answer.startswith(b"HTTP/1.")
            except OSError as e:
                waited = time.monotonic() - began
                print(f"healthz {attempt}: {type(e).__name__} after {waited:.1f} s")
        time.sleep(max(0.0, stop - time.monotonic()))
        alive = 0
        for s in sockets:
            s.setblocking(False)
            try:
                alive += s.recv(10) != b""
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
            s.close()
    print(f"RESULT status slowloris, {args.connections} connections: {answered} of 3 /healthz "
          f"answered; {alive} slowloris connections still open after "
          f"{time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
