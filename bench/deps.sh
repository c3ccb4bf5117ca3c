#!/usr/bin/env bash
# Installs what `make bench` needs (Debian/Ubuntu, as root): the load
# balancers compared with xdplb and the tools lbbench runs in the namespaces.
# Only missing packages are installed; their services are not started (a
# temporary policy-rc.d refuses it), so nothing listens in the root namespace.
set -euo pipefail

PKGS=(
	haproxy               # HAProxy, mode tcp (the guide's LB)
	nginx                 # Nginx ...
	libnginx-mod-stream   # ... and its stream proxy module (the guide's single-Nginx setup)
	nftables              # nft: the kernel NAT baseline
	ethtool               # tx offload / GRO settings on the veths
	iproute2              # ip
	util-linux            # nsenter, taskset
)

missing=()
for p in "${PKGS[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "bench/deps.sh: missing packages: ${missing[*]} (run as root)" >&2
	exit 1
fi
echo "bench/deps.sh: installing ${missing[*]}"
policy=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 755 "$policy"
	created=1
fi
cleanup() { if [ "$created" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
