"""Attack on ``--max-connections``: over the limit, clients wait, none is reset.

``twist schannel --max-connections 10`` relays to an echo backend. Ten TLS
clients take every slot and hold it; forty more connect and send a byte.
Then one slot, three more and finally all are freed (each served client
frees its slot in turn). The figure is how many of the forty were reset
instead of queued and served. Bounded: about 70 s at most::

    python benchmarks/attacks/max_connections_queue.py [--held 10] [--queued 40]
"""

from __future__ import annotations

import argparse
import socket
import ssl
import threading
import time

from _peers import Answerer, Certificates, Twist, free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", type=int, default=10, help="the limit, all held")
    parser.add_argument("--queued", type=int, default=40, help="clients over the limit")
    args = parser.parse_args()
    certificates = Certificates()
    backend = Answerer("echo")
    port = free_port()
    context = certificates.client_context()

    def connect() -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port), timeout=90)
        return context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)

    outcomes: dict[int, str] = {}
    served: list[ssl.SSLSocket] = []
    lock = threading.Lock()

    def queued(number: int) -> None:
        try:
            tls = connect()
            tls.sendall(b"q")
            outcome = "served" if tls.recv(1) == b"q" else "closed"
            with lock:
                served.append(tls)
        except (ConnectionResetError, ssl.SSLEOFError, BrokenPipeError):
            outcome = "reset"
        except OSError as e:
            outcome = f"error {type(e).__name__}"
        with lock:
            outcomes[number] = outcome

    def counts() -> dict[str, int]:
        with lock:
            values = list(outcomes.values())
        result = {value: values.count(value) for value in sorted(set(values))}
        result["waiting"] = args.queued - len(values)
        return result

    with Twist("--listen", certificates.listen(port), "--connect", f"tcp:127.0.0.1:{backend.port}",
               "--max-connections", str(args.held)) as twist:
        twist.wait_for("listening on")
        held = []
        for _ in range(args.held):
            tls = connect()
            tls.sendall(b"p")
            tls.recv(1)
            held.append(tls)
        threads = [threading.Thread(target=queued, args=(n,), daemon=True)
                   for n in range(args.queued)]
        for thread in threads:
            thread.start()
            time.sleep(0.01)
        time.sleep(2)
        print("all slots held:", counts(), flush=True)
        held.pop().close()
        time.sleep(3)
        print("freed 1:", counts(), flush=True)
        for _ in range(3):
            held.pop().close()
        time.sleep(3)
        print("freed 3 more:", counts(), flush=True)
        while held:
            held.pop().close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(outcomes) < args.queued:
            with lock:
                while served:
                    served.pop().close()
            time.sleep(0.2)
        final = counts()
        print("freed all:", final)
        print(f"RESULT max-connections {args.held} held, {args.queued} queued: "
              f"{final.get('reset', 0)} reset, {final.get('served', 0)} served, "
              f"{final['waiting']} still waiting")


if __name__ == "__main__":
    main()
