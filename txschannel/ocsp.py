"""OCSP stapling for ``schannel:`` server endpoints: ``ocspResponse=FILE`` and ``ocsp=auto``.

A :class:`Stapler` holds the current OCSP response (DER) for one server
endpoint's certificate and hands it to every client that asks for it
(the ``status_request`` extension), through pyOpenSSL's
``set_ocsp_server_callback``. The two endpoint-string options make one
(:func:`~txschannel.endpoints.parse_server`), so every Twisted program
that reads endpoint strings staples (``twist web --listen
schannel:tcp:443:certificate=site.pem:ocsp=auto``), ``twist schannel``
included; the :class:`~txschannel.endpoints.SchannelServerEndpoint` starts
it when a port starts listening, reloads it with the certificates and stops
it when its last port stops:

- ``ocspResponse=FILE``: the response is read from *FILE* when the string
  is parsed and on every reload, with the certificates. A file that does
  not hold a successful response for the served certificate is an error
  when parsing and, at a reload, is logged while the previous response
  stays in use.
- ``ocsp=auto``: the response is fetched from the certificate's OCSP
  responder (its Authority Information Access URL) with Twisted's
  ``Agent``, when the endpoint starts listening, on every reload while it
  listens, and again halfway between the response's thisUpdate and
  nextUpdate (hourly when it has none). When the responder fails, the last
  good response is kept (until its nextUpdate) and the fetch retried,
  sooner at first, then less often. Each fetch is logged.

A response is stapled only while it is current: one past its nextUpdate
is not sent (clients would refuse it), nor is one for another certificate.

With an ``sni`` folder, ``ocsp=auto`` makes a :class:`FolderStapler`: a
:class:`Stapler` for each certificate the endpoint serves, installed on the
OpenSSL context that serves it. (``ocspResponse=`` names one certificate's
response, so the parser refuses it with ``sni``.)
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txschannel.credentials import Credentials, sni_files
from txschannel.peertext import PeerText

__all__ = ["FolderStapler", "OCSPError", "Stapler", "certificate_and_issuer", "responder_url"]

_log = Logger(namespace="txschannel")

#: The most bytes of a responder's answer that are read.
MAX_RESPONSE = 64 * 1024
#: Seconds a fetch may take.
FETCH_TIMEOUT = 15.0
#: Seconds between refreshes of a response that gives no nextUpdate.
_NO_NEXT_UPDATE = 3600.0
#: Retry delays after a failed fetch: the first, and the most.
_RETRY_FIRST = 30.0
_RETRY_MOST = 3600.0


class OCSPError(ValueError):
    """An OCSP response or setting that cannot be used (the message says why)."""


def certificate_and_issuer(
    certificate_file: str, chain_file: str | None = None
) -> tuple[x509.Certificate, x509.Certificate | None]:
    """The leaf of *certificate_file* (the first certificate in it) and its issuer.

    The issuer is looked for among the other certificates of the file and
    of *chain_file*.

    :raises OCSPError: a file cannot be read or holds no certificate.
    """
    found: list[x509.Certificate] = []
    for name in (certificate_file, chain_file):
        if name is None:
            continue
        try:
            found += x509.load_pem_x509_certificates(Path(name).read_bytes())
        except (OSError, ValueError) as e:
            raise OCSPError(f"cannot read certificates from {name!r}: {e}") from None
    if not found:
        raise OCSPError(f"no certificate in {certificate_file!r}")
    leaf = found[0]
    issuer = next((c for c in found[1:] if c.subject == leaf.issuer), None)
    return leaf, issuer


def responder_url(certificate: x509.Certificate) -> str | None:
    """The OCSP responder URL of *certificate*'s Authority Information Access, if any."""
    try:
        access = certificate.extensions.get_extension_for_class(
            x509.AuthorityInformationAccess
        ).value
    except x509.ExtensionNotFound:
        return None
    for description in access:
        if description.access_method == AuthorityInformationAccessOID.OCSP and isinstance(
            description.access_location, x509.UniformResourceIdentifier
        ):
            return str(description.access_location.value)
    return None


def _check(der: bytes, certificate: x509.Certificate, source: str) -> ocsp.OCSPResponse:
    """*der* parsed, when it is a successful response about *certificate*."""
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as e:
        raise OCSPError(f"{source} is not a DER OCSP response ({e})") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OCSPError(f"{source} says {response.response_status.name}, not SUCCESSFUL")
    if response.serial_number != certificate.serial_number:
        raise OCSPError(
            f"{source} is about serial number {response.serial_number:x}, not the "
            f"certificate's ({certificate.serial_number:x})"
        )
    return response


def _until(response: ocsp.OCSPResponse) -> float | None:
    after = response.next_update_utc
    return after.timestamp() if after is not None else None


def _describe(response: ocsp.OCSPResponse) -> str:
    next_update = response.next_update_utc
    return (
        f"{response.certificate_status.name.lower()}, this update "
        f"{response.this_update_utc:%Y-%m-%d %H:%M:%S}, next update "
        + (f"{next_update:%Y-%m-%d %H:%M:%S} UTC" if next_update else "none")
    )


def _failure_text(failure: Failure) -> str:
    # twisted.web wraps what went wrong (ResponseNeverReceived(reasons=[...]),
    # and a timeout is a cancellation): say the cause.
    from twisted.internet.defer import CancelledError, TimeoutError

    for _ in range(4):
        reasons = getattr(failure.value, "reasons", None)
        if not reasons:
            break
        failure = reasons[0]
    if failure.check(CancelledError, TimeoutError):  # type: ignore[no-untyped-call]
        return f"no answer within {FETCH_TIMEOUT:g} s"
    return failure.getErrorMessage() or type(failure.value).__name__


class _Body(Protocol):
    """Collects a response body of at most MAX_RESPONSE bytes."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_RESPONSE:
            if not self.done.called:
                self.done.errback(OCSPError(f"the answer is over {MAX_RESPONSE} bytes"))
            assert self.transport is not None
            self.transport.stopProducing()  # type: ignore[attr-defined]
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.done.called:
            self.done.callback(b"".join(self.parts))


class Stapler:
    """Staples an OCSP response for one server endpoint's certificate.

    :meth:`install` it on the credentials before their first handshake,
    :meth:`start` it when serving begins, :meth:`reload` it with the
    certificates and :meth:`stop` it when serving ends;
    :class:`~txschannel.endpoints.SchannelServerEndpoint` does all four for
    the stapler it is given.

    :param description: the endpoint, for log lines.
    :param certificate_file: the served certificate (the first in the file).
    :param chain_file: where else its issuer may be (``chain=``).
    :param response_file: ``ocspResponse=``: read the response from here.
    :param auto: ``ocsp=auto``: fetch it from the certificate's responder.
    :param reactor: for the fetches (``Agent``) and the refresh timer.
    :raises OCSPError: at construction: the response file is not a good
        response for the certificate, or with *auto* the certificate names
        no responder or its issuer is not found.
    """

    def __init__(
        self,
        description: str,
        certificate_file: str,
        *,
        chain_file: str | None = None,
        response_file: str | None = None,
        auto: bool = False,
        reactor: Any,
    ) -> None:
        self.description = description
        self.certificate_file = certificate_file
        self.chain_file = chain_file
        self.response_file = response_file
        self.auto = auto
        self.reactor = reactor
        #: The DER response stapled now (b"" for none), and until when.
        self.response = b""
        self.valid_until: float | None = None
        self._timer: IDelayedCall | None = None
        self._fetching: Deferred[Any] | None = None
        self._retry = _RETRY_FIRST
        #: Between start() and stop(): only then are there fetches and timers.
        self._running = False
        self._read_certificate()
        if response_file is not None:
            self.response, self.valid_until = self._read_file()

    def _read_certificate(self) -> None:
        self.certificate, self.issuer = certificate_and_issuer(
            self.certificate_file, self.chain_file
        )
        if self.auto:
            self.url = responder_url(self.certificate)
            if self.url is None:
                raise OCSPError(
                    f"ocsp=auto: the certificate in {self.certificate_file!r} names no OCSP "
                    "responder (Authority Information Access)"
                )
            if self.issuer is None:
                raise OCSPError(
                    f"ocsp=auto: the issuer of the certificate in {self.certificate_file!r} "
                    "is in neither that file nor chain=: an OCSP request needs it"
                )

    def _read_file(self) -> tuple[bytes, float | None]:
        assert self.response_file is not None
        try:
            der = Path(self.response_file).read_bytes()
        except OSError as e:
            raise OCSPError(
                f"ocspResponse file {self.response_file!r}: {e.strerror or e}"
            ) from None
        response = _check(der, self.certificate, f"ocspResponse file {self.response_file!r}")
        return der, _until(response)

    # -- stapling ---------------------------------------------------------

    def install(self, credentials: Credentials) -> None:
        """Staple from now on in *credentials*' handshakes.

        Call it before their first handshake: OpenSSL reads a context's
        callbacks when a connection is made from it.
        """
        self.install_context(credentials.openssl_context)

    def install_context(self, context: SSL.Context) -> None:
        """Staple from now on in the handshakes of one OpenSSL *context*.

        (An ``sni`` folder's per-name contexts: see :class:`FolderStapler`.)
        """
        context.set_ocsp_server_callback(self._staple)

    def _staple(self, connection: SSL.Connection, data: object) -> bytes:
        # (Only asked when the client sent status_request.)
        until = self.valid_until
        if until is not None and self.reactor.seconds() >= until:
            return b""
        return self.response

    # -- the life cycle ------------------------------------------------------

    def start(self) -> None:
        """Serving begins: with ``ocsp=auto``, fetch now (and then on schedule)."""
        self._running = True
        if self.auto:
            self._fetch("start")

    @property
    def running(self) -> bool:
        """Whether the stapler is started (and not stopped since)."""
        return self._running

    def reload(self, why: str) -> None:
        """Read the certificate again and the response file, or fetch again.

        A response that cannot be had is logged and the previous one kept
        (when it is still about the certificate). With ``ocsp=auto``, a
        stapler that is not started fetches nothing: it will at its start.
        """
        try:
            self._read_certificate()
        except OCSPError as e:
            _log.error("{why}: OCSP for {endpoint}: {error}", why=why,
                       endpoint=self.description, error=str(e))
            return
        if self.response:
            try:
                _check(self.response, self.certificate, "the stapled response")
            except OCSPError:
                # A new certificate: the old response is about another one.
                self.response, self.valid_until = b"", None
        if self.response_file is not None:
            try:
                self.response, self.valid_until = self._read_file()
            except OCSPError as e:
                _log.error(
                    "{why}: {error}; {kept}", why=why, error=str(e),
                    kept="keeping the previous response" if self.response
                    else "no response to staple",
                )
            else:
                _log.info("{why}: stapling {file} for {endpoint}", why=why,
                          file=self.response_file, endpoint=self.description)
        if self.auto and self._running:
            self._fetch(why)

    def stop(self) -> None:
        """Serving ended: cancel the refresh timer and any fetch under way."""
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        fetching, self._fetching = self._fetching, None
        if fetching is not None:
            fetching.cancel()

    # -- ocsp=auto -----------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        if not self._running:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.reactor.callLater(delay, self._fetch, "refresh")

    def _request(self) -> bytes:
        assert self.issuer is not None
        builder = ocsp.OCSPRequestBuilder().add_certificate(
            self.certificate, self.issuer, hashes.SHA1()
        )
        return builder.build().public_bytes(serialization.Encoding.DER)

    def _fetch(self, why: str) -> None:
        from io import BytesIO

        from twisted.web.client import Agent, FileBodyProducer
        from twisted.web.http_headers import Headers

        if self._fetching is not None:
            return
        self._timer = None
        url = self.url
        assert url is not None
        agent = Agent(self.reactor)  # type: ignore[no-untyped-call]
        body = FileBodyProducer(BytesIO(self._request()))  # type: ignore[no-untyped-call]
        requesting = agent.request(
            b"POST", url.encode("ascii"),
            Headers({b"content-type": [b"application/ocsp-request"]}),
            body,
        )

        def read(response: Any) -> Deferred[bytes]:
            if response.code != 200:
                response.deliverBody(Protocol())
                raise OCSPError(f"the responder answered HTTP {response.code}")
            done: Deferred[bytes] = Deferred()
            response.deliverBody(_Body(done))
            return done

        requesting.addCallback(read)
        requesting.addTimeout(FETCH_TIMEOUT, self.reactor)
        self._fetching = requesting
        requesting.addCallbacks(self._fetched, self._failed, callbackArgs=(why, url),
                                errbackArgs=(why, url))

    def _fetched(self, der: bytes, why: str, url: str) -> None:
        self._fetching = None
        try:
            response = _check(der, self.certificate, f"the answer of {url}")
        except OCSPError as e:
            self._failed(Failure(e), why, url)  # type: ignore[no-untyped-call]
            return
        if response.certificate_status == ocsp.OCSPCertStatus.REVOKED:
            _log.error("OCSP: {url} says the certificate of {endpoint} is REVOKED",
                       url=url, endpoint=self.description)
        self.response, self.valid_until = der, _until(response)
        self._retry = _RETRY_FIRST
        now = datetime.datetime.now(datetime.timezone.utc)
        next_update = response.next_update_utc
        if next_update is None:
            delay = _NO_NEXT_UPDATE
        else:
            delay = (response.this_update_utc + (next_update - response.this_update_utc) / 2
                     - now).total_seconds()
            delay = max(delay, _RETRY_FIRST)
        _log.info(
            "OCSP ({why}): fetched from {url} for {endpoint}: {state}; refreshing in {delay} s",
            why=why, url=url, endpoint=self.description, state=_describe(response),
            delay=round(delay),
        )
        self._schedule(delay)

    def _failed(self, failure: Failure, why: str, url: str) -> None:
        self._fetching = None
        if not self._running:
            return
        delay, self._retry = self._retry, min(self._retry * 2, _RETRY_MOST)
        if self.response:
            kept = "keeping the last good response"
            if self.valid_until is not None:
                until = datetime.datetime.fromtimestamp(self.valid_until, datetime.timezone.utc)
                kept += f" (valid until {until:%Y-%m-%d %H:%M:%S} UTC)"
        else:
            kept = "no response to staple"
        _log.warn(
            "OCSP ({why}): fetching from {url} for {endpoint} failed: {error}; {kept}; "
            "retrying in {delay} s",
            why=why, url=url, endpoint=self.description,
            error=PeerText(_failure_text(failure)), kept=kept, delay=round(delay),
        )
        self._schedule(delay)


class FolderStapler:
    """``ocsp=auto`` for an endpoint with an ``sni`` folder: one staple per certificate.

    Each certificate the endpoint serves, the default one and each
    ``<hostname>.pem`` of the folder, gets a :class:`Stapler` of its own,
    which fetches from that certificate's responder (its issuer must be in
    its file); each is installed on the OpenSSL context that serves its
    certificate. The methods are :class:`Stapler`'s, for all of them. Files
    that appear in the folder get a stapler at the next :meth:`install`
    (a reload), started if serving is; those that go are stopped.

    :param description: the endpoint, for log lines (each stapler adds its
        host name).
    :param certificate_file: the default certificate (``certificate=``, or
        the folder's ``DEFAULT.pem``).
    :param folder: the ``sni`` folder.
    :param chain_file: where else the default certificate's issuer may be.
    :param reactor: for the fetches and the refresh timers.
    :raises OCSPError: at construction: a certificate names no responder,
        or its issuer is not found (the message names the file); at a
        reload such a file is logged and skipped.
    :ivar default: the default certificate's stapler.
    :ivar hosts: the stapler of each host name of the folder (a file's stem).
    """

    def __init__(
        self,
        description: str,
        certificate_file: str,
        folder: str,
        *,
        chain_file: str | None = None,
        reactor: Any,
    ) -> None:
        self.description = description
        self.folder = folder
        self.reactor = reactor
        self.default = Stapler(
            description, certificate_file, chain_file=chain_file, auto=True, reactor=reactor
        )
        self.hosts: dict[str, Stapler] = {}
        self._running = False
        self._scan(strict=True, why="start")

    @property
    def running(self) -> bool:
        """Whether the staplers are started (and not stopped since)."""
        return self._running

    def _all(self) -> list[Stapler]:
        # The folder's DEFAULT.pem may be the default certificate and a
        # host at once: one stapler, fetching once.
        return list({id(s): s for s in (self.default, *self.hosts.values())}.values())

    def _scan(self, *, strict: bool, why: str) -> None:
        """Make a stapler for each new file of the folder, drop those of files gone."""
        # The names the credentials serve, read the same way.
        files = sni_files(self.folder)
        changed = [n for n, s in self.hosts.items() if files.get(n) != s.certificate_file]
        for name in changed:
            gone = self.hosts.pop(name)
            if gone is not self.default:
                gone.stop()
        for name, file in files.items():
            if name in self.hosts:
                continue
            if file == self.default.certificate_file:
                self.hosts[name] = self.default
                continue
            try:
                stapler = Stapler(
                    f"{self.description} ({name})", file, auto=True, reactor=self.reactor
                )
            except OCSPError as e:
                if strict:
                    raise
                _log.error("{why}: OCSP for {endpoint}: {error}", why=why,
                           endpoint=f"{self.description} ({name})", error=str(e))
                continue
            self.hosts[name] = stapler
            if self._running:
                stapler.start()

    def install(self, credentials: Credentials) -> None:
        """Staple from now on in *credentials*' handshakes, each name with its own.

        Call it before their first handshake, as :meth:`Stapler.install`.
        """
        self._scan(strict=False, why="reload")
        self.default.install(credentials)
        for name, context in credentials.sni_contexts.items():
            stapler = self.hosts.get(name)
            if stapler is not None:
                stapler.install_context(context)

    def start(self) -> None:
        """Serving begins: every stapler fetches now (and then on schedule)."""
        self._running = True
        for stapler in self._all():
            stapler.start()

    def reload(self, why: str) -> None:
        """Read every certificate again, and fetch again (see :meth:`Stapler.reload`)."""
        for stapler in self._all():
            stapler.reload(why)

    def stop(self) -> None:
        """Serving ended: cancel every refresh timer and fetch under way."""
        self._running = False
        for stapler in self._all():
            stapler.stop()
