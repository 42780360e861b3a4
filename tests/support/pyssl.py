"""Python's ``ssl`` module (``SSLObject`` over ``MemoryBIO``, linked against
the system OpenSSL, not pyOpenSSL's) as the other side of an in-memory
handshake with a txschannel context, as client or as server.
"""

from __future__ import annotations

import os
import ssl

from tests.support.contexts import NAME, authority


class PythonSide:
    """Python's ``ssl`` over memory BIOs, driven like :class:`tests.support.handshake.Side`."""

    def __init__(self, context: ssl.SSLContext, *, server_side: bool,
                 hostname: str | None = NAME) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=server_side,
                                    server_hostname=None if server_side else hostname)
        self.done = False
        self.closed = False

    def start(self) -> bytes:
        return self.feed(b"")

    def feed(self, data: bytes) -> bytes:
        if data:
            self.incoming.write(data)
        if not self.done:
            try:
                self.obj.do_handshake()
                self.done = True
            except ssl.SSLWantReadError:
                pass
        return self.outgoing.read()

    def read(self) -> bytes:
        """Every plaintext byte available now (and remember close_notify)."""
        chunks = []
        while True:
            try:
                chunk = self.obj.read(1 << 16)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed = True
                break
            if not chunk:
                # ssl reads a close_notify as b"" (not SSLZeroReturnError).
                self.closed = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def write(self, data: bytes) -> bytes:
        self.obj.write(data)
        return self.outgoing.read()

    def alert_reason(self, token: bytes) -> str:
        """The reason Python's ssl gives for the alert in *token*."""
        try:
            self.feed(token)
            self.read()
        except ssl.SSLError as e:
            # ssl names only the reasons in its table; OpenSSL's words otherwise.
            return str(e.reason or e.args[1])
        raise AssertionError(f"ssl accepted {token.hex()} without an error")


def python_server(version: ssl.TLSVersion | None = None, pem: bytes | None = None,
                  **options: object) -> PythonSide:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_chain(context, pem or authority().server_pem)
    if version is not None:
        context.maximum_version = version
    _apply(context, options)
    return PythonSide(context, server_side=True)


def python_client(version: ssl.TLSVersion | None = None, roots: bytes | None = None,
                  hostname: str = NAME, **options: object) -> PythonSide:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=(roots or authority().roots).decode())
    if version is not None:
        context.maximum_version = version
    _apply(context, options)
    return PythonSide(context, server_side=False, hostname=hostname)


def _apply(context: ssl.SSLContext, options: dict[str, object]) -> None:
    for name, value in options.items():
        if name == "alpn":
            context.set_alpn_protocols(value)  # type: ignore[arg-type]
        elif name == "ciphers":
            context.set_ciphers(value)  # type: ignore[arg-type]
        elif name == "minimum_version":
            context.minimum_version = value  # type: ignore[assignment]
        elif name == "certificate":
            load_chain(context, value)  # type: ignore[arg-type]
        elif name == "client_ca":
            context.load_verify_locations(cadata=value.decode())  # type: ignore[attr-defined]
            context.verify_mode = ssl.CERT_REQUIRED
        else:
            raise TypeError(name)


_pem_files: dict[bytes, str] = {}


def load_chain(context: ssl.SSLContext, pem: bytes) -> None:
    # ssl only loads certificates from files.
    path = _pem_files.get(pem)
    if path is None:
        import tempfile

        handle, path = tempfile.mkstemp(suffix=".pem")
        os.write(handle, pem)
        os.close(handle)
        _pem_files[pem] = path
    context.load_cert_chain(path)
