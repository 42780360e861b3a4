#!/bin/sh
# One request with curl, which writes its own key log where SSLKEYLOGFILE
# says; then the two logs are compared: the same secrets for the same
# client random, so either one decrypts a capture of that connection.
# PORT=... for another port than 8443.
set -e
SSLKEYLOGFILE=curl-keys.log curl -sS --cacert ca.pem -o /dev/null "https://localhost:${PORT:-8443}/"
grep -v '^#' curl-keys.log | sort >curl-keys.sorted
sort server-keys.log >server-keys.sorted
if cmp -s curl-keys.sorted server-keys.sorted; then
    echo "same secrets in both key logs: $(wc -l <server-keys.sorted) lines"
else
    echo "the key logs differ" >&2
    exit 1
fi
