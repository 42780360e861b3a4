"""An expired certificate: what a txschannel client makes of it (in memory),
then the same certificate in files, to serve to any client."""

import datetime

from twisted.internet.protocol import Protocol

from txschannel import Credentials
from txschannel.testing import CertificateAuthority, connected_pair

ca = CertificateAuthority()
yesterday = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
expired = ca.issue("localhost", "127.0.0.1", not_after=yesterday)


class Client(Protocol):
    def connectionLost(self, reason=None):
        self.reason = reason


# In memory: the client trusts the CA, and refuses the certificate anyway.
client, server, pump = connected_pair(
    Client,
    Protocol,
    ca=ca,
    server_credentials=Credentials.server(
        certificate=expired.certificate, private_key=expired.private_key
    ),
)
print("the client refused it:", client.reason.value.status.name)

# Files: key and certificate in one, and the CA that clients should trust.
expired.write("expired.pem")
ca.write("expired-ca.pem")
print("wrote expired.pem and expired-ca.pem")
