"""Client-side cost of a full handshake: txschannel's check next to Twisted's.

Real TLS handshakes (OpenSSL on both sides, through txschannel's contexts,
in memory: no sockets, no reactor) between a ClientContext and a
ServerContext. Every handshake is a full one: the server keeps no sessions
and sends no tickets. The client side's CPU time (its initialize() calls,
which is where the server's chain is judged) is summed over the handshakes
of a round; the three clients take turns, round after round, and the median
round counts. Not part of the tests.

    python benchmarks/validation.py                 # 300 handshakes x 7 rounds, TLS 1.3
    python benchmarks/validation.py --handshakes 1000 --rounds 9 --version TLSv1.2

The clients: Twisted's ``optionsForClientTLS`` (OpenSSL's X.509 check, then
service_identity, in Twisted's own callbacks), given to txschannel with
``Credentials.from_twisted``; ``validation="openssl"``; and
``validation="cryptography"`` (the default). Two rows per set-up:

- *new server*: every handshake asks for another name under the server's
  wildcard certificate (h1.bench.test, h2.bench.test, ...), so no verdict
  is remembered: the first handshake to a server;
- *seen before*: every handshake asks for the same name, so from the second
  on ``validation="cryptography"`` answers from its remembered verdicts
  (Twisted and ``"openssl"`` check the chain again each time).

Three set-ups: an ECDSA P-256 chain (root, intermediate, leaf) with that
root as the only trust root; the same with RSA 2048; and the ECDSA chain
with the system's bundle plus that root as the trust store (all clients
read it through SSL_CERT_FILE), which is what ``trustRoots=system`` costs.
It also prints what verify_server_chain costs alone, offline, for the same
chain, with a new name at each call.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import trustme
from OpenSSL import SSL
from twisted.internet import ssl

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
    make_client: Callable[[str], ClientContext], server: Credentials, names: list[str]
) -> float:
    """Mean client CPU microseconds per full handshake, one per name."""
    spent = 0.0
    for name in names:
        client = make_client(name)
        spent += handshake(client, ServerContext(server))
        assert client.established and not client.attributes.session_reused
        client.delete()
    return spent / len(names) * 1e6


def no_resumption(server: Credentials) -> Credentials:
    """*server* made to keep no sessions and send no tickets."""
    context = server.openssl_context
    context.set_options(SSL.OP_NO_TICKET)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    return server


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


def make_clients(
    ours: dict[str, Credentials], twisted_root: object, version: str
) -> dict[str, Callable[[str], ClientContext]]:
    """A ClientContext maker per client compared, each for a target name."""
    twisted: dict[str, Credentials] = {}
    minimum = getattr(ssl.TLSVersion, version.replace(".", "_"))

    def twisted_client(name: str) -> ClientContext:
        # One creator per name, as an application makes them (made outside
        # the time counted: only initialize() is timed).
        if name not in twisted:
            creator = ssl.optionsForClientTLS(
                name,
                trustRoot=twisted_root,  # type: ignore[arg-type]
                extraCertificateOptions={"raiseMinimumTo": minimum},
            )
            twisted.clear()
            twisted[name] = Credentials.from_twisted(creator)
        return ClientContext(twisted[name], name)

    return {
        "Twisted": twisted_client,
        "openssl": functools.partial(ClientContext, ours["openssl"]),
        "cryptography": functools.partial(ClientContext, ours["cryptography"]),
    }


def names_for(row: str, serial: Iterator[int], count: int) -> list[str]:
    """*count* target names: the same one for a server seen before, else new ones."""
    if row == "seen before":
        return ["seen.bench.test"] * count
    return [f"h{next(serial)}.bench.test" for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handshakes", type=int, default=300, help="per round and client")
    parser.add_argument("--rounds", type=int, default=7, help="the median round counts (7)")
    parser.add_argument("--version", default="TLSv1.3", choices=["TLSv1.2", "TLSv1.3"])
    arguments = parser.parse_args()
    print(
        f"client CPU us per full handshake, {arguments.version}, "
        f"{arguments.handshakes} handshakes x {arguments.rounds} rounds, median round"
    )
    print(
        f"{'set-up':44} {'server':11} {'Twisted':>8} {'openssl':>8} {'cryptography':>13} "
        f"{'ratio':>6} {'offline':>8}"
    )
    with tempfile.TemporaryDirectory() as workdir:
        for label, root, pem, bundle in set_ups(Path(workdir)):
            if bundle is None:
                os.environ.pop("SSL_CERT_FILE", None)
                trust: str | bytes = root.cert_pem.bytes()
                twisted_root: object = ssl.Certificate.loadPEM(root.cert_pem.bytes())
            else:
                os.environ["SSL_CERT_FILE"] = bundle
                trust = "system"
                twisted_root = None  # platformTrust(): OpenSSL's default paths
            version = arguments.version
            server = no_resumption(
                Credentials.server(certificate=pem, maximum_version=version)
            )
            ours = {
                validation: Credentials.client(
                    trust_roots=trust,
                    minimum_version=version,
                    maximum_version=version,
                    validation=validation,
                )
                for validation in ("openssl", "cryptography")
            }
            clients = make_clients(ours, twisted_root, version)
            serial = iter(range(10**9))
            for row in ("new server", "seen before"):
                results: dict[str, list[float]] = {name: [] for name in clients}
                names = functools.partial(names_for, row, serial)
                for make in clients.values():  # warm-up (and, seen before, the first visit)
                    client_round(make, server, names(20))
                for _ in range(arguments.rounds):
                    for name, make in clients.items():
                        spent = client_round(make, server, names(arguments.handshakes))
                        results[name].append(spent)
                theirs = statistics.median(results["Twisted"])
                old = statistics.median(results["openssl"])
                new = statistics.median(results["cryptography"])
                offline = offline_cost(pem, ours["cryptography"]) if row == "new server" else 0
                print(
                    f"{label if row == 'new server' else '':44} {row:11} {theirs:8.0f} "
                    f"{old:8.0f} {new:13.0f} {new / theirs:6.2f} "
                    + (f"{offline:8.0f}" if offline else "")
                )
        os.environ.pop("SSL_CERT_FILE", None)
    print("ratio: cryptography (the default) / Twisted's optionsForClientTLS")
    print("offline: verify_server_chain alone, us per call, a new name each call")


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
