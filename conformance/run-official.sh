#!/usr/bin/env bash
# Runs the official OCI distribution-spec conformance suite against a Berth it starts (or any
# registry given with --url), with every workflow enabled.
#
#   conformance/run-official.sh --suite PATH [--url URL] [--out DIR]
#
# PATH is the suite's compiled test binary, built as the suite's own README describes from
# https://github.com/opencontainers/distribution-spec/tree/main/conformance (tag v1.1.1: the
# ginkgo suite; main: the redesigned suite). Either kind is recognised. Without --url the script
# builds and starts `berth serve` on 127.0.0.1 with a temporary data directory and deletes on.
# For the main-branch suite, OCI_VERSION=dev also exercises features that are still drafts.
# Exit status: the suite's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
suite= url= out=
while [ $# -gt 0 ]; do
  case $1 in
    --suite) suite=$2; shift 2 ;;
    --url) url=${2%/}; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 --suite PATH [--url URL] [--out DIR]" >&2; exit 2 ;;
  esac
done
[ -x "$suite" ] || { echo "run-official: --suite must name the compiled suite binary" >&2; exit 2; }
suite=$(cd "$(dirname "$suite")" && pwd)/$(basename "$suite")
work=$(mktemp -d)
out=${out:-$work/results}
mkdir -p "$out"
berth_pid=
cleanup() { [ -n "$berth_pid" ] && kill "$berth_pid" 2>/dev/null; rm -rf "$work/data"; }
trap cleanup EXIT

if [ -z "$url" ]; then
  (cd "$repo" && cargo build -q -p berth)
  cat > "$work/config.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:0
YML
  RUST_LOG=info "$repo/target/debug/berth" serve "$work/config.yml" 2> "$work/berth.log" &
  berth_pid=$!
  for _ in $(seq 1 100); do
    addr=$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$work/berth.log" | head -1)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "${addr:-}" ] || { cat "$work/berth.log" >&2; echo "run-official: berth did not start" >&2; exit 1; }
  url=http://$addr
fi

# Only the variables set here configure the suite.
for v in $(env | sed -n 's/^\(OCI_[A-Z0-9_]*\)=.*/\1/p'); do
  case $v in OCI_VERSION|OCI_DEBUG) ;; *) unset "$v" ;; esac
done
run=conformance/r$(date +%s)$$
if "$suite" -test.list '.*' 2>/dev/null | grep -q '^TestLegacy$'; then
  # The redesigned suite (main branch), configured by environment variables only.
  case $url in https://*) tls=enabled ;; *) tls=disabled ;; esac
  export OCI_CONFIGURATION= OCI_RESULTS_DIR=$out OCI_VERSION=${OCI_VERSION:-1.1} OCI_LOG=warn
  export OCI_REGISTRY=${url#*://} OCI_TLS=$tls OCI_REPO1=$run/one OCI_REPO2=$run/two
  for f in PULL PUSH BLOBS_DELETE BLOBS_ATOMIC BLOBS_MOUNT_ANONYMOUS MANIFESTS_DELETE \
           MANIFESTS_ATOMIC TAGS_DELETE TAGS_ATOMIC TAGS_LIST REFERRER; do
    export "OCI_API_$f=true"
  done
  for f in IMAGE INDEX INDEX_LIST ARTIFACT SUBJECT SUBJECT_MISSING ARTIFACT_LIST SUBJECT_LIST \
           DATA_FIELD NONDISTRIBUTABLE CUSTOM_FIELDS NO_LAYERS EMPTY_BLOB SHA512; do
    export "OCI_DATA_$f=true"
  done
  if [ "$OCI_VERSION" = dev ]; then
    for f in BLOBS_UPLOAD_CANCEL BLOBS_DIGEST_HEADER MANIFESTS_DIGEST_HEADER MANIFESTS_TAG_PARAM; do
      export "OCI_API_$f=true"
    done
  fi
else
  # The v1.1.x ginkgo suite.
  export OCI_ROOT_URL=$url OCI_NAMESPACE=$run/one OCI_CROSSMOUNT_NAMESPACE=$run/two
  export OCI_TEST_PULL=1 OCI_TEST_PUSH=1 OCI_TEST_CONTENT_DISCOVERY=1 OCI_TEST_CONTENT_MANAGEMENT=1
  export OCI_HIDE_SKIPPED_WORKFLOWS=0 OCI_DELETE_MANIFEST_BEFORE_BLOBS=1 OCI_REPORT_DIR=$out
  # Berth mounts only with `from`, so a mount without it must fall back to an upload (202).
  export OCI_AUTOMATIC_CROSSMOUNT=0
fi
echo "run-official: $(basename "$suite") against $url; reports in $out" >&2
set +e
(cd "$out" && "$suite" -test.v > "$out/output.txt" 2>&1)
rc=$?
set -e
tail -n 30 "$out/output.txt"
echo "run-official: suite exit status $rc (full output: $out/output.txt)" >&2
exit $rc
