#!/usr/bin/env bash
# Installs the external programs the test suite drives, when they are missing. Debian 12, root.
#   skopeo, podman, buildah, umoci   real clients for end-to-end tests
#   docker-registry                  distribution 2.8, for layout and conformance cross-checks
#   containerd (ctr), docker.io      more real clients
#   redis-server                     the Redis blob-descriptor cache
#   strace                           proves Berth opens no connection it was not configured for
#   slapd, ldap-utils                an LDAP directory the issuer's LDAP tests start on their own
#                                    port (the package's system service is stopped)
#   curl                             HTTP/2 by ALPN, mutual TLS and TLS version checks
#   systemd (systemd-socket-activate) passes a listening socket the way a .socket unit does
#   boto3 (PyPI)                     an S3 client that is not Berth's, to look into buckets
#   garage (crates.io)               a production S3 server (the driver contract, S3 stalls);
#                                    built once (about 10 minutes on two cores), kept in
#                                    ~/.cargo/bin
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have skopeo || need+=(skopeo)
have podman || need+=(podman)
have buildah || need+=(buildah)
have umoci || need+=(umoci)
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
have ctr || need+=(containerd)
have dockerd || need+=(docker.io)
have redis-server || need+=(redis-server)
have strace || need+=(strace)
have curl || need+=(curl)
have systemd-socket-activate || need+=(systemd)
[ -x /usr/sbin/slapd ] || need+=(slapd)
have ldapadd || need+=(ldap-utils)

if [ ${#need[@]} -eq 0 ]; then
  echo "test dependencies: Debian packages present"
else
  echo "test dependencies: installing ${need[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: need root to apt-get install ${need[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
  echo "test dependencies: installed ${need[*]}"
  # slapd's package starts a system directory on port 389; the tests start their own.
  if [[ " ${need[*]} " == *" slapd "* ]]; then
    { systemctl disable --now slapd || service slapd stop || true; } >/dev/null 2>&1
  fi
fi

BOTO3_VERSION=1.43.11
if ! python3 -c "import boto3, sys; sys.exit(boto3.__version__ != '$BOTO3_VERSION')" 2>/dev/null; then
  echo "test dependencies: installing boto3==$BOTO3_VERSION (PyPI)"
  python3 -m pip install -q --disable-pip-version-check "boto3==$BOTO3_VERSION"
fi

GARAGE_VERSION=2.5.0
if ! { have garage && garage --version 2>/dev/null | grep -q "cargo:$GARAGE_VERSION "; }; then
  echo "test dependencies: building garage $GARAGE_VERSION from crates.io (once; about 10 minutes on two cores)"
  build="$(mktemp -d)"
  CARGO_TARGET_DIR="$build" cargo install garage --version "$GARAGE_VERSION" --locked --quiet
  rm -rf "$build"
  hash -r
fi
have garage || { echo "install-test-deps: garage is not on PATH after cargo install (is ~/.cargo/bin on PATH?)" >&2; exit 1; }
