"""Start a program the way systemd starts a socket-activated service.

    python socket_activate.py 127.0.0.1:8443 twist schannel --listen schannel:systemd:...

It binds and listens on the address, then *becomes* the program (exec: the
same process, so the same pid) with the listening socket as file descriptor
3 and ``LISTEN_FDS=1``, ``LISTEN_PID=<pid>``, which is what systemd hands a
service (see sd_listen_fds(3)). systemd's own ``systemd-socket-activate -l
8443 PROGRAM...`` does the same on a machine that has it.
"""

import os
import socket
import sys

host, _, port = sys.argv[1].rpartition(":")
program = sys.argv[2:]
listener = socket.create_server((host, int(port)))
os.dup2(listener.fileno(), 3)
os.set_inheritable(3, True)  # dup2 onto itself would leave it closed on exec
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="https")
os.execvp(program[0], program)
