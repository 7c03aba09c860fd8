#!/bin/sh
# Installs what prewarm needs on a Debian bookworm host, then builds it. Quick when
# everything is already there. Run as root (apt-get, debootstrap and chroot need it).
set -eu
cd "$(dirname "$0")/.."

PACKAGES="qemu-system-x86 qemu-utils zstd e2fsprogs debootstrap busybox-static cpio
  util-linux git ca-certificates xz-utils gcc libc6-dev"

missing=""
for p in $PACKAGES; do
  dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# The image build resolves the cloud kernel from apt's lists.
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then apt-get update -qq; fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi
echo "setup: building" >&2
npm run --silent build
