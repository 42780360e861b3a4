"""Connect to the echo server, check its certificate, say hello.

Run it while ``echo_server.py`` runs: ``python echo_client.py``.
Another endpoint string as the first argument connects there instead:
``python echo_client.py schannel:tcp:localhost:9443:trustRoots=ca.pem``.
"""

import sys

from twisted.internet import defer, task
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol

CONNECT = "schannel:tcp:localhost:8443:trustRoots=ca.pem"


class Hello(Protocol):
    def __init__(self):
        self.answer = defer.Deferred()

    def connectionMade(self):
        self.transport.write(b"hello over TLS")  # sent once the handshake is done

    def dataReceived(self, data):
        context = self.transport.securityContext
        print("protocol:", context.attributes.protocol)
        print("server said:", data.decode())
        self.transport.loseConnection()
        self.answer.callback(None)

    def connectionLost(self, reason):
        if not self.answer.called:  # e.g. a SecurityError: the certificate was refused
            self.answer.errback(reason)


async def main(reactor, connect=CONNECT):
    endpoint = clientFromString(reactor, connect)
    protocol = await endpoint.connect(Factory.forProtocol(Hello))
    await protocol.answer


task.react(main, sys.argv[1:])
