#!/usr/bin/env bash
# The Debian packages the daemon and its tests use, installed when missing:
#   libheif1                          HEIC and AVIF (opened at run time; without
#                                     it the daemon runs and refuses those two)
#   --test-tools adds:
#   libheif-examples, libjxl-tools    heif-enc and cjxl, which the format tests
#                                     use to write real HEIC, AVIF and JPEG XL
# Idempotent and quiet when everything is there. Needs root or passwordless
# sudo to install; without either it says what is missing and goes on.
set -euo pipefail
packages=(libheif1)
if [ "${1:-}" = "--test-tools" ]; then
  packages+=(libheif-examples libjxl-tools)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"; } >/dev/null 2>&1; then
  echo "warning: could not install ${missing[*]} (needs root or sudo): HEIC/AVIF are turned off without libheif1, and the format tests fail under CI without the encoders" >&2
fi
