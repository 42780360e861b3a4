"""An HTTPS site: HTTP/2 for clients that ask for it, HTTP/1.1 for the others.

Needs the h2 package (``pip install 'twisted[http2]'``). Run it beside the
files of ``certificates.py``: ``python http2_site.py``. Another endpoint
string as the first argument listens there instead.
"""

import sys

from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import Site

LISTEN = "schannel:tcp:8443:interface=127.0.0.1:certificate=server.pem:alpn=h2,http/1.1"


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"hello over " + request.clientproto + b"\n"


async def main(reactor, listen=LISTEN):
    port = await serverFromString(reactor, listen).listen(Site(Hello()))
    print("serving on", port.getHost(), flush=True)
    await defer.Deferred()  # serve until interrupted


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
