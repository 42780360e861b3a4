#!/bin/sh
# Three clients knock: alice (on the list), bob (signed by the same CA, not on
# the list) and a client with no certificate at all. PORT=... for another
# port than 8443.
port="${PORT:-8443}"
for who in alice bob; do
    echo "$who:"
    curl -sS --cacert ca.pem --cert "$who.pem" --key "$who.pem" \
        "https://localhost:$port/" 2>&1 | grep -E '^(client certificate|curl)'
done
echo "no certificate:"
curl -sS --cacert ca.pem "https://localhost:$port/" 2>&1 | grep -E '^curl'
exit 0
