#!/bin/sh
# Serve expired.pem (from expired_certificate.py) on port 8443 (or $PORT): twist
# schannel warns at start that it has expired, and serves it anyway, so
# that clients can be tested against it.
exec twist schannel --listen "schannel:tcp:${PORT:-8443}:interface=127.0.0.1:certificate=expired.pem"
