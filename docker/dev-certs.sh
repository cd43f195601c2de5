#!/usr/bin/env bash
# Make a throwaway CA, a server certificate and a client certificate for trying TLS and mTLS out:
#
#   docker/dev-certs.sh DIR [NAME...]
#
# writes into DIR (created if need be):
#   ca.crt, ca.key          the CA (keep ca.key to yourself; clients get ca.crt)
#   tls.crt, tls.key        the server's certificate and key, for localhost, 127.0.0.1 and each NAME
#                           (a DNS name or an IP address: the names clients dial)
#   client.crt, client.key  a client certificate signed by the same CA (for --tls-client-ca DIR/ca.crt)
#
# EC P-256 keys, valid for 30 days. For production use certificates from your own CA or cert-manager.
# Needs openssl (1.1.1 or later).
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
dir=$1
shift
mkdir -p "$dir"
cd "$dir"

san="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
    if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then san+=",IP:$name"; else san+=",DNS:$name"; fi
done

umask 077  # the keys are for the user alone; the certificates are made readable below
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=attnserve dev CA" -keyout ca.key -out ca.crt \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

issue() {  # issue NAME CN EXTENSIONS...
    local name=$1 cn=$2
    shift 2
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" \
        -keyout "$name.key" -out "$name.csr" 2>/dev/null
    printf '%s\n' "$@" > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
        -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
}
issue tls "attnserve" "subjectAltName=$san" "extendedKeyUsage=serverAuth"
issue client "attnserve dev client" "extendedKeyUsage=clientAuth"
rm -f ca.srl
chmod 644 ca.crt tls.crt client.crt
echo "wrote ca.crt, tls.crt, tls.key, client.crt and client.key to $dir (server names: $san)" >&2
