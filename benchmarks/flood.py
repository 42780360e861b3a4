"""What a client that sends without end, and never reads, costs ``twist schannel``.

Not a test: it measures and prints; ``tests/test_edges.py`` holds the
assertions. A client completes a TLS handshake through ``twist schannel``
and then writes 16 KiB application records as fast as it can for
``--seconds``, never reading what the server sends (so it never sees a
close_notify), until the server ends the connection. The backend is one of:

``closed``
    nothing listens on the ``--connect`` port (the relay cannot reach it);
``reset``
    a backend that accepts, sends 10 bytes and resets the connection;
``sink``
    a backend that reads and discards everything (the normal case: flow
    control, not a closing side, bounds memory).

It prints the bytes the client got into the server, and the server's
resident set size (VmRSS) before, at its peak (sampled every 0.1 s) and
2 seconds after the client stops. All traffic is on 127.0.0.1; the run ends
by itself and stops the processes it started::

    python benchmarks/flood.py --backend closed
    python benchmarks/flood.py --backend reset --seconds 5
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import certs  # noqa: E402
from tests.support.peers import LISTENER  # noqa: E402

_BACKENDS = {
    "reset": LISTENER + """
while True:
    connection, _ = server.accept()
    try:
        connection.sendall(b"0123456789")
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    connection.close()
""",
    "sink": LISTENER + """
def sink(connection):
    with connection:
        while connection.recv(1 << 20):
            pass
while True:
    connection, _ = server.accept()
    threading.Thread(target=sink, args=(connection,), daemon=True).start()
""",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("closed", "reset", "sink"), default="closed")
    parser.add_argument("--seconds", type=float, default=6.0)
    arguments = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="txschannel-flood-"))
    root = certs.authority("flood root")
    ca = certs.write(str(folder), "ca.pem", certs.pem(root.certificate))
    server_pem = certs.write(str(folder), "server.pem", certs.leaf(root, ["localhost"]).chain_pem)
    backend_port = _free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        if arguments.backend != "closed":
            script = folder / "backend.py"
            script.write_text(_BACKENDS[arguments.backend])
            processes.append(subprocess.Popen([sys.executable, str(script), str(backend_port)]))
        twist = subprocess.Popen(
            [sys.executable, "-m", "twisted", "--log-format=text", "--log-file=-", "schannel",
             "--listen", f"schannel:tcp:0:interface=127.0.0.1:certificate={server_pem}",
             "--connect", f"tcp:127.0.0.1:{backend_port}", "--state-dir", str(folder / "state")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        processes.append(twist)
        lines: list[str] = []
        port: list[int] = []

        def read() -> None:
            assert twist.stdout is not None
            for raw in twist.stdout:
                line = raw.decode("utf-8", "replace")
                lines.append(line)
                match = re.search(r"starting on (\d+)", line)
                if match and not port:
                    port.append(int(match.group(1)))

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 30
        while not port and time.monotonic() < deadline:
            time.sleep(0.05)
        if not port:
            raise SystemExit("twist schannel did not start:\n" + "".join(lines))
        time.sleep(0.5)
        before = _rss_mb(twist.pid)
        peak = before
        context = ssl.create_default_context(cafile=ca)
        raw = socket.create_connection(("127.0.0.1", port[0]), timeout=10)
        tls = context.wrap_socket(raw, server_hostname="localhost")
        tls.settimeout(0.5)
        chunk = os.urandom(16384)
        sent, ended = 0, "time"
        start = last_sample = time.monotonic()
        while time.monotonic() - start < arguments.seconds:
            try:
                sent += tls.send(chunk)
            except (TimeoutError, ssl.SSLWantWriteError):
                pass
            except (OSError, ssl.SSLError) as e:
                ended = f"{type(e).__name__}"
                break
            if time.monotonic() - last_sample > 0.1:
                peak = max(peak, _rss_mb(twist.pid))
                last_sample = time.monotonic()
        elapsed = time.monotonic() - start
        peak = max(peak, _rss_mb(twist.pid))
        raw.close()
        time.sleep(2)
        after = _rss_mb(twist.pid)
        print(f"backend {arguments.backend}: the client wrote {sent / 1e6:.1f} MB in "
              f"{elapsed:.1f} s (ended by: {ended})")
        print(f"twist schannel RSS: before {before:.1f} MB, peak {peak:.1f} MB, "
              f"2 s after {after:.1f} MB")
        reasons = [line for line in lines if "connection closed" in line]
        if reasons:
            print("its log:", reasons[-1].strip()[-160:])
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
