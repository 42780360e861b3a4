"""The self-signed certificate ``twist schannel`` serves when none is named.

Made once for ``localhost``, ``127.0.0.1`` and ``::1`` and kept in a state
folder (:func:`default_state_dir`, or ``--state-dir``); made again when it
expires. A kept key that others could read or replace is refused, as ssh
refuses one.
"""

from __future__ import annotations

import datetime
import errno
import ipaddress
import os
import shlex
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["SelfSignedCertificate", "default_state_dir", "ensure_self_signed", "fingerprint"]

#: The names the self-signed certificate is good for.
_SELF_SIGNED_NAMES = ("localhost", "127.0.0.1", "::1")


#: Within the 366 days that Mozilla's profile (and browsers) accept; a
#: new one is made (and its fingerprint logged) when it runs out.
_SELF_SIGNED_DAYS = 365


def default_state_dir() -> Path:
    """Where ``twist schannel`` keeps its state when ``--state-dir`` is not given.

    ``$XDG_STATE_HOME/txschannel``, or ``~/.local/state/txschannel``.
    """
    base = os.environ.get("XDG_STATE_HOME")
    if base and os.path.isabs(base):
        return Path(base) / "txschannel"
    return Path.home() / ".local" / "state" / "txschannel"


@dataclass(frozen=True)
class SelfSignedCertificate:
    """The default certificate kept in the state folder.

    :ivar server_file: certificate and private key (mode 0600): the server's.
    :ivar certificate_file: the certificate alone: give it to clients
        (``curl --cacert``).
    :ivar fingerprint: SHA-256 of the certificate, colon-separated hex.
    :ivar created: whether this run made it (first run, or the old one expired).
    """

    server_file: Path
    certificate_file: Path
    fingerprint: str
    created: bool


def fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _new_self_signed() -> tuple[bytes, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "txschannel self-signed"),
        ]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    alternative: list[x509.GeneralName] = [x509.DNSName("localhost")]
    alternative += [x509.IPAddress(ipaddress.ip_address(a)) for a in _SELF_SIGNED_NAMES[1:]]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=_SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, certificate


def ensure_self_signed(folder: Path) -> SelfSignedCertificate:
    """Return the self-signed certificate kept in *folder*, making it if needed.

    A new one is made on first use and when the kept one has expired; a
    damaged one is an error rather than being silently replaced, since its
    fingerprint may be pinned somewhere.

    :raises ValueError: the folder cannot be created or written, the kept
        files are damaged, or others could read or replace the private key
        (the message names the file or folder and the fix).
    """
    server_file = folder / "localhost.pem"
    certificate_file = folder / "localhost.crt"
    _check_private(folder, server_file)
    if os.path.lexists(server_file):
        try:
            data = _read_kept(server_file)
            certificate = x509.load_pem_x509_certificate(data)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"the kept certificate {str(server_file)!r} cannot be read ({e}); "
                "remove it to make a new one"
            ) from None
        now = datetime.datetime.now(datetime.timezone.utc)
        if certificate.not_valid_after_utc > now:
            if not _holds(certificate_file, certificate):
                # The log tells clients to trust this file: it must be the
                # certificate actually served, not a stale or planted one.
                try:
                    _write_public(certificate_file, certificate)
                except OSError as e:
                    raise ValueError(
                        f"cannot write the certificate to trust, {str(certificate_file)!r}: "
                        f"{e.strerror or e}; remove it to have it made again"
                    ) from None
            return SelfSignedCertificate(
                server_file, certificate_file, fingerprint(certificate), False
            )
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_pem, certificate = _new_self_signed()
        pem = certificate.public_bytes(serialization.Encoding.PEM)
        _write_atomically(server_file, key_pem + pem, 0o600)
        _write_public(certificate_file, certificate)
    except OSError as e:
        raise ValueError(
            f"cannot keep the self-signed certificate in {str(folder)!r}: "
            f"{e.strerror or e} (use --state-dir)"
        ) from None
    return SelfSignedCertificate(server_file, certificate_file, fingerprint(certificate), True)


#: More than any self-signed certificate and key we write (about 1 KiB).
_KEPT_FILE_LIMIT = 64 * 1024


def _read_kept(path: Path) -> bytes:
    """The bytes of a file in the state folder, which must be a small regular file.

    Opened without following a symbolic link and without blocking, so that a
    named pipe planted there cannot hang the start and ``/dev/zero`` cannot
    fill memory.

    :raises ValueError: it is a link, not a regular file, or too large.
    :raises OSError: it cannot be opened or read.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError("it is a symbolic link, not a file of its own") from None
        raise
    with os.fdopen(descriptor, "rb") as handle:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError("it is not a regular file")
        data = handle.read(_KEPT_FILE_LIMIT + 1)
    if len(data) > _KEPT_FILE_LIMIT:
        raise ValueError(f"it is larger than {_KEPT_FILE_LIMIT} bytes")
    return data


def _holds(path: Path, certificate: x509.Certificate) -> bool:
    """Whether *path* is a regular file holding exactly *certificate* in PEM."""
    try:
        return _read_kept(path) == certificate.public_bytes(serialization.Encoding.PEM)
    except (OSError, ValueError):
        return False


def _check_private(folder: Path, server_file: Path) -> None:
    """Refuse a kept private key that other users could read or replace, as ssh does.

    Served silently, such a key would let anyone on the machine impersonate
    this server to every client that trusts its fingerprint.
    """
    try:
        # lstat: a link is refused when the file is read, with its own message.
        kept: os.stat_result | None = server_file.lstat()
    except OSError:
        kept = None  # made below, mode 0600
    if kept is not None and stat.S_ISLNK(kept.st_mode):
        kept = None  # refused when read: a link has no mode of its own
    if kept is not None and kept.st_uid != os.geteuid():
        raise ValueError(
            f"the kept private key {str(server_file)!r} belongs to another user (uid "
            f"{kept.st_uid}): remove it to make a new one"
        )
    if kept is not None and kept.st_mode & 0o077:
        raise ValueError(
            f"the kept private key {str(server_file)!r} is open to other users (mode "
            f"{stat.S_IMODE(kept.st_mode):04o}): chmod 600 {shlex.quote(str(server_file))}, "
            "or remove it to make a new key if others may have read it"
        )
    try:
        state = folder.stat()
    except OSError:
        return  # made below, mode 0700
    if state.st_mode & 0o022 and not state.st_mode & stat.S_ISVTX:
        # Whoever can write there can put a key of their own in place.
        raise ValueError(
            f"the state folder {str(folder)!r} can be written by other users (mode "
            f"{stat.S_IMODE(state.st_mode):04o}): chmod 700 {shlex.quote(str(folder))}"
        )


def _write_public(path: Path, certificate: x509.Certificate) -> None:
    _write_atomically(path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
