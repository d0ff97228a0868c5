#!/usr/bin/env bash
# docker for real, through berth, inside a private network and mount namespace (run by
# tests/e2e.rs as `unshare --net --mount --fork bash docker-netns.sh WORKDIR`). lo gets the
# non-loopback address 10.99.0.1, which never leaves the namespace (it has no other
# interface); a private /etc/hosts names it registry.berth.test; a private dockerd (own
# data-root, exec-root, socket, pidfile; vfs; no iptables or bridge) pushes and pulls
# through the certs.d folder `berth join` wrote. Everything started here is stopped by pid.
set -euo pipefail
W=$1
: "${BERTHD:?}" "${BERTH:?}"
NAME=registry.berth.test
REG=$NAME:5443

mount --make-rprivate /
ip link set lo up
ip addr add 10.99.0.1/32 dev lo
printf '127.0.0.1 localhost\n10.99.0.1 %s\n' "$NAME" > "$W/hosts"
mount --bind "$W/hosts" /etc/hosts
# All of /etc/docker is private: dockerd writes key.json there, and certs.d is what we test.
mkdir -p /etc/docker "$W/etc-docker/certs.d"
mount --bind "$W/etc-docker" /etc/docker

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$BERTHD" --root "$W/berth" --certs-d "$W/ca-host-certs.d" \
  --containers-certs-d "$W/ca-host-containers" --containerd-certs-d "$W/ca-host-containerd" \
  --registry-listen 10.99.0.1:5443 --registry-listen 127.0.0.1:5443 --registry-name "$NAME" \
  --listen tcp://10.99.0.1:2376 > "$W/berthd.log" 2>&1 &
pids+=($!)
S=(--socket "$W/berth/berthd.sock")
for _ in $(seq 600); do "$BERTH" "${S[@]}" system health >/dev/null 2>&1 && break; sleep 0.05; done
"$BERTH" "${S[@]}" system health

FP=$("$BERTH" "${S[@]}" system info --json | sed -n 's/.*"ca_fingerprint_sha256": *"\([^"]*\)".*/\1/p')
TOKEN=$("$BERTH" "${S[@]}" token create --name docker-host)
"$BERTH" join "$REG" --server tcp://10.99.0.1:2376 --token "$TOKEN" --ca-fingerprint "$FP" \
  --state-dir "$W/client-state" --certs-d /etc/docker/certs.d \
  --containers-certs-d "$W/client-containers" --containerd-certs-d "$W/client-containerd"
ls -l "/etc/docker/certs.d/$REG"

dockerd --data-root "$W/docker" --exec-root "$W/exec" --pidfile "$W/docker.pid" \
  -H "unix://$W/docker.sock" --storage-driver vfs --iptables=false --ip-masq=false \
  --bridge=none --userland-proxy=false > "$W/dockerd.log" 2>&1 &
pids+=($!)
D=(docker -H "unix://$W/docker.sock")
for _ in $(seq 600); do "${D[@]}" info >/dev/null 2>&1 && break; sleep 0.1; done
"${D[@]}" info >/dev/null

# An image made here: no network needed.
mkdir -p "$W/rootfs" && echo "made by the berth e2e test" > "$W/rootfs/hello.txt"
tar -C "$W/rootfs" -cf "$W/rootfs.tar" .
"${D[@]}" import "$W/rootfs.tar" "$REG/team/docker:1.0"
"${D[@]}" push "$REG/team/docker:1.0"
ID=$("${D[@]}" image inspect --format '{{.Id}}' "$REG/team/docker:1.0")
"${D[@]}" rmi "$REG/team/docker:1.0"
"${D[@]}" pull "$REG/team/docker:1.0"
ID2=$("${D[@]}" image inspect --format '{{.Id}}' "$REG/team/docker:1.0")
CONFIG=$("$BERTH" "${S[@]}" image inspect team/docker:1.0 --json | sed -n 's/.*"config_digest": *"\([^"]*\)".*/\1/p')
echo "pushed $ID pulled $ID2 config $CONFIG"
[ "$ID" = "$ID2" ] && [ "$ID" = "$CONFIG" ]
echo "docker push and pull through berth: ok"

# The same registry on loopback: docker speaks plain HTTP to it and never sends the
# certificate, whatever certs.d holds; berth said so at install, and the registry's answer
# says why.
"$BERTH" "${S[@]}" token create --name docker-host-lo > "$W/token-lo"
"$BERTH" join localhost:5443 --server tcp://10.99.0.1:2376 --token "$(cat "$W/token-lo")" \
  --ca-fingerprint "$FP" --state-dir "$W/client-state" --certs-d /etc/docker/certs.d \
  --containers-certs-d "$W/client-containers" --containerd-certs-d "$W/client-containerd" \
  2> "$W/join-lo.err"
grep -q "docker will not use these files for localhost:5443" "$W/join-lo.err"
"${D[@]}" tag "$REG/team/docker:1.0" localhost:5443/team/docker:1.0
if "${D[@]}" push localhost:5443/team/docker:1.0 > "$W/push-lo.out" 2>&1; then
  echo "docker pushed to a loopback mTLS registry: the loopback rule changed" >&2
  exit 1
fi
cat "$W/push-lo.out"
grep -q "HTTPS registry" "$W/push-lo.out"
grep -q "plain HTTP" "$W/berthd.log"
echo "docker and loopback, as berth says: ok"
