"""systemd's side of ``$NOTIFY_SOCKET``: a Unix datagram socket that reads each
message with the PID of its sender, as systemd does.
"""

from __future__ import annotations

import os
import socket
import struct
import tempfile

from twisted.trial.unittest import SynchronousTestCase


class Systemd:
    """The receiving end of ``NOTIFY_SOCKET``, as systemd holds it."""

    def __init__(self, test: SynchronousTestCase, *, abstract: bool = False) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        test.addCleanup(self.socket.close)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if abstract:
            name = f"txschannel-test-{os.getpid()}-{id(self)}"
            self.socket.bind("\0" + name)
            self.name = "@" + name
        else:
            folder = tempfile.mkdtemp(prefix="txschannel-notify-")
            self.name = os.path.join(folder, "notify")
            self.socket.bind(self.name)

    def receive(self, timeout: float = 30.0) -> tuple[int, str]:
        """(sender's PID, message) of the next datagram; a failure after *timeout*."""
        self.socket.settimeout(timeout)
        size = struct.calcsize("3i")
        try:
            data, ancillary, _, _ = self.socket.recvmsg(4096, socket.CMSG_SPACE(size))
        except TimeoutError:
            raise AssertionError(f"nothing on NOTIFY_SOCKET within {timeout} s") from None
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", payload[:size])[0]
        return pid, data.decode()

    def nothing_more(self, wait: float = 1.0) -> None:
        self.socket.settimeout(wait)
        try:
            data = self.socket.recv(4096)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message {data!r}")
