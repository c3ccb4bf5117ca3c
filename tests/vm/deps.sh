#!/usr/bin/env bash
# Installs what the kernel matrix (make vm-test) needs on a Debian 12 host:
# qemu (TCG is enough), a static busybox for the guest's initramfs, kmod
# (depmod for the fetched kernels, modprobe inside the guest), the
# decompressors for kernel images and modules, and iproute2 for the tests.
# Kernels are NOT installed on the host: tests/vm/vmrun downloads them into
# its own cache with a private apt root.
set -euo pipefail

pkgs=(qemu-system-x86 busybox-static kmod xz-utils zstd iproute2 dpkg)

missing=()
for p in "${pkgs[@]}"; do
	if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != installed ]]; then
		missing+=("$p")
	fi
done
if ((${#missing[@]} == 0)); then
	exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
	echo "tests/vm/deps.sh: need root to install: ${missing[*]}" >&2
	exit 1
fi
echo "tests/vm/deps.sh: installing ${missing[*]}"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
