"""Client-side cost of a full handshake: validation="cryptography" next to "openssl".

Real TLS handshakes (OpenSSL on both sides, through txschannel's contexts,
in memory: no sockets, no reactor) between a ClientContext and a
ServerContext. Each handshake is a full one: every connection asks for its
own name under the server's wildcard certificate (h1.bench.test,
h2.bench.test, ...), so no session is resumed. The client side's CPU time
(its initialize() calls, which is where the server's chain is judged) is
summed over the handshakes of a round; the two settings take turns, round
after round, and the median round counts. Not part of the tests.

    python benchmarks/validation.py                 # 300 handshakes x 5 rounds, TLS 1.3
    python benchmarks/validation.py --handshakes 1000 --rounds 7 --version TLSv1.2

Three set-ups: an ECDSA P-256 chain (root, intermediate, leaf) with that
root as the only trust root; the same with RSA 2048; and the ECDSA chain
with the system's bundle plus that root as the trust store (both settings
read it through SSL_CERT_FILE), which is what ``trustRoots=system`` costs.
It also prints what verify_server_chain costs alone, offline, for the same
chain: most of the difference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import trustme

from txschannel import ClientContext, Credentials, ServerContext, Status, verify_server_chain
from txschannel.validation import TrustStore, _system_sources


def handshake(client: ClientContext, server: ServerContext) -> float:
    """One full handshake; returns the client's CPU seconds."""
    spent = 0.0
    start = time.process_time()
    step = client.initialize()
    spent += time.process_time() - start
    to_server, to_client = step.token, b""
    client_done = server_done = False
    while not (client_done and server_done):
        if to_server and not server_done:
            answer = server.accept(to_server)
            to_client += answer.token
            to_server, server_done = answer.extra, answer.status is Status.OK
        if to_client and not client_done:
            start = time.process_time()
            step = client.initialize(to_client)
            spent += time.process_time() - start
            to_server += step.token
            to_client, client_done = step.extra, step.status is Status.OK
    return spent


def client_round(
    credentials: Credentials, server: Credentials, version: str, count: int, first: int
) -> float:
    """Mean client CPU microseconds per full handshake over *count* handshakes."""
    spent = 0.0
    for number in range(first, first + count):
        client = ClientContext(credentials, f"h{number}.bench.test")
        spent += handshake(client, ServerContext(server))
        assert client.established and not client.attributes.session_reused
        client.delete()
    return spent / count * 1e6


def set_ups(workdir: Path) -> list[tuple[str, trustme.CA, bytes, str | None]]:
    """(label, root CA, server PEM, SSL_CERT_FILE or None) for each set-up."""
    found = []
    kinds = (("ECDSA P-256", trustme.KeyType.ECDSA), ("RSA 2048", trustme.KeyType.RSA))
    for label, key_type in kinds:
        root = trustme.CA(key_type=key_type)
        intermediate = root.create_child_ca(key_type=key_type)
        leaf = intermediate.issue_cert("*.bench.test", key_type=key_type)
        pem = leaf.private_key_and_cert_chain_pem.bytes()
        found.append((f"{label} chain, 1 trust root", root, pem, None))
    label, root, pem, _ = found[0]
    system = _system_sources()
    if system:
        bundle = workdir / "bundle.pem"
        bundle.write_bytes(b"".join(p.read_bytes() for p in system) + root.cert_pem.bytes())
        roots = len(TrustStore.system()) + 1
        found.append((f"ECDSA P-256 chain, system store ({roots} roots)", root, pem, str(bundle)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handshakes", type=int, default=300, help="per round and setting")
    parser.add_argument("--rounds", type=int, default=5, help="the median round counts (5)")
    parser.add_argument("--version", default="TLSv1.3", choices=["TLSv1.2", "TLSv1.3"])
    arguments = parser.parse_args()
    print(
        f"client CPU us per full handshake, {arguments.version}, "
        f"{arguments.handshakes} handshakes x {arguments.rounds} rounds, median round"
    )
    print(f"{'set-up':48} {'openssl':>9} {'cryptography':>13} {'ratio':>6} {'offline':>8}")
    with tempfile.TemporaryDirectory() as workdir:
        for label, root, pem, bundle in set_ups(Path(workdir)):
            if bundle is None:
                os.environ.pop("SSL_CERT_FILE", None)
                trust: str | bytes = root.cert_pem.bytes()
            else:
                os.environ["SSL_CERT_FILE"] = bundle
                trust = "system"
            server = Credentials.server(certificate=pem, maximum_version=arguments.version)
            clients = {
                validation: Credentials.client(
                    trust_roots=trust,
                    minimum_version=arguments.version,
                    maximum_version=arguments.version,
                    validation=validation,
                )
                for validation in ("openssl", "cryptography")
            }
            results: dict[str, list[float]] = {name: [] for name in clients}
            first = 0
            for credentials in clients.values():  # warm-up
                client_round(credentials, server, arguments.version, 20, first)
                first += 20
            for _ in range(arguments.rounds):
                for name, credentials in clients.items():
                    results[name].append(
                        client_round(
                            credentials, server, arguments.version, arguments.handshakes, first
                        )
                    )
                    first += arguments.handshakes
            old = statistics.median(results["openssl"])
            new = statistics.median(results["cryptography"])
            offline = offline_cost(pem, clients["cryptography"])
            print(f"{label:48} {old:9.0f} {new:13.0f} {new / old:6.2f} {offline:8.0f}")
        os.environ.pop("SSL_CERT_FILE", None)
    print("offline: verify_server_chain alone, us per call, for the same chain and trust")


def offline_cost(pem: bytes, credentials: Credentials, count: int = 300) -> float:
    from cryptography import x509

    chain = x509.load_pem_x509_certificates(pem)
    store = credentials.trust_store
    assert store is not None
    start = time.process_time()
    for number in range(count):
        verify_server_chain(chain, f"o{number}.bench.test", trust_roots=store)
    return (time.process_time() - start) / count * 1e6


if __name__ == "__main__":
    main()
