"""Bulk throughput of the security context next to Python's ssl module.

Encrypts on one side and decrypts on the other, in memory, SIZE bytes in
CHUNK-sized writes: first through a ClientContext/ServerContext pair, then
through two ``ssl.SSLObject`` over ``MemoryBIO`` doing exactly the same, in
the same run. Prints MB/s for each and their ratio. Not part of the tests.

    python benchmarks/context.py                  # 256 MiB in 64 KiB writes, TLS 1.3
    python benchmarks/context.py --size 64 --chunk 16 --version TLSv1.2

It also prints the CPU time per 16 KiB record through the contexts next to
the same OpenSSL calls made bare: the difference is the Python-side cost.

Note that the two sides may link different OpenSSL builds (pyOpenSSL's
wheel carries its own; ssl uses the system's): the ratio measures
txschannel's Python-side cost plus that difference.
"""

from __future__ import annotations

import argparse
import os
import ssl
import tempfile
import time

import trustme

from txschannel import ClientContext, Credentials, ServerContext, Status

MiB = 1 << 20


def contexts(ca: trustme.CA, pem: bytes, version: str) -> tuple[ClientContext, ServerContext]:
    client = ClientContext(
        Credentials.client(trust_roots=ca.cert_pem.bytes(), maximum_version=version), "localhost"
    )
    server = ServerContext(Credentials.server(certificate=pem, maximum_version=version))
    step = client.initialize()
    to_server, to_client = step.token, b""
    client_done = server_done = False
    while not (client_done and server_done):
        if to_server and not server_done:
            answer = server.accept(to_server)
            to_client += answer.token
            to_server, server_done = answer.extra, answer.status is Status.OK
        if to_client and not client_done:
            step = client.initialize(to_client)
            to_server += step.token
            to_client, client_done = step.extra, step.status is Status.OK
    # Settle what is still in flight (TLS 1.3 tickets) before timing.
    client.decrypt(to_client)
    server.decrypt(to_server)
    return client, server


def run_txschannel(
    ca: trustme.CA, pem: bytes, version: str, size: int, chunk: int
) -> tuple[float, str]:
    client, server = contexts(ca, pem, version)
    data = os.urandom(chunk)
    received = 0
    extra = b""
    start = time.perf_counter()
    for _ in range(size // chunk):
        result = server.decrypt(extra + client.encrypt(data) if extra else client.encrypt(data))
        extra = result.extra
        received += len(result.data)
    elapsed = time.perf_counter() - start
    assert received == size // chunk * chunk, received
    return elapsed, client.attributes.cipher


def run_ssl(
    ca: trustme.CA, pem: bytes, version: str, size: int, chunk: int, cipher: str
) -> tuple[float, str]:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.NamedTemporaryFile(suffix=".pem") as handle:
        handle.write(pem)
        handle.flush()
        server_context.load_cert_chain(handle.name)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.load_verify_locations(cadata=ca.cert_pem.bytes().decode())
    tls = ssl.TLSVersion.TLSv1_3 if version == "TLSv1.3" else ssl.TLSVersion.TLSv1_2
    for context in (server_context, client_context):
        context.maximum_version = tls
    if version == "TLSv1.2":
        # The same suite as the context pair negotiated (ssl's own order
        # would pick AES-256 where ours picks AES-128).
        client_context.set_ciphers(cipher)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_context.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    while not all(done):
        for i, (obj, out, peer_in) in enumerate(((client, c_out, s_in), (server, s_out, c_in))):
            if not done[i]:
                try:
                    obj.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
    data = os.urandom(chunk)
    received = 0
    start = time.perf_counter()
    for _ in range(size // chunk):
        client.write(data)
        s_in.write(c_out.read())
        while True:
            try:
                piece = server.read(1 << 17)
            except ssl.SSLWantReadError:
                break
            received += len(piece)
    elapsed = time.perf_counter() - start
    assert received == size // chunk * chunk, received
    cipher = client.cipher()
    return elapsed, cipher[0] if cipher else "?"


def per_record(
    ca: trustme.CA, pem: bytes, version: str, records: int = 4096
) -> tuple[float, float]:
    """CPU microseconds per 16 KiB record, encrypted and decrypted: through
    the contexts, and through the same four OpenSSL calls made bare (no
    framing, no bytes objects), in one loop each. The difference is the
    Python-side cost of the context."""
    from OpenSSL._util import ffi, lib

    data = os.urandom(16384)
    client, server = contexts(ca, pem, version)
    start = time.process_time()
    for _ in range(records):
        server.decrypt(client.encrypt(data))
    ours = (time.process_time() - start) / records * 1e6
    client, server = contexts(ca, pem, version)
    sender, receiver = client.openssl_connection, server.openssl_connection
    assert sender is not None and receiver is not None
    wire, clear = ffi.new("char[]", 20000), ffi.new("char[]", 20000)
    start = time.process_time()
    for _ in range(records):
        lib.SSL_write(sender._ssl, data, len(data))
        size = lib.BIO_read(sender._from_ssl, wire, 20000)
        lib.BIO_write(receiver._into_ssl, wire, size)
        lib.SSL_read(receiver._ssl, clear, 20000)
    bare = (time.process_time() - start) / records * 1e6
    return ours, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="MiB to move (default 256)")
    parser.add_argument("--chunk", type=int, default=64, help="KiB per write (default 64)")
    parser.add_argument("--version", default="TLSv1.3", choices=["TLSv1.2", "TLSv1.3"])
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternate runs of each; the best counts (3)"
    )
    arguments = parser.parse_args()
    size, chunk = arguments.size * MiB, arguments.chunk * 1024
    ca = trustme.CA()
    pem = ca.issue_cert("localhost").private_key_and_cert_chain_pem.bytes()
    ours = theirs = float("inf")
    for _ in range(arguments.rounds):
        # Alternating, so that a busy moment on the machine hits both.
        elapsed, our_cipher = run_txschannel(ca, pem, arguments.version, size, chunk)
        ours = min(ours, elapsed)
        elapsed, their_cipher = run_ssl(ca, pem, arguments.version, size, chunk, our_cipher)
        theirs = min(theirs, elapsed)
    mb = size / 1e6
    print(
        f"{arguments.size} MiB in {arguments.chunk} KiB writes, {arguments.version}, "
        f"encrypt+decrypt, best of {arguments.rounds}"
    )
    print(f"txschannel  {mb / ours:8.1f} MB/s  ({ours:.2f} s, {our_cipher})")
    print(
        f"ssl         {mb / theirs:8.1f} MB/s  ({theirs:.2f} s, {their_cipher}, "
        f"{ssl.OPENSSL_VERSION})"
    )
    print(f"ratio txschannel/ssl {theirs / ours:.2f}")
    best = min((per_record(ca, pem, arguments.version) for _ in range(arguments.rounds)),
               key=lambda pair: pair[0])
    print(
        f"per 16 KiB record: txschannel {best[0]:.1f} us CPU, bare OpenSSL calls "
        f"{best[1]:.1f} us, Python-side overhead {best[0] - best[1]:.1f} us"
    )


if __name__ == "__main__":
    main()
