"""GET a page over HTTPS through txschannel, with twisted.web's Agent and with treq.

Run it while ``http2_site.py`` runs: ``python https_get.py``. Another URL
as the first argument (``python https_get.py https://localhost:9443/``) is
fetched instead.
"""

import sys
import warnings

from treq.client import HTTPClient
from twisted.internet import task
from twisted.web.client import Agent, readBody

from txschannel.web import SchannelEndpointFactory

URL = "https://localhost:8443/"
CA = "ca.pem"  # leave trust_roots out for the system's CA store

# Twisted 26's readBody warns about the proxy that its own Agent hands it,
# with or without TLS; the warning is about Twisted, not this program.
warnings.filterwarnings("ignore", "Using readBody with a transport", DeprecationWarning)


async def main(reactor, url=URL, ca=CA):
    factory = SchannelEndpointFactory(reactor, trust_roots=ca)
    agent = Agent.usingEndpointFactory(reactor, factory)

    response = await agent.request(b"GET", url.encode())
    body = await readBody(response)
    print("Agent:", response.code, body.decode().strip())

    http = HTTPClient(agent)  # treq, over the same Agent
    response = await http.get(url)
    print("treq:", response.code, (await response.text()).strip())


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
