"""Key logs: TLS secrets written to a file, so that Wireshark can decrypt a capture.

curl, Firefox, Chromium, Python's :mod:`ssl` and Go write every
connection's secrets to the file that the ``SSLKEYLOGFILE`` environment
variable names, one line per secret in the NSS key log format
(``CLIENT_RANDOM <client random> <master secret>`` for TLS 1.2,
``CLIENT_HANDSHAKE_TRAFFIC_SECRET ...`` and four more labels for TLS 1.3).
txschannel does the same for the credentials it builds
(:meth:`~txschannel.Credentials.client` and
:meth:`~txschannel.Credentials.server`), and takes the file from their
``key_log_file`` argument or the ``keyLogFile=`` endpoint option before the
variable.

Anyone who can read the file can decrypt every connection it covers, so:
the file is created with mode 0600 (an existing file keeps its mode, and is
refused if it is not a regular file of this user, or others may read it) and
only ever appended to; and the first time a process opens a key log it logs
one warning line naming it. A file is opened once per process and shared
by every credentials that name it (reloaded certificates, SNI hosts,
``--workers`` processes forked after it was opened), so its lines never
interleave within a line and the warning is not repeated.
"""

from __future__ import annotations

import os
import stat
from typing import Literal, Union

from OpenSSL import SSL
from twisted.logger import Logger

__all__ = [
    "KEY_LOG_VARIABLE",
    "KeyLogSetting",
    "close_key_logs",
    "install",
    "key_log_path",
    "open_key_log",
]

#: The environment variable that names the key log when no argument does.
KEY_LOG_VARIABLE = "SSLKEYLOGFILE"

#: What ``key_log_file`` takes: a path; ``None`` for ``$SSLKEYLOGFILE`` when
#: it is set (and not empty); ``False`` for no key log whatever the
#: environment says.
KeyLogSetting = Union[str, "os.PathLike[str]", Literal[False], None]

_log = Logger(namespace="txschannel")

# Absolute path -> descriptor, for this process (and its forks).
_open: dict[str, int] = {}


def key_log_path(setting: KeyLogSetting) -> str | None:
    """The absolute path *setting* asks for, or None for no key log.

    :raises ValueError: *setting* is an empty string.
    """
    if setting is False:
        return None
    if setting is None:
        value = os.environ.get(KEY_LOG_VARIABLE, "")
        return os.path.abspath(value) if value else None
    path = os.fspath(setting)
    if not path:
        raise ValueError("key_log_file is empty; give a file name, or False for none")
    return os.path.abspath(path)


def open_key_log(path: str, source: str) -> int:
    """The open descriptor of the key log *path*; opened (and warned about) once.

    :param source: what named the file (``keyLogFile=``, ``SSLKEYLOGFILE``),
        for the error and the warning.
    :raises ValueError: the file cannot be opened or created (naming it and
        *source*).
    """
    descriptor = _open.get(path)
    if descriptor is not None:
        return descriptor
    try:
        # O_APPEND: each line goes to the end in one write, whoever else
        # (another process, curl with the same variable) writes there too.
        # O_NOFOLLOW is not used: pointing the variable at a link is the
        # user's own choice, as with curl.
        # O_NONBLOCK: a named pipe with no reader is an error (ENXIO), not a
        # start that waits for one; it changes nothing for a regular file.
        descriptor = os.open(
            path,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK,
            0o600,
        )
    except OSError as e:
        raise ValueError(
            f"{source}: cannot open key log file {path!r}: {e.strerror or e}"
        ) from None
    problem = _exposure(os.fstat(descriptor))
    if problem is not None:
        os.close(descriptor)
        raise ValueError(f"{source}: key log file {path!r} {problem}")
    _open[path] = descriptor
    _log.warn(
        "WARNING: writing TLS secrets to {path} ({source}): anyone who can read it can "
        "decrypt these connections; use it for debugging only",
        path=path,
        source=source,
    )
    return descriptor


def _exposure(status: os.stat_result) -> str | None:
    """Why secrets must not go to a file with *status*, or None.

    The file may have been made by someone else, in a shared folder such as
    /tmp, before the variable named it: whoever owns it, or anyone when
    others may read it, would get every secret written there.
    """
    if not stat.S_ISREG(status.st_mode):
        return "is not a regular file"
    if status.st_uid != os.geteuid():
        return (
            f"belongs to another user (uid {status.st_uid}), who could read the "
            "secrets: name a file of your own"
        )
    if status.st_mode & 0o007:
        return (
            f"is open to other users (mode {stat.S_IMODE(status.st_mode):04o}): "
            "chmod o-rwx it, or name another file"
        )
    return None


def close_key_logs() -> None:
    """Close every key log this process has opened.

    Contexts that wrote to one write nothing more, until a later
    :func:`open_key_log` (which warns again) opens the same file. For tests,
    and for a program that has finished debugging.
    """
    while _open:
        _, descriptor = _open.popitem()
        try:
            os.close(descriptor)
        except OSError:
            pass


def install(context: SSL.Context, setting: KeyLogSetting, *, source: str = "key_log_file") -> bool:
    """Have *context* write its connections' secrets to the key log *setting* names.

    :param setting: see :data:`KeyLogSetting`.
    :param source: what named the file, for the error and the warning
        (``SSLKEYLOGFILE`` is said when the variable did).
    :return: whether a key log was installed.
    :raises ValueError: the file cannot be opened or created (naming it).
    """
    path = key_log_path(setting)
    if path is None:
        return False
    if setting is None:
        source = KEY_LOG_VARIABLE
    open_key_log(path, source)

    def write(connection: SSL.Connection, line: bytes) -> None:
        # Looked up at each line: after close_key_logs() the number may
        # belong to another file, which must never get secrets.
        descriptor = _open.get(path)
        if descriptor is None:
            return
        # One write per line: with O_APPEND, lines from several processes
        # do not interleave. A full disk is not a reason to fail a
        # handshake.
        try:
            os.write(descriptor, line + b"\n")
        except OSError:
            pass

    context.set_keylog_callback(write)
    return True
