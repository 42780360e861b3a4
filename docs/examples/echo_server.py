"""A TLS echo server: everything a client sends comes back.

Run it beside the files of ``certificates.py``: ``python echo_server.py``.
Another endpoint string as the first argument listens there instead:
``python echo_server.py schannel:tcp:9443:interface=127.0.0.1:certificate=server.pem``.
"""

import sys

from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol

LISTEN = "schannel:tcp:8443:interface=127.0.0.1:certificate=server.pem"


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


async def main(reactor, listen=LISTEN):
    endpoint = serverFromString(reactor, listen)  # a mistake stops us here, named
    port = await endpoint.listen(Factory.forProtocol(Echo))
    print("echoing on", port.getHost(), flush=True)
    await defer.Deferred()  # serve until interrupted


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
