"""Attack on ``ocsp=auto``: a responder that dribbles its answer holds at
most one socket of the server, for at most the fetch deadline.

A throw-away CA issues the server certificate with an OCSP URL on
loopback (hence ``ocspAllowPrivate=yes``). The responder there answers
every request with headers announcing 60,000 bytes, then one byte every
0.1 s for as long as the client stays. ``twist schannel`` fetches with a
15 s deadline and retries after 30 s, then 60 s. The responder's open
sockets are sampled every 5 s for ``--seconds``. The figure is the most
sockets open at once and the connections made::

    python benchmarks/attacks/ocsp_dribble.py [--seconds 130]
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _peers import CertificateAuthority, Twist, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID


class Dribbler:
    """An HTTP server on 127.0.0.1 dribbling one byte every 0.1 s to every POST."""

    def __init__(self) -> None:
        self.connections = 0
        self.open = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def setup(self) -> None:
                with outer.lock:
                    outer.connections += 1
                    outer.open += 1
                super().setup()

            def finish(self) -> None:
                try:
                    super().finish()
                except OSError:
                    pass
                finally:
                    with outer.lock:
                        outer.open -= 1

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                self.send_response(200)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", "60000")
                self.end_headers()
                while not outer.stopping.wait(0.1):
                    try:
                        self.wfile.write(b"0")
                        self.wfile.flush()
                    except OSError:
                        return  # the server gave up: what the attack measures

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def server_file(folder: Path, url: str) -> Path:
    """Key, certificate for localhost naming the OCSP *url*, and its CA, in one PEM."""
    ca = CertificateAuthority()
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=20))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(url))]),
            critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.private_key.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(ca.private_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    pem = serialization.Encoding.PEM
    path = folder / "server.pem"
    path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + leaf.public_bytes(pem) + ca.certificate.public_bytes(pem))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=130.0, help="how long to sample")
    args = parser.parse_args()
    responder = Dribbler()
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="txschannel-attack-"))
    certificate = server_file(folder, f"http://127.0.0.1:{responder.port}/")
    with Twist("--listen", f"schannel:tcp:{port}:interface=127.0.0.1:certificate={certificate}"
               ":ocsp=auto:ocspAllowPrivate=yes") as twist:
        twist.wait_for("listening on")
        start = time.monotonic()
        samples = []
        while time.monotonic() - start < args.seconds:
            with responder.lock:
                samples.append((round(time.monotonic() - start), responder.connections,
                                responder.open))
            time.sleep(5)
        responder.stop()
        print("t(s) connections-made open-now")
        for sample in samples:
            print(*sample)
        for line in twist.output.splitlines():
            if "OCSP" in line:
                print(line[:240])
    # The longest run of samples with a socket open: how long one was held, to 5 s.
    longest = run = 0
    for _, _, open_now in samples:
        run = run + 1 if open_now else 0
        longest = max(longest, run)
    print(f"RESULT ocsp dribble over {args.seconds:g} s: at most {max(s[2] for s in samples)} "
          f"responder socket(s) open at once, none open in more than {longest} samples in a row "
          f"(5 s apart), {samples[-1][1]} connections made")


if __name__ == "__main__":
    main()
