#!/bin/sh
# Put a renewed certificate in service without a restart.
#     sh renew.sh NEW_PEM PID
# NEW_PEM holds the new key and certificate; PID is twist schannel's.
set -eu
cp "$1" server.pem.new
mv server.pem.new server.pem   # a rename: a reload never sees half a file
kill -HUP "$2"                 # re-read every certificate file; keep the old on error
