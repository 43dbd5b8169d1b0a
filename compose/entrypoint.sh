#!/bin/sh
# The compose cluster's one entrypoint (run under tini):
#   certs                 make the TLS material into /certs (once; kept across runs)
#   etcd NAME             run etcd member NAME (etcd1..etcd3) with client and peer TLS
#   conductor [ARGS...]   wait until etcd answers, then `conductor run ARGS...`
#   anything else         run it (e.g. `conductor show`, `sh`)
set -eu
certs=/certs

wait_for_file() {  # the certs service may still be writing them
  i=0
  while [ ! -s "$1" ]; do
    i=$((i + 1))
    [ "$i" -le 600 ] || { echo "entrypoint: $1 never appeared (did the certs service run?)" >&2; exit 1; }
    sleep 0.1
  done
}

case "${1:-}" in
  certs)
    exec /usr/local/bin/make-certs.sh "$certs"
    ;;
  etcd)
    name="$2"
    shift 2
    wait_for_file "$certs/$name.pem"
    cluster="etcd1=https://etcd1:2380,etcd2=https://etcd2:2380,etcd3=https://etcd3:2380"
    exec etcd --name "$name" --data-dir /var/lib/etcd/data \
      --listen-client-urls https://0.0.0.0:2379 --advertise-client-urls "https://$name:2379" \
      --listen-peer-urls https://0.0.0.0:2380 --initial-advertise-peer-urls "https://$name:2380" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token conductor-compose \
      --client-cert-auth --trusted-ca-file "$certs/ca.pem" \
      --cert-file "$certs/$name.pem" --key-file "$certs/$name-key.pem" \
      --peer-client-cert-auth --peer-trusted-ca-file "$certs/ca.pem" \
      --peer-cert-file "$certs/$name.pem" --peer-key-file "$certs/$name-key.pem" \
      --logger zap "$@"
    ;;
  conductor)
    shift
    wait_for_file "${CONDUCTOR_CERT:-$certs/conductor.pem}"
    # `conductor run` wants etcd to answer when it starts: wait for a quorum read (up to 2 minutes)
    endpoints=$(echo "${CONDUCTOR_ETCD:-https://etcd1:2379}" | sed 's/ /,/g')
    i=0
    until ETCDCTL_API=3 etcdctl --endpoints="$endpoints" --cacert="${CONDUCTOR_CACERT:-$certs/ca.pem}" \
        --cert="${CONDUCTOR_CERT:-$certs/conductor.pem}" --key="${CONDUCTOR_KEY:-$certs/conductor-key.pem}" \
        --dial-timeout=2s --command-timeout=3s get conductor-compose-probe >/dev/null 2>&1; do
      i=$((i + 1))
      [ "$i" -le 120 ] || { echo "entrypoint: etcd at $endpoints did not answer in 2 minutes" >&2; exit 1; }
      sleep 1
    done
    exec conductor run "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
