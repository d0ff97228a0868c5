#!/usr/bin/env bash
# Starts Debian's docker-registry (distribution 2.8) the way the registry bench compares it
# with berth: same loopback, same mutual TLS (a server certificate and the CA from berth),
# filesystem storage. It runs in the foreground until killed.
#
#   scripts/docker-registry-bench.sh ROOT ADDR CERT KEY CA
#     ROOT  storage root (rootdirectory)   ADDR  127.0.0.1:PORT
#     CERT/KEY  server certificate and key  CA  CA whose client certificates are required
set -euo pipefail
root=$1 addr=$2 cert=$3 key=$4 ca=$5
command -v docker-registry >/dev/null || { echo "docker-registry is not installed: apt-get install -y docker-registry" >&2; exit 1; }
conf="$(mktemp -d)/config.yml"
cat > "$conf" <<CONF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $root
  delete:
    enabled: true
http:
  addr: $addr
  tls:
    certificate: $cert
    key: $key
    clientcas:
      - $ca
CONF
exec docker-registry serve "$conf"
