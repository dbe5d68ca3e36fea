#!/usr/bin/env bash
# Mesa 25's lavapipe (software Vulkan), so WebGPU (Dawn) finds an adapter on a machine without a GPU.
# Debian bookworm's own Mesa 22.3 lacks Vulkan features Dawn requires; bookworm-backports has Mesa 25.
# Idempotent: does nothing when Mesa 25 or newer is installed. Needs root (or sudo).
set -euo pipefail
version=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
if [ -n "$version" ] && [ "${version%%.*}" -ge 25 ] 2>/dev/null; then exit 0; fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
# The same mirror as the machine's other Debian sources.
mirror=$(grep -hoE '^URIs: *https?://[^ ]+/debian$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | sed 's/^URIs: *//')
mirror=${mirror:-$(grep -hoE '^deb +https?://[^ ]+/debian ' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')}
mirror=${mirror:-http://deb.debian.org/debian}
if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" |
    $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports mesa-vulkan-drivers >/dev/null
