#!/bin/sh
# Debian packages the test rigs use: a real OpenSSH server, the real adb client,
# bubblewrap (sandboxes for the loopback phone and the emulated board), qemu-user
# and mmdebstrap (the arm64 board image), chromium (the report's browser check).
set -eu
PACKAGES="openssh-server adb bubblewrap qemu-user-static binfmt-support mmdebstrap arch-test chromium"
missing=""
for pkg in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages:$missing" >&2
    echo "install them with: sudo apt-get install -y$missing" >&2
    exit 1
fi
echo "installing Debian packages:$missing"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
