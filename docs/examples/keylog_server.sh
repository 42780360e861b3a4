#!/bin/sh
# The inspector on port 8443 (or $PORT), writing the TLS secrets of every
# connection to server-keys.log (appended to; created readable by you only).
listen="schannel:tcp:${PORT:-8443}:interface=127.0.0.1:certificate=server.pem"
exec twist schannel --listen "$listen:keyLogFile=server-keys.log"
