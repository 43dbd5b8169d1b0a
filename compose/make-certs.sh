#!/bin/sh
# Makes the TLS material of the compose cluster with openssl, into DIR (default ./certs), once:
# files that exist are kept, so running it again (as the `certs` service does at every `up`)
# changes nothing.
#
#   make-certs.sh [DIR]                 a CA, etcd1..etcd3 (server and peer), clients
#                                       `conductor` (the compose conductors) and `host` (you)
#   make-certs.sh DIR client NAME       one more client certificate, e.g. for a machine outside compose
#
# Every member's certificate names all members (etcd1, etcd2, etcd3), localhost and 127.0.0.1:
# a conductor given several endpoints checks every member's certificate against the first
# endpoint's name (one gRPC channel over all of them). Add names a machine outside compose reaches
# the members by with CONDUCTOR_ETCD_SANS, e.g. "DNS:build-host.lan,IP:192.168.1.20", before the
# first run (or delete etcd*.pem to make them again).
# A certificate appears (mv) only once complete, after its key: the services wait for it.
set -eu
dir="${1:-./certs}"
days=3650
mkdir -p "$dir"
cd "$dir"
umask 077

client() {  # client NAME: a certificate that etcd's --client-cert-auth accepts (CN = NAME)
  [ -f "$1.pem" ] && return 0
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days "$days" \
    -extfile "$1.ext" -out "$1.pem.tmp" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
  chmod 644 "$1.pem.tmp"
  mv "$1.pem.tmp" "$1.pem"  # certificates are public; keys stay 0600 (umask), read by their owner only
}

member() {  # member NAME: serves clients and peers, and is a client of its peers
  [ -f "$1.pem" ] && return 0
  sans="DNS:etcd1,DNS:etcd2,DNS:etcd3,DNS:localhost,IP:127.0.0.1${CONDUCTOR_ETCD_SANS:+,$CONDUCTOR_ETCD_SANS}"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$sans" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days "$days" \
    -extfile "$1.ext" -out "$1.pem.tmp" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
  chmod 644 "$1.pem.tmp"
  mv "$1.pem.tmp" "$1.pem"  # certificates are public; keys stay 0600 (umask), read by their owner only
}

if [ ! -f ca.pem ]; then
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/CN=conductor compose CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
  chmod 644 ca.pem
fi
if [ "${2:-}" = client ]; then
  [ -n "${3:-}" ] || { echo "make-certs: usage: make-certs.sh DIR client NAME" >&2; exit 2; }
  client "$3"
  echo "make-certs: $dir/$3.pem and $dir/$3-key.pem (CA: $dir/ca.pem)" >&2
  exit 0
fi
for name in etcd1 etcd2 etcd3; do member "$name"; done
client conductor
client host
