"""Which way txschannel drives pyOpenSSL: through its internals, or its public API.

The fast path reaches below pyOpenSSL's public API: the cffi binding it
keeps for itself (``OpenSSL._util``) and the private attributes of its
objects (``Connection._ssl``, ``_into_ssl``, ``_from_ssl``,
``Context._context``). That moves bulk data through ``SSL_write`` and
``SSL_read`` with no Python in between, and lets a refusal set the X.509
error that picks the alert the peer gets. Nothing promises those internals
from one pyOpenSSL release to the next, so every use of them has a stand-in
made of public API only (``bio_write``, ``bio_read``, ``recv``,
``sendall``, ``Context.set_verify``, ...), which gives the same results
except where docs/context.rst ("Two ways through pyOpenSSL") says.

:data:`FAST` is decided once, when this module is imported: True when the
internals are there and the ``TXSCHANNEL_PUBLIC_API`` environment variable
is unset, empty or ``0``. This is the only module that imports
``OpenSSL._util``; the others take :data:`ffi` and :data:`lib` from here and
use them only when :data:`FAST` is True.

The traffic of a security context (its records in, its records out) goes
through :data:`engine`: :class:`FastEngine` or :class:`PublicEngine`,
chosen with :data:`FAST`, which do the same work under the same names, so
that the context has one code path and reads no pyOpenSSL internals.
Callers on a per-record path bind the engine's functions once (they are
static: no bound method is made per call).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from OpenSSL import SSL, crypto

from txschannel.records import MAX_PLAINTEXT

__all__ = [
    "FAST",
    "OBSERVES_HANDSHAKES",
    "observe_handshakes",
    "Engine",
    "FastEngine",
    "PublicEngine",
    "CertificateRequests",
    "ShortWrite",
    "VerifyCall",
    "X509_V_OK",
    "Verifier",
    "engine",
    "PUBLIC_API_VARIABLE",
    "default_cert_file",
    "error_string",
    "expect_host",
    "expect_ip",
    "flush_key_update",
    "ffi",
    "lib",
    "public_api_requested",
    "session_reused",
    "set_groups",
    "set_server_purpose",
    "verify_result",
]

#: Set to anything but ``""`` or ``"0"``, txschannel uses only pyOpenSSL's
#: public API, even where its internals are there.
PUBLIC_API_VARIABLE = "TXSCHANNEL_PUBLIC_API"

# Everything the fast path calls in the binding: one missing name (a
# pyOpenSSL that binds less) and the public path is taken for everything.
_FUNCTIONS = (
    "BIO_free",
    "BIO_get_mem_data",
    "BIO_new",
    "BIO_read",
    "BIO_s_mem",
    "BIO_write",
    "ERR_clear_error",
    "SSL_CTX_set1_curves_list",
    "SSL_CTX_set_cert_cb",
    "SSL_CTX_set_verify",
    "SSL_get0_param",
    "SSL_get_error",
    "SSL_get_ex_data_X509_STORE_CTX_idx",
    "SSL_get_verify_result",
    "SSL_read",
    "SSL_session_reused",
    "SSL_set_bio",
    "SSL_write",
    "X509_STORE_CTX_get_current_cert",
    "X509_STORE_CTX_get_error",
    "X509_STORE_CTX_get_error_depth",
    "X509_STORE_CTX_get_ex_data",
    "X509_STORE_CTX_set_error",
    "X509_STORE_set_purpose",
    "X509_VERIFY_PARAM_set1_host",
    "X509_VERIFY_PARAM_set1_ip",
    "X509_VERIFY_PARAM_set_hostflags",
    "X509_get_default_cert_file",
    "X509_up_ref",
    "X509_verify_cert_error_string",
)
_CONSTANTS = (
    "SSL_ERROR_WANT_READ",
    "SSL_ERROR_ZERO_RETURN",
    "X509_CHECK_FLAG_NEVER_CHECK_SUBJECT",
    "X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS",
    "X509_PURPOSE_SSL_SERVER",
    "X509_V_OK",
)


def public_api_requested(environ: Any = None) -> bool:
    """True when :data:`PUBLIC_API_VARIABLE` asks for the public API only."""
    value = (os.environ if environ is None else environ).get(PUBLIC_API_VARIABLE, "")
    return value.strip() not in ("", "0")


#: The attributes of a pyOpenSSL context that hold the helpers of its Python
#: callbacks; each helper keeps the exceptions its callback raised in
#: ``_problems``, which pyOpenSSL raises from the next call on the connection.
_CALLBACK_HELPERS = ("_verify_helper", "_alpn_select_helper", "_ocsp_helper")


def _callback_problems_readable(context: SSL.Context, connection: SSL.Connection) -> bool:
    """Whether FastEngine.handshake can see, as pyOpenSSL does, that a
    Python callback raised. *connection* was made
    from *context*; the probe has a context of its own."""
    if getattr(connection, "_context", None) is not context:
        return False
    if not all(hasattr(context, name) for name in _CALLBACK_HELPERS):
        return False
    probe = SSL.Context(SSL.TLS_METHOD)
    probe.set_alpn_select_callback(lambda connection, offered: b"")
    return isinstance(getattr(probe._alpn_select_helper, "_problems", None), list)


def _internals() -> tuple[Any, Any] | None:
    """pyOpenSSL's binding, if it has everything the fast path uses."""
    try:
        from OpenSSL._util import ffi as binding_ffi
        from OpenSSL._util import lib as binding_lib
    except ImportError:
        return None
    try:
        context = SSL.Context(SSL.TLS_METHOD)
        connection = SSL.Connection(context, None)
        present = (
            all(hasattr(binding_lib, name) for name in _FUNCTIONS + _CONSTANTS)
            and hasattr(binding_ffi, "new_allocator")
            and all(
                getattr(connection, name, None) is not None
                for name in ("_ssl", "_into_ssl", "_from_ssl")
            )
            and callable(getattr(connection, "_raise_ssl_error", None))
            and getattr(context, "_context", None) is not None
            and _callback_problems_readable(context, connection)
            and hasattr(SSL.Connection, "_reverse_mapping")
            and callable(getattr(crypto.X509, "_from_raw_x509_ptr", None))
            and hasattr(crypto.X509Store(), "_store")
        )
    except Exception:
        return None
    return (binding_ffi, binding_lib) if present else None


_found = None if public_api_requested() else _internals()
#: True: the fast path (pyOpenSSL's internals); False: public API only.
FAST: bool = _found is not None
#: pyOpenSSL's cffi binding (``OpenSSL._util``), or None on the public path.
ffi: Any = _found[0] if _found is not None else None
lib: Any = _found[1] if _found is not None else None
del _found
#: True on the public path: pyOpenSSL has no call for whether the session
#: was resumed or a certificate requested, so OpenSSL's info callback must
#: watch the handshake's states (see :func:`observe_handshakes`).
OBSERVES_HANDSHAKES: bool = not FAST


def observe_handshakes(
    context: SSL.Context, callback: Callable[[SSL.Connection, int, int], None]
) -> None:
    """Give *context* the info callback *callback* where the engine needs it
    (:data:`OBSERVES_HANDSHAKES`); on the fast path, nothing."""
    if OBSERVES_HANDSHAKES:
        context.set_info_callback(callback)


def session_reused(connection: SSL.Connection) -> bool | None:
    """SSL_session_reused, or None on the public path (which has no
    counterpart: the caller judges from what it saw of the handshake)."""
    if FAST:
        return bool(lib.SSL_session_reused(connection._ssl))
    return None


def verify_result(connection: SSL.Connection) -> int:
    """SSL_get_verify_result: OpenSSL's X509_V_ERR_* code for the peer's chain.

    The public path asks OpenSSL again: the peer's chain verified against
    the context's own store (at the same time, with the same flags, but
    with no host name or purpose to check). 0 (X509_V_OK) when that finds
    nothing.
    """
    if FAST:
        return int(lib.SSL_get_verify_result(connection._ssl))
    try:
        store = connection.get_context().get_cert_store()
        chain = connection.get_peer_cert_chain() or []
        # (A client's chain starts with the server's certificate; a server's
        # lacks the client's, which a refused handshake does not keep.)
        leaf = connection.get_peer_certificate() or (chain[0] if chain else None)
        if leaf is None or store is None:
            return 0
        own = leaf.to_cryptography()
        others = [c for c in chain if c.to_cryptography() != own]
        crypto.X509StoreContext(store, leaf, others).verify_certificate()
    except crypto.X509StoreContextError as e:
        return int(e.errors[0])
    except Exception:
        return 0
    return 0


def flush_key_update(connection: SSL.Connection) -> None:
    """Make OpenSSL write what it has queued for the peer (a KeyUpdate reply).

    A zero-length write sends what is queued and nothing else; it "fails"
    (returns 0) without touching the connection, so its error is discarded.
    """
    if FAST:
        lib.SSL_write(connection._ssl, b"", 0)
        lib.ERR_clear_error()
        return
    try:
        connection.send(b"")
    except SSL.Error:
        pass


def expect_host(connection: SSL.Connection, host: bytes) -> bool:
    """Have OpenSSL check the peer's certificate for DNS name *host* too
    (no subject CN fallback, no partial wildcards). False: it could not
    take the name. The public path cannot ask; it sets nothing (True)."""
    if not FAST:
        return True
    param = lib.SSL_get0_param(connection._ssl)
    lib.X509_VERIFY_PARAM_set_hostflags(
        param,
        lib.X509_CHECK_FLAG_NEVER_CHECK_SUBJECT | lib.X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS,
    )
    return bool(lib.X509_VERIFY_PARAM_set1_host(param, host, len(host)) == 1)


def expect_ip(connection: SSL.Connection, packed: bytes) -> bool:
    """As :func:`expect_host`, for an IP address (4 or 16 bytes)."""
    if not FAST:
        return True
    param = lib.SSL_get0_param(connection._ssl)
    return bool(lib.X509_VERIFY_PARAM_set1_ip(param, packed, len(packed)) == 1)


def set_groups(context: SSL.Context, groups: bytes) -> bool | None:
    """SSL_CTX_set1_groups_list (bound under its older name, curves).

    True: set; False: the linked OpenSSL refused the list; None: the public
    path, which has no counterpart (OpenSSL's default list stays).
    """
    if not FAST:
        return None
    if lib.SSL_CTX_set1_curves_list(context._context, groups) == 1:
        return True
    lib.ERR_clear_error()
    return False


def error_string(errno: int) -> str | None:
    """OpenSSL's words for an X509_V_ERR_* code; None on the public path."""
    if not FAST:
        return None
    text = ffi.string(lib.X509_verify_cert_error_string(errno))
    return text.decode("ascii", "replace") if isinstance(text, bytes) else str(text)


def default_cert_file() -> str | None:
    """The CA file compiled into the OpenSSL that pyOpenSSL uses; None on
    the public path."""
    if not FAST:
        return None
    path = ffi.string(lib.X509_get_default_cert_file())
    return path.decode("utf-8", "replace") if isinstance(path, bytes) else str(path)


def set_server_purpose(store: crypto.X509Store) -> None:
    """Have *store* check certificates for the TLS server purpose, as an
    OpenSSL client does. The public path cannot: the store checks no
    purpose (the caller's own verifier has judged it already)."""
    if FAST:
        lib.X509_STORE_set_purpose(store._store, lib.X509_PURPOSE_SSL_SERVER)


# -- the engines: a context's records in and out -----------------------------

#: One recv() of the public path: a record's plaintext, with room to spare.
_RECV_SIZE = MAX_PLAINTEXT + 1024
#: Buffers that OpenSSL fills at once need no zeroing first.
_new_buffer: Any = ffi.new_allocator(should_clear_after_alloc=False) if FAST else None


class ShortWrite(Exception):
    """OpenSSL took fewer bytes than it was given, with no error of its own
    to say why (the context reports it as INTERNAL_ERROR)."""


class Engine(Protocol):
    """What a security context asks of pyOpenSSL for its records, whichever
    way it is driven. Every function raises :class:`OpenSSL.SSL.Error` as
    pyOpenSSL raises it, for the context to map to a status."""

    @staticmethod
    def drain(connection: SSL.Connection, size_hint: int) -> bytes:
        """Everything OpenSSL has written for the peer, as one bytes object."""

    @staticmethod
    def fresh_buffers(connection: SSL.Connection) -> bool:
        """Give OpenSSL new, empty memory BIOs for its input and output, the
        old ones freed; False (nothing done) when either holds bytes.

        A memory BIO keeps the largest size it ever held: the pair that
        carried a handshake's flights, or 64 KiB pieces, would keep that
        memory for as long as the connection lives. The public path cannot
        replace them: it does nothing and returns False."""

    @staticmethod
    def write_input(
        connection: SSL.Connection, data: bytes | bytearray | memoryview, size: int
    ) -> None:
        """Give OpenSSL the first *size* bytes of *data* as input.

        :raises ShortWrite: it took fewer.
        """

    @staticmethod
    def handshake(connection: SSL.Connection) -> bool:
        """One SSL_do_handshake: True once the handshake is done, False when
        OpenSSL wants more of the peer's bytes; anything else is raised as
        pyOpenSSL's ``do_handshake()`` raises it."""

    @staticmethod
    def handshake_records(
        connection: SSL.Connection,
        view: memoryview,
        ends: list[int],
        drive: Callable[[SSL.Connection], bool],
    ) -> tuple[int, bool]:
        """Give OpenSSL the whole handshake records of *view* (ending at
        *ends*), calling *drive* (one do_handshake) after them:
        (bytes consumed, whether *drive* said the handshake is done). Records
        after the one that finished the handshake are not consumed."""

    @staticmethod
    def encrypt(
        connection: SSL.Connection, data: bytes | bytearray | memoryview, size: int, size_hint: int
    ) -> bytes:
        """Encrypt *data* (*size* bytes, not 0): the records for the peer.

        :raises ShortWrite: OpenSSL wrote nothing and raised nothing.
        """

    @staticmethod
    def read_records(
        connection: SSL.Connection, buffer: memoryview, ends: list[int], limit: int, count: int
    ) -> tuple[bytes, int | None, int]:
        """Decrypt the *count* whole records in the first *limit* bytes of
        *buffer* (ending at *ends*): (plaintext, the bytes after a
        close_notify that OpenSSL did not read or None, how many reads gave
        application data)."""

    @staticmethod
    def read_available(
        connection: SSL.Connection, count: int, limit: int
    ) -> tuple[bytes, int | None, int]:
        """As :meth:`read_records`, for *count* whole records already in
        OpenSSL's input, whose plaintext is at most *limit* bytes. (The
        public path counts no unread bytes after a close_notify: 0.)"""


def _read_all(read: Callable[[Any, int], bytes], source: Any, size_hint: int) -> bytes:
    """All the bytes ``read(source, size)`` gives: a read of *size_hint*,
    then reads twice as large each time until one comes back short. The
    usual case, everything in the first read, makes one copy and no list."""
    first = read(source, size_hint)
    if not first or len(first) < size_hint:
        return first
    chunks = [first]
    size = size_hint * 2
    while True:
        chunk = read(source, size)
        chunks.append(chunk)
        if len(chunk) < size:
            break
        size *= 2
    return b"".join(chunks)


def _bio_read(bio: Any, size: int) -> bytes:
    """At most *size* bytes from a memory BIO, b"" when it is empty."""
    buffer = _new_buffer("char[]", size)
    count = lib.BIO_read(bio, buffer, size)
    if count <= 0:
        return b""
    chunk: bytes = ffi.buffer(buffer, count)[:]
    return chunk


def _read_bio(bio: object, size_hint: int) -> bytes:
    """All the bytes waiting in a memory BIO (one copy into the result).

    The first read inline: it is usually the only one, and this runs for
    every flight of a handshake.
    """
    buffer = _new_buffer("char[]", size_hint)
    count = lib.BIO_read(bio, buffer, size_hint)
    if count <= 0:
        return b""
    first: bytes = ffi.buffer(buffer, count)[:]
    if count < size_hint:
        return first
    return first + _read_all(_bio_read, bio, size_hint * 2)


class FastEngine:
    """The engine on pyOpenSSL's internals: bulk data through SSL_write and
    SSL_read with no Python in between (pyOpenSSL's sendall() and bio_read()
    cost more Python per 16 KiB record than AES-GCM costs C)."""

    @staticmethod
    def drain(connection: SSL.Connection, size_hint: int) -> bytes:
        return _read_bio(connection._from_ssl, size_hint)

    @staticmethod
    def fresh_buffers(connection: SSL.Connection) -> bool:
        # Only an empty pair is replaced: bytes left in either would be
        # lost with it.
        if (
            lib.BIO_get_mem_data(connection._into_ssl, ffi.NULL) != 0
            or lib.BIO_get_mem_data(connection._from_ssl, ffi.NULL) != 0
        ):
            return False
        into = lib.BIO_new(lib.BIO_s_mem())
        out = lib.BIO_new(lib.BIO_s_mem())
        if into == ffi.NULL or out == ffi.NULL:
            # Out of memory: keep the old ones, which work.
            for bio in (into, out):
                if bio != ffi.NULL:
                    lib.BIO_free(bio)
            return False
        # SSL_set_bio frees the old pair (the SSL owns them, as it owns
        # these) and points the record layers at the new ones; pyOpenSSL
        # keeps its own pointers to the pair for bio_read and bio_write.
        lib.SSL_set_bio(connection._ssl, into, out)
        connection._into_ssl = into
        connection._from_ssl = out
        return True

    @staticmethod
    def write_input(
        connection: SSL.Connection, data: bytes | bytearray | memoryview, size: int
    ) -> None:
        if lib.BIO_write(connection._into_ssl, ffi.from_buffer(data), size) != size:
            raise ShortWrite("BIO_write was short")

    @staticmethod
    def handshake(connection: SSL.Connection) -> bool:
        # pyOpenSSL's do_handshake() raises WantReadError for every flight
        # that is not the last; an exception made, raised and caught costs
        # more than the rest of this, once or twice per handshake.
        ssl = connection._ssl
        result = lib.SSL_do_handshake(ssl)
        if result <= 0 and lib.SSL_get_error(ssl, result) == lib.SSL_ERROR_WANT_READ:
            # Unless a Python callback raised an exception that pyOpenSSL
            # has yet to raise (its helpers keep them).
            context = connection._context
            for name in _CALLBACK_HELPERS:
                helper = getattr(context, name)
                if helper is not None and helper._problems:
                    break
            else:
                return False
        # Done, or an error: pyOpenSSL says which (and raises what a
        # callback raised first, as its do_handshake() does).
        connection._raise_ssl_error(ssl, result)
        return True

    @staticmethod
    def handshake_records(
        connection: SSL.Connection,
        view: memoryview,
        ends: list[int],
        drive: Callable[[SSL.Connection], bool],
    ) -> tuple[int, bool]:
        # Every whole record at once, one do_handshake per flight: OpenSSL
        # reads no further than the record it works on (no read-ahead), so
        # once the handshake is done, what it left in its input BIO is
        # exactly what followed the last handshake record.
        complete = ends[-1]
        bio = connection._into_ssl
        if lib.BIO_write(bio, ffi.from_buffer(view), complete) != complete:
            raise SSL.Error([("txschannel", "", "internal error: BIO_write was short")])
        done = drive(connection)
        # What is left is at most what went in: one read takes it all out
        # (only its size is needed).
        left = lib.BIO_read(bio, _new_buffer("char[]", complete), complete)
        return complete - max(left, 0), done

    @staticmethod
    def encrypt(
        connection: SSL.Connection, data: bytes | bytearray | memoryview, size: int, size_hint: int
    ) -> bytes:
        ssl = connection._ssl
        source = ffi.from_buffer(data)
        written = 0
        while written < size:
            result = lib.SSL_write(ssl, source + written, size - written)
            if result <= 0:
                connection._raise_ssl_error(ssl, result)
                raise ShortWrite("SSL_write wrote nothing")
            written += result
        return _read_bio(connection._from_ssl, size_hint)

    @staticmethod
    def read_records(
        connection: SSL.Connection, buffer: memoryview, ends: list[int], limit: int, count: int
    ) -> tuple[bytes, int | None, int]:
        # All the records go into OpenSSL's input at once and SSL_read runs
        # until it wants more; OpenSSL reads no further than the record it
        # works on (no read-ahead), so after a close_notify what is left in
        # its input is exactly what followed it.
        if lib.BIO_write(connection._into_ssl, ffi.from_buffer(buffer), limit) != limit:
            raise SSL.Error([("txschannel", "", "internal error: BIO_write was short")])
        return FastEngine.read_available(connection, count, limit)

    @staticmethod
    def read_available(
        connection: SSL.Connection, count: int, limit: int
    ) -> tuple[bytes, int | None, int]:
        # The plaintext is decrypted straight into one buffer the size of
        # the ciphertext (plaintext is always shorter).
        ssl = connection._ssl
        target = _new_buffer("char[]", limit)
        produced = reads = 0
        unread: int | None = None
        # Each successful SSL_read returns one record's data; when every
        # record has given data there is nothing left to ask OpenSSL about.
        while reads < count:
            result = lib.SSL_read(ssl, target + produced, limit - produced)
            if result > 0:
                produced += result
                reads += 1
                continue
            error = lib.SSL_get_error(ssl, result)
            if error == lib.SSL_ERROR_WANT_READ:
                break
            if error == lib.SSL_ERROR_ZERO_RETURN:
                unread = len(_read_bio(connection._into_ssl, limit))
                break
            connection._raise_ssl_error(ssl, result)
            raise SSL.Error([("txschannel", "", f"SSL_read failed with error {error}")])
        plaintext: bytes = ffi.buffer(target, produced)[:]
        return plaintext, unread, reads


def _public_bio_read(connection: SSL.Connection, size: int) -> bytes:
    """At most *size* bytes of the output BIO, b"" when it is empty."""
    try:
        return connection.bio_read(size)
    except SSL.WantReadError:
        return b""


class PublicEngine:
    """The engine on pyOpenSSL's public API only. It cannot see what is left
    in OpenSSL's input, so records go in one at a time where that matters
    (none is given to OpenSSL after the one that finished the handshake or
    closed the stream)."""

    @staticmethod
    def drain(connection: SSL.Connection, size_hint: int) -> bytes:
        return _read_all(_public_bio_read, connection, size_hint)

    @staticmethod
    def fresh_buffers(connection: SSL.Connection) -> bool:
        return False

    @staticmethod
    def write_input(
        connection: SSL.Connection, data: bytes | bytearray | memoryview, size: int
    ) -> None:
        connection.bio_write(data if size == len(data) else memoryview(data)[:size])

    @staticmethod
    def handshake(connection: SSL.Connection) -> bool:
        try:
            connection.do_handshake()
        except SSL.WantReadError:
            return False
        return True

    @staticmethod
    def handshake_records(
        connection: SSL.Connection,
        view: memoryview,
        ends: list[int],
        drive: Callable[[SSL.Connection], bool],
    ) -> tuple[int, bool]:
        consumed = 0
        done = False
        for end in ends:
            connection.bio_write(view[consumed:end])
            consumed = end
            done = drive(connection)
            if done:
                break
        return consumed, done

    @staticmethod
    def encrypt(
        connection: SSL.Connection, data: bytes | bytearray | memoryview, size: int, size_hint: int
    ) -> bytes:
        connection.sendall(data)
        return _read_all(_public_bio_read, connection, size_hint)

    @staticmethod
    def read_records(
        connection: SSL.Connection, buffer: memoryview, ends: list[int], limit: int, count: int
    ) -> tuple[bytes, int | None, int]:
        pieces: list[bytes] = []
        start = 0
        for end in ends:
            connection.bio_write(buffer[start:end])
            start = end
            try:
                # (A record holds at most MAX_PLAINTEXT bytes: one read.)
                pieces.append(connection.recv(_RECV_SIZE))
            except SSL.WantReadError:
                continue  # no application data: a ticket, a KeyUpdate, ...
            except SSL.ZeroReturnError:
                return b"".join(pieces), ends[-1] - end, len(pieces)
        return b"".join(pieces), None, len(pieces)

    @staticmethod
    def read_available(
        connection: SSL.Connection, count: int, limit: int
    ) -> tuple[bytes, int | None, int]:
        pieces: list[bytes] = []
        unread: int | None = None
        while len(pieces) < count:
            try:
                pieces.append(connection.recv(_RECV_SIZE))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                unread = 0
                break
        return b"".join(pieces), unread, len(pieces)


#: The engine chosen with :data:`FAST`, once.
engine: Engine = FastEngine() if FAST else PublicEngine()


# -- callbacks: verification and certificate requests -----------------------


#: The verification error that means none (OpenSSL's X509_V_OK).
X509_V_OK = 0


class VerifyCall:
    """One call of OpenSSL's verify callback, for one certificate of the
    peer's chain, as a judge sees it on either path.

    :ivar connection: the connection being verified.
    :ivar certificate: the certificate at *depth*.
    :ivar errno: OpenSSL's own X509_V_ERR_* code for it (0: none).
    :ivar depth: its place in the chain (0: the peer's own).
    :ivar ok: OpenSSL's own verdict (1: accepted).
    """

    __slots__ = ("_ssl", "_store", "certificate", "connection", "depth", "errno", "ok")

    def __init__(
        self,
        connection: SSL.Connection,
        certificate: crypto.X509,
        errno: int,
        depth: int,
        ok: int,
        store: Any = None,
        ssl: Any = None,
    ) -> None:
        self.connection = connection
        self.certificate = certificate
        self.errno = errno
        self.depth = depth
        self.ok = ok
        self._store = store
        self._ssl = ssl

    def set_error(self, errno: int) -> None:
        """Make *errno* the verification's error, which picks the alert the
        peer gets. The public path cannot: the alert stays the one for
        OpenSSL's own error (internal_error where it saw none)."""
        if self._store is not None:
            lib.X509_STORE_CTX_set_error(self._store, errno)

    def stop_checking(self) -> bool:
        """Have OpenSSL refuse nothing more on this connection
        (SSL_VERIFY_NONE) and end its verification of this chain: True
        when done (False on the public path, which cannot)."""
        set_verify = getattr(lib, "SSL_set_verify", None) if self._ssl is not None else None
        if set_verify is None or not self._ssl:
            return False
        set_verify(self._ssl, lib.SSL_VERIFY_NONE, _verify_callback)
        return True

    def resume_checking(self) -> None:
        """Undo :meth:`stop_checking`: a refusal ends the handshake again."""
        if self._ssl is not None:
            lib.SSL_set_verify(self._ssl, lib.SSL_VERIFY_PEER, _verify_callback)


#: What judges a certificate: True accepts it. Exceptions count as refusals.
Judge = Callable[[VerifyCall], bool]
_judges: list[Judge] = []


def _c_verify(ok: int, store: Any) -> int:
    """OpenSSL's verify callback, at the C level (the fast path).

    pyOpenSSL's own wrapper hides the X509_STORE_CTX, so a refusal decided
    in Python would leave its error at X509_V_OK and OpenSSL would send the
    peer an internal_error alert. Here the judge can set the refusal's code
    (VerifyCall.set_error), so the peer gets the alert OpenSSL maps it to.
    """
    try:
        ssl = lib.X509_STORE_CTX_get_ex_data(store, lib.SSL_get_ex_data_X509_STORE_CTX_idx())
        connection = SSL.Connection._reverse_mapping.get(ssl)
        if connection is None:
            return ok
        pointer = lib.X509_STORE_CTX_get_current_cert(store)
        lib.X509_up_ref(pointer)
        certificate = crypto.X509._from_raw_x509_ptr(pointer)
        call = VerifyCall(
            connection,
            certificate,
            lib.X509_STORE_CTX_get_error(store),
            lib.X509_STORE_CTX_get_error_depth(store),
            ok,
            store,
            ssl,
        )
        return 1 if _judges[0](call) else 0
    except Exception:  # pragma: no cover - never let an exception into OpenSSL
        return 0


class Verifier:
    """A judge of peers' chains installed on contexts: on the fast path
    through one C callback (SSL_CTX_set_verify), on the public path through
    ``Context.set_verify``. One per process (cffi callbacks are a scarce
    resource, and the C callback calls the judge made first)."""

    def __init__(self, judge: Judge) -> None:
        self._judge = judge
        if not _judges:
            _judges.append(judge)

    def install(self, context: SSL.Context, mode: int) -> None:
        """Have *context* judge its peers' chains, with SSL_VERIFY_* *mode*."""
        if FAST:
            lib.SSL_CTX_set_verify(context._context, mode, _verify_callback)
        else:
            context.set_verify(mode, self._public)

    def _public(
        self, connection: SSL.Connection, certificate: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        try:
            return self._judge(VerifyCall(connection, certificate, errno, depth, ok))
        except Exception:  # pragma: no cover - pyOpenSSL would re-raise it as is
            return False


class CertificateRequests:
    """Tells *on_request* of a server's request for a client certificate
    (OpenSSL's cert_cb). Only the fast path can: :meth:`install` returns
    False on the public path, where an info callback must watch the
    handshake's states instead."""

    def __init__(self, on_request: Callable[[SSL.Connection], None]) -> None:
        self._on_request = on_request

    def install(self, context: SSL.Context) -> bool:
        """Watch *context*'s connections; False: the public path cannot."""
        if not FAST:
            return False
        global _certificate_request_handler
        if _certificate_request_handler is None:
            _certificate_request_handler = self._on_request
        lib.SSL_CTX_set_cert_cb(context._context, _certificate_request_callback, ffi.NULL)
        return True


_certificate_request_handler: Callable[[SSL.Connection], None] | None = None


def _c_certificate_requested(ssl: Any, arg: Any) -> int:
    try:
        connection = SSL.Connection._reverse_mapping.get(ssl)
        if connection is not None and _certificate_request_handler is not None:
            _certificate_request_handler(connection)
    except Exception:  # pragma: no cover - never let an exception into OpenSSL
        pass
    return 1


if FAST:
    # One C callback each for every context (cffi callbacks are a scarce
    # resource).
    _verify_callback: Any = ffi.callback("int (*)(int, X509_STORE_CTX *)", _c_verify)
    _certificate_request_callback: Any = ffi.callback(
        "int (*)(SSL *, void *)", _c_certificate_requested
    )
