"""Attack on ``--idle-timeout``: a reader that drains slowly is moving data,
so it is not cut as idle; one that stops reading is.

``twist schannel --idle-timeout T`` relays a backend that answers a large
body (3 MB). A TLS client reads it at ``--rate`` bytes per second for at
most ``--seconds``. The figure is how long the connection lived and how
many bytes were read. Loopback socket buffers (autotuned unless
``--rcvbuf`` fixes the client's) can take megabytes at once, after which
twist writes nothing for as long as the reader takes to drain them: the
figure moves from run to run with that. ``--rate 0`` stops reading after
the first chunk, which must be cut after about T::

    python benchmarks/attacks/idle_slow_reader.py [--idle-timeout 10] [--rate 10240]
        [--seconds 40] [--rcvbuf 0]
"""

from __future__ import annotations

import argparse
import socket
import ssl
import time

from _peers import Answerer, Certificates, Twist, free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-timeout", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=10240, help="bytes per second read; 0: stop")
    parser.add_argument("--body", type=int, default=3_000_000, help="bytes the backend sends")
    parser.add_argument("--seconds", type=float, default=40.0, help="longest run")
    parser.add_argument("--rcvbuf", type=int, default=0,
                        help="the client's SO_RCVBUF; 0: the kernel's (autotuned)")
    args = parser.parse_args()
    certificates = Certificates()
    backend = Answerer("http", b"x" * args.body)
    port = free_port()
    with Twist("--listen", certificates.listen(port), "--connect", f"tcp:127.0.0.1:{backend.port}",
               "--idle-timeout", f"{args.idle_timeout:g}") as twist:
        twist.wait_for("listening on")
        raw = socket.socket()
        raw.settimeout(args.seconds)
        if args.rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
        raw.connect(("127.0.0.1", port))
        tls = certificates.client_context().wrap_socket(
            raw, server_hostname="localhost", suppress_ragged_eofs=False)
        tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
        start = time.monotonic()
        got, how = 0, "still open at the end of the run"
        chunk = max(1024, args.rate // 10)
        while time.monotonic() - start < args.seconds:
            try:
                data = tls.recv(chunk)
            except (ssl.SSLError, OSError) as e:
                how = f"cut ({type(e).__name__})"
                break
            if not data:
                how = "ended with close_notify"
                break
            got += len(data)
            if not args.rate:
                # A reader that stopped: wait (bounded) for twist to end it.
                while (time.monotonic() - start < args.seconds
                       and "connection closed" not in twist.output):
                    time.sleep(0.2)
                if "connection closed" in twist.output:
                    how = "cut (logged by twist)"
                break
            time.sleep(len(data) / args.rate)
        elapsed = time.monotonic() - start
        tls.close()
        time.sleep(0.5)
        for line in twist.output.splitlines():
            if "connection closed" in line:
                print(line)
    print(f"RESULT idle-timeout {args.idle_timeout:g} s, reader {args.rate} B/s, "
          f"SO_RCVBUF {args.rcvbuf or 'default'}: {how} "
          f"after {elapsed:.1f} s, {got} of {args.body} bytes read")


if __name__ == "__main__":
    main()
