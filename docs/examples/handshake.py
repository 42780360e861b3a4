"""A client and a server context shaking hands in memory, then talking.

Run it: ``python docs/examples/handshake.py`` (needs trustme for the
throw-away CA).
"""

import trustme

from txschannel import ClientContext, Credentials, ServerContext, Status

ca = trustme.CA()
leaf = ca.issue_cert("localhost")
client = ClientContext(Credentials.client(trust_roots=ca.cert_pem.bytes()), "localhost")
server = ServerContext(
    Credentials.server(certificate=leaf.private_key_and_cert_chain_pem.bytes())
)

step = client.initialize()  # first call: no input; the token is the ClientHello
to_server, to_client = step.token, b""
client_done = server_done = False
while not (client_done and server_done):
    if to_server and not server_done:
        answer = server.accept(to_server)
        to_client += answer.token  # send every token, whatever the status
        to_server = answer.extra  # keep what was not consumed
        server_done = answer.status is Status.OK
    if to_client and not client_done:
        step = client.initialize(to_client)
        to_server += step.token
        to_client = step.extra
        client_done = step.status is Status.OK

print("client:", client.attributes.protocol, client.attributes.cipher)
records = client.encrypt(b"hello, server")
print("server got:", server.decrypt(to_server + records).data)
# The server's session tickets travel in to_client; decrypt absorbs them.
print("client got:", client.decrypt(to_client + server.encrypt(b"hello, client")).data)
