#!/usr/bin/env bash
# Build a Debian bookworm + Python 3.11 base image without any image registry: mmdebstrap writes a
# root file system from Debian packages (a Debian mirror, or a local one with --mirror) and
# `docker import` turns it into an image that deploy/docker/Dockerfile.cpu accepts as BASE_IMAGE.
# It also holds redis-server, so the compose stack's Redis can run from it (REDIS_IMAGE).
#
#   deploy/docker/base/build-base.sh [--tag vl-rethinker-base:bookworm] [--mirror URL]
#                                    [--ca-cert FILE]... [--force]
#
# --ca-cert adds a CA certificate (PEM) to the image's trust store, for sites whose package mirror
# or HTTPS proxy uses a private CA (pip in the image build then trusts it through PIP_CERT).
# Needs: mmdebstrap, docker (a running engine), root or a user allowed to run both.
set -euo pipefail

TAG=vl-rethinker-base:bookworm
MIRROR=""
FORCE=0
CA_CERTS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) TAG="$2"; shift 2 ;;
    --mirror) MIRROR="$2"; shift 2 ;;
    --ca-cert) [ -r "$2" ] || { echo "build-base.sh: --ca-cert $2: not a readable file" >&2; exit 2; }
               CA_CERTS+=("$(realpath "$2")"); shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "build-base.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

command -v mmdebstrap >/dev/null || { echo "build-base.sh: mmdebstrap not found (apt-get install mmdebstrap)" >&2; exit 1; }
command -v docker >/dev/null || { echo "build-base.sh: docker not found" >&2; exit 1; }
if [ "$FORCE" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "build-base.sh: $TAG exists (--force to rebuild)" >&2
  exit 0
fi

# python3-dev and g++: DeepSpeed compiles its CPU communication op against Python.h on first use;
# python3-venv: the image installs into /opt/venv (Debian's system Python refuses pip installs);
# wget: KubeRay's Ray pod probes; redis-server/redis-tools: the stack's Redis.
PACKAGES=python3,python3-venv,python3-pip,python3-dev,g++,wget,ca-certificates,redis-server,redis-tools

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
HOOKS=()
if [ "${#CA_CERTS[@]}" -gt 0 ]; then
  mkdir -p "$WORK/ca"
  i=0
  for c in "${CA_CERTS[@]}"; do cp "$c" "$WORK/ca/site-ca-$i.crt"; i=$((i + 1)); done
  HOOKS+=(--customize-hook="cp $WORK/ca/*.crt \"\$1/usr/local/share/ca-certificates/\"")
  HOOKS+=(--customize-hook='chroot "$1" update-ca-certificates')
fi
mmdebstrap --variant=minbase --include="$PACKAGES" "${HOOKS[@]}" \
  --customize-hook='chroot "$1" sh -c "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin"' \
  bookworm "$WORK/rootfs.tar" ${MIRROR:+"$MIRROR"}
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --message "Debian bookworm minbase + python3 (mmdebstrap)" \
  "$WORK/rootfs.tar" "$TAG"
docker run --rm --network host "$TAG" python3 --version
echo "build-base.sh: built $TAG"
