#!/bin/sh
# Mutual TLS with an allow-list. clientCA= makes the handshake ask for a
# client certificate and check it against ca.pem; requireClientCertificate=yes
# refuses clients without one; --allow-cn then admits only alice among the
# clients the CA vouches for. Without --connect, the inspector answers:
# add --connect tcp:127.0.0.1:8080 to put the gate in front of your service.
# PORT=... for another port than 8443.
listen="schannel:tcp:${PORT:-8443}:interface=127.0.0.1:certificate=server.pem"
listen="$listen:clientCA=ca.pem:requireClientCertificate=yes"
exec twist schannel --listen "$listen" --allow-cn alice
