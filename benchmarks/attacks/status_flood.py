"""Attack on ``--status``: idle connections to the status port must not
starve the relay of descriptors.

``twist schannel`` runs with RLIMIT_NOFILE lowered to ``--nofile`` (1024)
and ``--status tcp:PORT``. The attacker opens ``--idle`` (1030) plain TCP
connections to the status port and sends nothing, then three ``curl``
requests go through the TLS relay. The figure is how many of the three
succeed (3 means the flood took nothing from the relay). Bounded: about
45 s at most::

    python benchmarks/attacks/status_flood.py [--nofile 1024] [--idle 1030]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import time

from _peers import Answerer, Certificates, Twist, free_port, raise_nofile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nofile", type=int, default=1024, help="twist's RLIMIT_NOFILE")
    parser.add_argument("--idle", type=int, default=1030, help="idle status connections")
    args = parser.parse_args()
    raise_nofile()
    certificates = Certificates()
    backend = Answerer("http")
    port, status = free_port(), free_port()
    with Twist("--listen", certificates.listen(port), "--connect", f"tcp:127.0.0.1:{backend.port}",
               "--status", f"tcp:{status}:interface=127.0.0.1", nofile=args.nofile) as twist:
        twist.wait_for("serving /metrics")
        sockets = []
        for n in range(args.idle):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", status))
            sockets.append(s)
            if n % 40 == 39:
                time.sleep(0.1)  # batches under the listen backlog
        # SYNs dropped by a full accept queue are retried after 1, 3, 7, 15 s:
        # wait until twist's descriptors reach its limit, or 20 s.
        deadline, peak = time.monotonic() + 20, 0
        while time.monotonic() < deadline:
            peak = max(peak, twist.descriptors())
            if peak >= args.nofile - 1:
                break
            time.sleep(0.5)
        print(f"twist's open descriptors at most {peak} of {args.nofile}")
        codes = []
        for _ in range(3):
            run = subprocess.run(
                ["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "--cacert",
                 str(certificates.ca_file), f"https://localhost:{port}/"],
                capture_output=True)
            codes.append(run.returncode)
        for s in sockets:
            s.close()
        print(f"curl exit codes {codes}")
        print(f"RESULT status flood, {args.idle} idle connections, RLIMIT_NOFILE {args.nofile}: "
              f"{codes.count(0)} of 3 relayed requests succeeded")


if __name__ == "__main__":
    main()
