#!/usr/bin/env bash
# Regenerates the inspect fixtures in this folder with openssl, so that berth's tests read
# certificates berth did NOT make. Private keys live in a temp folder and are thrown away:
# the fixtures are public certificates only.
#
#   bash certs/gen.sh        # from the repository root; needs openssl >= 1.1.1
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

# An `openssl ca` database, the only openssl 3.0 way to set a start date in the past.
mkdir -p newcerts
: > index.txt
echo 1000 > serial
cat > ca.cnf <<'CNF'
[ ca ]
default_ca = fixture_ca
[ fixture_ca ]
dir = .
database = ./index.txt
new_certs_dir = ./newcerts
serial = ./serial
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[ any ]
commonName = supplied
organizationName = optional
[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ v3_intermediate ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ v3_server ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:fixture.example, DNS:www.fixture.example, IP:192.0.2.10
authorityKeyIdentifier = keyid
[ v3_client ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
[ v3_codesign ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = codeSigning
authorityKeyIdentifier = keyid
CNF

sign() { # sign CSR EXT OUT [extra args]
  local csr=$1 ext=$2 out=$3; shift 3
  openssl ca -batch -config ca.cnf -notext -extensions "$ext" -in "$csr" -out "$out" "$@" 2>/dev/null
}

# Root: RSA 3072, 20 years, self-signed.
openssl req -x509 -new -newkey rsa:3072 -nodes -keyout ca.key -sha256 -days 7300 \
  -subj "/O=berth fixtures/CN=Fixture RSA Root" -config ca.cnf -extensions v3_ca -out rsa-ca.crt 2>/dev/null

# Leaf: RSA 2048 server certificate with DNS and IP SANs.
openssl req -new -newkey rsa:2048 -nodes -keyout leaf.key -subj "/CN=fixture.example" -out leaf.csr 2>/dev/null
sign leaf.csr v3_server rsa-leaf.crt -cert rsa-ca.crt -keyfile ca.key -days 3650
openssl x509 -in rsa-leaf.crt -outform DER -out rsa-leaf.der

# Expired: a client certificate valid for one day in 2020.
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout expired.key \
  -subj "/CN=expired-client" -out expired.csr 2>/dev/null
sign expired.csr v3_client expired.crt -cert rsa-ca.crt -keyfile ca.key \
  -startdate 20200101000000Z -enddate 20200102000000Z

# Chain: root -> intermediate (ECDSA P-384) -> leaf (ECDSA P-256). chain.pem is leaf then
# intermediate, the order TLS servers send.
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -keyout int.key \
  -subj "/O=berth fixtures/CN=Fixture Intermediate" -out int.csr 2>/dev/null
sign int.csr v3_intermediate intermediate.crt -cert rsa-ca.crt -keyfile ca.key -days 3650
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout chainleaf.key \
  -subj "/CN=fixture.example" -out chainleaf.csr 2>/dev/null
sign chainleaf.csr v3_server chain-leaf.crt -cert intermediate.crt -keyfile int.key -days 3650
cat chain-leaf.crt intermediate.crt > chain.pem

# Wrong EKU: a leaf for code signing only; no TLS client or server may accept it.
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout eku.key \
  -subj "/CN=codesign-only" -out eku.csr 2>/dev/null
sign eku.csr v3_codesign wrong-eku.crt -cert rsa-ca.crt -keyfile ca.key -days 3650

# Ed25519 self-signed, for "any algorithm".
openssl req -x509 -new -newkey ed25519 -nodes -keyout ed.key -days 3650 \
  -subj "/CN=ed25519-selfsigned" -out ed25519-selfsigned.crt 2>/dev/null

cp rsa-ca.crt rsa-leaf.crt rsa-leaf.der expired.crt intermediate.crt chain.pem wrong-eku.crt \
  ed25519-selfsigned.crt "$here/"
openssl verify -CAfile "$here/rsa-ca.crt" "$here/rsa-leaf.crt" "$here/wrong-eku.crt" >/dev/null
openssl verify -CAfile "$here/rsa-ca.crt" -untrusted "$here/intermediate.crt" "$here/chain.pem" >/dev/null
echo "fixtures written to $here"
